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

// ensureBPFFS makes sure root lies on a BPF filesystem. A node whose
// /sys/fs/bpf is not mounted (or a process started by `ip netns exec`, which
// remounts /sys) gets bpffs mounted at /sys/fs/bpf, as systemd would do.
func ensureBPFFS(root string) error {
	for dir := filepath.Clean(root); ; dir = filepath.Dir(dir) {
		var st unix.Statfs_t
		err := unix.Statfs(dir, &st)
		if err == nil && st.Type == unix.BPF_FS_MAGIC {
			return nil
		}
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("statfs %s: %w", dir, err)
		}
		if dir == "/" || dir == "." {
			break
		}
	}
	if root != bpffsMount && !strings.HasPrefix(filepath.Clean(root), bpffsMount+"/") {
		return fmt.Errorf("pin root %s is not on a BPF filesystem (mount bpffs there or use a path under %s)", root, bpffsMount)
	}
	if err := os.MkdirAll(bpffsMount, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", bpffsMount, err)
	}
	if err := unix.Mount("bpf", bpffsMount, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs at %s: %w", bpffsMount, err)
	}
	return nil
}
