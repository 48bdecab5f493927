package lab

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/hgw-ebpf/hgw-ebpf/internal/namedns"
)

// DownOptions says which lab to remove.
type DownOptions struct {
	Prefix    string
	StateRoot string
	BinDir    string // where hgw-ebpf is, for `hgw-ebpf cleanup`; the state's if empty
	Log       *slog.Logger
	self      bool // called by the lab process itself: do not signal it
}

// Down removes every trace of the lab with this prefix, whether its state
// file is current, stale or missing (after a crash): it stops the lab
// process, every process inside the lab's namespaces, the datapath state of
// every node, the namespaces, the pins and the state directory. Finding
// nothing is not an error.
func Down(ctx context.Context, o DownOptions) error {
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	if err := ValidatePrefix(o.Prefix); err != nil {
		return err
	}
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var errs []error
	st, err := LoadState(o.StateRoot, o.Prefix)
	if err != nil && !errors.Is(err, ErrNoLab) {
		log.Warn("ignoring unreadable lab state", "err", err)
	}
	if st != nil {
		if o.BinDir == "" {
			o.BinDir = st.BinDir
		}
		// A lab still serving in another process tears itself down on
		// SIGTERM; give it the chance, then sweep up after it.
		if !o.self && st.PID != os.Getpid() && st.Alive() {
			log.Info("stopping lab process", "pid", st.PID)
			if err := terminate(st.PID, st.PIDStart, 30*time.Second); err != nil {
				errs = append(errs, err)
			}
		}
		for _, n := range st.Nodes {
			if err := terminate(n.AgentPID, n.AgentStart, 5*time.Second); err != nil {
				errs = append(errs, fmt.Errorf("stop agent of %s: %w", n.Name, err))
			}
		}
	}

	names, err := namedns.List(o.Prefix + "-")
	if err != nil {
		return err
	}
	errs = append(errs, killInNetns(names, log))
	errs = append(errs, cleanupPins(ctx, o, names, log))

	// Pods first, then nodes, then the underlay: each veth pair goes with
	// whichever end's namespace goes first.
	sort.Slice(names, func(i, j int) bool { return len(names[i]) > len(names[j]) })
	for _, name := range names {
		if _, _, ok := parseName(o.Prefix, name); !ok {
			continue // e.g. "<prefix>-other": not ours
		}
		log.Info("deleting netns", "netns", name)
		errs = append(errs, namedns.Delete(name))
	}
	dir := StateDir(o.StateRoot, o.Prefix)
	if err := os.RemoveAll(dir); err != nil {
		errs = append(errs, fmt.Errorf("remove state dir: %w", err))
	}
	return errors.Join(errs...)
}

// killInNetns ends every process living in one of the lab's namespaces:
// agents whose PID the state file lost, iperf3 servers, `hgw-lab exec`
// shells. Only lab code starts processes there.
func killInNetns(names []string, log *slog.Logger) error {
	inodes := map[uint64]string{}
	for _, name := range names {
		if ino, err := netnsInode(namedns.Path(name)); err == nil {
			inodes[ino] = name
		}
	}
	if len(inodes) == 0 {
		return nil
	}
	pids, err := procsInNetns(inodes)
	if err != nil {
		return err
	}
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
	)
	for _, pid := range pids {
		start, err := procStart(pid)
		if err != nil {
			continue
		}
		log.Info("stopping process left in lab netns", "pid", pid)
		wg.Go(func() {
			if err := terminate(pid, start, 3*time.Second); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// cleanupPins removes the datapath state of every node: `hgw-ebpf cleanup`
// inside the node's namespace when both still exist (it detaches tc filters
// by device), then the whole /sys/fs/bpf/<prefix> tree, which also drops
// pinned links whose device is gone.
func cleanupPins(ctx context.Context, o DownOptions, names []string, log *slog.Logger) error {
	root := pinRoot(o.Prefix)
	entries, err := os.ReadDir(root)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("list %s: %w", root, err)
	}
	agentBin := filepath.Join(o.BinDir, "hgw-ebpf")
	haveBin := o.BinDir != "" && checkExecutable(agentBin) == nil
	nsExists := map[string]bool{}
	for _, n := range names {
		nsExists[n] = true
	}
	var errs []error
	for _, e := range entries {
		dir := filepath.Join(root, e.Name())
		if !e.IsDir() || !haveBin || !nsExists[e.Name()] {
			continue
		}
		log.Info("removing datapath state", "node", e.Name(), "pin_root", dir)
		if err := runCleanup(ctx, agentBin, e.Name(), dir); err != nil {
			log.Warn("hgw-ebpf cleanup failed; removing the pins anyway", "node", e.Name(), "err", err)
		}
	}
	if err := os.RemoveAll(root); err != nil && !errors.Is(err, syscall.ENOENT) {
		errs = append(errs, fmt.Errorf("remove %s: %w", root, err))
	}
	return errors.Join(errs...)
}

// DownStale removes every lab recorded under stateRoot whose process is
// gone (a test binary or `hgw-lab up` that crashed or was killed), with
// Down. Labs whose process runs are left alone, so processes sharing the
// root never remove each other's labs; a state directory without a state
// file counts as a lab still being built for a minute.
func DownStale(ctx context.Context, stateRoot string, log *slog.Logger) error {
	entries, err := os.ReadDir(stateRoot)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("list %s: %w", stateRoot, err)
	}
	var errs []error
	for _, e := range entries {
		prefix := e.Name()
		if !e.IsDir() || ValidatePrefix(prefix) != nil {
			continue
		}
		st, err := LoadState(stateRoot, prefix)
		if err != nil {
			info, ierr := e.Info()
			if ierr != nil || time.Since(info.ModTime()) < time.Minute {
				continue
			}
		} else if st.Alive() {
			continue
		}
		errs = append(errs, Down(ctx, DownOptions{Prefix: prefix, StateRoot: stateRoot, Log: log}))
	}
	return errors.Join(errs...)
}
