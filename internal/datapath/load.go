package datapath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Options says where the datapath lives and how it attaches.
type Options struct {
	// PinRoot is the bpffs directory holding the maps and links; one per
	// agent. Default DefaultPinRoot.
	PinRoot string
	// Mode picks the attach mechanism; default ModeAuto (tcx where the
	// kernel has it).
	Mode Mode
	// Existing loads over the maps an agent pinned and nothing else: it
	// creates neither the pin root nor a map, and never replaces a map of
	// another layout (ErrNotPinned, ErrLayoutMismatch). For the CNI plugin:
	// the maps are the agent's.
	Existing bool
	// Without names features to treat as missing although the kernel has
	// them, so that the programs take their fallback paths (tests do).
	Without Features
}

// ErrNotPinned means no agent has pinned the maps under the pin root.
var ErrNotPinned = errors.New("no datapath pinned")

func (o Options) withDefaults() Options {
	if o.PinRoot == "" {
		o.PinRoot = DefaultPinRoot
	}
	if o.Mode == "" {
		o.Mode = ModeAuto
	}
	return o
}

// Datapath is the loaded programs plus the pinned maps they share.
type Datapath struct {
	*Maps
	opts  Options // Mode resolved: tcx or tc
	feats Features
	progs hgwPrograms
	// Migrated lists the pinned maps an older version left with another
	// layout, which Load replaced by new, empty ones.
	Migrated []string
}

// Load loads the programs, creating the pinned maps under opts.PinRoot or
// reusing those an earlier agent left there, so counters and routes survive
// a restart. The programs' load-time switches come from ProbeFeatures (less
// opts.Without), and the attach mode is settled here: the programs behave
// differently under tcx (see Features). Nothing is attached yet.
//
//go:generate go tool bpf2go -cc clang-19 -target bpfel -type hgw_family -type hgw_program -type hgw_reason -type config_flag -type endpoint_flag -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu -I../../headers" hgw ../../bpf/hgw.c
func Load(opts Options) (*Datapath, error) {
	opts = opts.withDefaults()
	if _, err := parseMode(string(opts.Mode)); err != nil {
		return nil, err
	}
	if !opts.Existing {
		if err := PreparePinRoot(opts.PinRoot); err != nil {
			return nil, fmt.Errorf("pin root: %w", err)
		}
	}
	unlock, err := LockPinRoot(opts.PinRoot)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if opts.Existing {
		var missing []string
		for _, name := range pinnedMaps {
			if _, err := os.Stat(filepath.Join(opts.PinRoot, name)); errors.Is(err, os.ErrNotExist) {
				missing = append(missing, name)
			}
		}
		switch {
		case len(missing) == len(pinnedMaps):
			return nil, fmt.Errorf("no maps under %s: %w", opts.PinRoot, ErrNotPinned)
		case len(missing) > 0:
			// An agent of a version with fewer maps pinned the others.
			return nil, fmt.Errorf("maps %v missing under %s, written by another version: %w", missing, opts.PinRoot, ErrLayoutMismatch)
		}
	}
	feats, err := ProbeFeatures()
	if err != nil {
		return nil, fmt.Errorf("probe kernel features: %w", err)
	}
	feats = feats.without(opts.Without)
	if opts.Mode == ModeAuto {
		opts.Mode = ModeTC
		if feats.TCX {
			opts.Mode = ModeTCX
		}
	}
	spec, err := loadHgw()
	if err != nil {
		return nil, fmt.Errorf("load embedded BPF spec: %w", err)
	}
	if err := setSwitches(spec, feats, opts.Mode); err != nil {
		return nil, err
	}
	migrated, err := checkPinnedLayouts(opts.PinRoot, spec, !opts.Existing)
	if err != nil {
		return nil, err
	}
	var objs hgwObjects
	err = spec.LoadAndAssign(&objs, &ebpf.CollectionOptions{
		Maps: ebpf.MapOptions{PinPath: opts.PinRoot},
	})
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		return nil, fmt.Errorf("maps pinned under %s have another layout than this version expects (run `hgw-ebpf cleanup --bpffs-root %s` to remove them): %w",
			opts.PinRoot, opts.PinRoot, err)
	}
	if err != nil {
		return nil, fmt.Errorf("load BPF objects (pins under %s): %w", opts.PinRoot, err)
	}
	maps, err := newMaps(opts.PinRoot, objs.hgwMaps)
	if err != nil {
		objs.Close()
		return nil, err
	}
	return &Datapath{Maps: maps, opts: opts, feats: feats, progs: objs.hgwPrograms, Migrated: migrated}, nil
}

