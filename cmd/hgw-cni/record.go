package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
)

// record is what ADD wrote for one attachment (container ID + ifname): the
// host veth it attached from_pods to and the endpoints it put in the map.
// The kernel objects are named by address and veth, which say nothing of
// the attachment: DEL without a previous result and GC find them here.
type record struct {
	ContainerID string              `json:"containerID"`
	IfName      string              `json:"ifname"`
	BPFFSRoot   string              `json:"bpffsRoot"`
	HostVeth    string              `json:"hostVeth"`
	Endpoints   []datapath.Endpoint `json:"endpoints"`
}

// records are one network's records: <dataDir>/<network>/<containerID>@<ifname>
// ('@' is not allowed in a container ID).
type records struct{ dir string }

func recordsOf(conf *netConf) records { return records{dir: filepath.Join(conf.DataDir, conf.Name)} }

func (rs records) path(containerID, ifName string) string {
	return filepath.Join(rs.dir, containerID+"@"+ifName)
}

// write stores r whole or not at all (a temporary file renamed).
func (rs records) write(r record) error {
	if err := os.MkdirAll(rs.dir, 0o700); err != nil {
		return fmt.Errorf("create record dir: %w", err)
	}
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	path := rs.path(r.ContainerID, r.IfName)
	tmp, err := os.CreateTemp(rs.dir, ".tmp-*")
	if err != nil {
		return fmt.Errorf("record %s: %w", path, err)
	}
	_, werr := tmp.Write(b)
	if err := errors.Join(werr, tmp.Close()); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("record %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("record %s: %w", path, err)
	}
	return nil
}

// read returns the attachment's record, nil if there is none.
func (rs records) read(containerID, ifName string) (*record, error) {
	return readRecord(rs.path(containerID, ifName))
}

func readRecord(path string) (*record, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read record %s: %w", path, err)
	}
	var r record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("record %s is not one: %w", path, err)
	}
	return &r, nil
}

// list returns every record of the network, and what it could not read.
// Temporary files of an ADD under way are not records yet.
func (rs records) list() ([]record, []error) {
	entries, err := os.ReadDir(rs.dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, []error{fmt.Errorf("list records in %s: %w", rs.dir, err)}
	}
	var out []record
	var errs []error
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".tmp-") {
			continue
		}
		r, err := readRecord(filepath.Join(rs.dir, e.Name()))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if r != nil {
			out = append(out, *r)
		}
	}
	return out, errs
}

// remove deletes the attachment's record; an absent one is fine.
func (rs records) remove(containerID, ifName string) error {
	if err := os.Remove(rs.path(containerID, ifName)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove record: %w", err)
	}
	return nil
}
