package datapath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// DefaultPinRoot is where the agent pins its maps and links.
const DefaultPinRoot = "/sys/fs/bpf/hgw"

const bpffsMount = "/sys/fs/bpf"

// PreparePinRoot makes root an owner-only directory on a BPF filesystem,
// mounting bpffs at /sys/fs/bpf first where nothing is mounted there (a
// freshly booted machine without systemd's mount, or a process started by
// `ip netns exec`, which remounts /sys). The agent, the lab and the tests
// all prepare their pin roots through it; hgw-cni uses only what an agent
// pinned (Options.Existing).
func PreparePinRoot(root string) error {
	if err := ensureBPFFS(root); err != nil {
		return err
	}
	return ownerOnlyDir(root)
}

// ensureBPFFS makes sure root lies on a BPF filesystem, mounting bpffs at
// /sys/fs/bpf if root is below it and nothing is mounted there yet.
func ensureBPFFS(root string) error {
	if ok, err := onBPFFS(root); ok || err != nil {
		return err
	}
	if root != bpffsMount && !strings.HasPrefix(filepath.Clean(root), bpffsMount+"/") {
		return fmt.Errorf("pin root %s is not on a BPF filesystem (mount bpffs there or use a path under %s)", root, bpffsMount)
	}
	// Every bpffs mount is a file system of its own: two processes that
	// both found it missing and both mounted it would stack two, and the
	// pins made in the lower one would vanish from sight. The lock makes
	// the check and the mount one step for processes of ours.
	fd, err := unix.Open(bpffsMount, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", bpffsMount, err)
	}
	defer unix.Close(fd)
	if err := unix.Flock(fd, unix.LOCK_EX); err != nil {
		return fmt.Errorf("lock %s: %w", bpffsMount, err)
	}
	if ok, err := onBPFFS(root); ok || err != nil {
		return err // mounted by another process while we waited
	}
	if err := unix.Mount("bpf", bpffsMount, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs at %s: %w", bpffsMount, err)
	}
	return nil
}

// onBPFFS tells whether root, or the nearest existing directory above it,
// is on a BPF filesystem.
func onBPFFS(root string) (bool, error) {
	for dir := filepath.Clean(root); ; dir = filepath.Dir(dir) {
		var st unix.Statfs_t
		err := unix.Statfs(dir, &st)
		if err == nil {
			return st.Type == unix.BPF_FS_MAGIC, nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			return false, fmt.Errorf("statfs %s: %w", dir, err)
		}
		if dir == "/" || dir == "." {
			return false, nil
		}
	}
}