// setSwitches sets the programs' load-time switches (volatile const in
// bpf/hgw.c).
func setSwitches(spec *ebpf.CollectionSpec, f Features, mode Mode) error {
	for name, on := range map[string]bool{
		hgwVarHaveCtLookup: f.ConntrackLookup,
		hgwVarHaveKernCtx:  f.KernCtx,
		hgwVarTcxAttach:    mode == ModeTCX,
	} {
		v, ok := spec.Variables[name]
		if !ok {
			return fmt.Errorf("BPF object has no switch %s", name)
		}
		var b uint8
		if on {
			b = 1
		}
		if err := v.Set(b); err != nil {
			return fmt.Errorf("set %s: %w", name, err)
		}
	}
	return nil
}

// Features says what the loaded programs use: what the kernel offers, less
// Options.Without.
func (d *Datapath) Features() Features { return d.feats }

// Mode is the attach mode the programs were loaded for (tcx or tc).
func (d *Datapath) Mode() Mode { return d.opts.Mode }

// Close releases this process's handles. Pinned maps and links stay, so
// traffic keeps its fast path while the agent is away.
func (d *Datapath) Close() error {
	return errors.Join(d.progs.Close(), d.Maps.Close())
}

// Program returns the loaded program for p, for attaching or test runs.
func (d *Datapath) Program(p Program) (*ebpf.Program, error) {
	switch p {
	case FromPods:
		return d.progs.FromPods, nil
	case FromUnderlay:
		return d.progs.FromUnderlay, nil
	}
	return nil, fmt.Errorf("unknown program %q", p)
}

// LockPinRoot takes an exclusive lock on the pin root directory until
// unlock, so that processes working on the same pins (the agent, CNI ADDs
// running at once) never race on creating, pinning or replacing a map or
// a link: Load holds it, and so do callers around Attach of a device
// another process may attach too (a pod's veth). Not reentrant: a process
// holding it must not call Load. The kernel drops the lock with a process
// that dies holding it.
func LockPinRoot(root string) (unlock func(), err error) {
	return lockPinRoot(root, unix.LOCK_EX, 0)
}

// lockPinRootWithin is LockPinRoot that gives up after wait: for a
// command that must not hang behind a stuck holder.
func lockPinRootWithin(root string, wait time.Duration) (unlock func(), err error) {
	return lockPinRoot(root, unix.LOCK_EX|unix.LOCK_NB, wait)
}

func lockPinRoot(root string, how int, wait time.Duration) (unlock func(), err error) {
	f, err := os.Open(root)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("pin root %s: %w", root, ErrNotPinned)
	}
	if err != nil {
		return nil, fmt.Errorf("open pin root %s to lock it: %w", root, err)
	}
	deadline := time.Now().Add(wait)
	for {
		err = unix.Flock(int(f.Fd()), how)
		if !errors.Is(err, unix.EWOULDBLOCK) || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if errors.Is(err, unix.EWOULDBLOCK) {
		f.Close()
		return nil, fmt.Errorf("lock pin root %s: another process (an agent loading, a CNI ADD) held it for %v", root, wait)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock pin root %s: %w", root, err)
	}
	return func() { f.Close() }, nil
}

// ownerOnlyDir creates dir (0700) or narrows an existing one to 0700: the
// maps steer every pod's traffic, so only their owner may open them
// (bpffs pins themselves are created 0600).
func ownerOnlyDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("make %s owner-only: %w", dir, err)
	}
	return nil
}
