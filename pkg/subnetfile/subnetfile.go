// Package subnetfile reads and writes /run/flannel/subnet.env exactly as
// flanneld does, so the flannel CNI plugin (and the bridge + host-local
// plugins configured from it) work unchanged.
package subnetfile

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Env is the content of a subnet file.
type Env struct {
	Network netip.Prefix // FLANNEL_NETWORK
	Subnet  netip.Prefix // the node's pod subnet (the file holds its first address)
	MTU     int          // FLANNEL_MTU
	IPMasq  bool         // FLANNEL_IPMASQ
}

// Format renders e in flanneld's order and format: FLANNEL_SUBNET is the
// subnet's first host address with the prefix length, e.g. 10.244.1.1/24.
func Format(e Env) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "FLANNEL_NETWORK=%s\n", e.Network)
	fmt.Fprintf(&b, "FLANNEL_SUBNET=%s/%d\n", e.Subnet.Masked().Addr().Next(), e.Subnet.Bits())
	fmt.Fprintf(&b, "FLANNEL_MTU=%d\n", e.MTU)
	fmt.Fprintf(&b, "FLANNEL_IPMASQ=%v\n", e.IPMasq)
	return b.Bytes()
}

// Write replaces path atomically (temp file in the same directory, then
// rename, as flanneld), readable by the owner only.
func Write(path string, e Env) error {
	dir, name := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create directory of subnet file %s: %w", path, err)
	}
	tmp := filepath.Join(dir, "."+name)
	if err := os.WriteFile(tmp, Format(e), 0o600); err != nil {
		return fmt.Errorf("write subnet file %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("install subnet file %s: %w", path, err)
	}
	return nil
}

// Read parses a subnet file (flanneld's or ours). Unknown variables, such
// as the IPv6 ones, are ignored. A missing file wraps os.ErrNotExist.
func Read(path string) (Env, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Env{}, fmt.Errorf("read subnet file: %w", err)
	}
	var e Env
	sc := bufio.NewScanner(bytes.NewReader(data))
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		k, v, ok := strings.Cut(text, "=")
		if !ok {
			return Env{}, fmt.Errorf("subnet file %s line %d: %q is not NAME=value", path, line, text)
		}
		switch k {
		case "FLANNEL_NETWORK":
			e.Network, err = netip.ParsePrefix(v)
		case "FLANNEL_SUBNET":
			e.Subnet, err = netip.ParsePrefix(v)
			e.Subnet = e.Subnet.Masked()
		case "FLANNEL_MTU":
			e.MTU, err = strconv.Atoi(v)
		case "FLANNEL_IPMASQ":
			e.IPMasq, err = strconv.ParseBool(v)
		}
		if err != nil {
			return Env{}, fmt.Errorf("subnet file %s line %d: %s: %w", path, line, k, err)
		}
	}
	if !e.Subnet.IsValid() {
		return Env{}, fmt.Errorf("subnet file %s has no FLANNEL_SUBNET", path)
	}
	return e, nil
}
