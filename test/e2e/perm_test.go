package e2e

import (
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/hgw-ebpf/hgw-ebpf/internal/lab"
)

// ownerOnly checks that everything under a node's pin root is owner-only
// (directories 0700, pins 0600) and returns how many entries it saw.
func ownerOnly(t *testing.T, n lab.Node) int {
	t.Helper()
	seen := 0
	err := filepath.WalkDir(n.PinRoot, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		want := fs.FileMode(0o600)
		if d.IsDir() {
			want = 0o700
		}
		expectPerm(t, n.Name, path, want)
		seen++
		return nil
	})
	if err != nil {
		t.Fatalf("%s: walk %s: %v", n.Name, n.PinRoot, err)
	}
	return seen
}

// expectPerm fails t unless path, in node, has exactly the permissions
// want.
func expectPerm(t *testing.T, node, path string, want fs.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatalf("%s: %v", node, err)
	}
	if fi.Mode().Perm() != want {
		t.Errorf("%s: %s has mode %v, want %v", node, path, fi.Mode().Perm(), want)
	}
}

// What a running node's agent (and the CNI plugin that shares its pins)
// leaves on disk is owner-only: the pinned maps and links, which steer
// every pod's traffic, and the subnet file (the flannel CNI plugin reads it
// as root).
func TestNodeStateIsOwnerOnly(t *testing.T) {
	l := startLab(t, 2, 1, lab.DatapathEBPF)
	for _, n := range l.State().Nodes {
		// the root, links/, three link pins (cni0, eth0, the pod's veth)
		// and the maps
		if seen := ownerOnly(t, n); seen < 8 {
			t.Errorf("%s: %d entries under %s, want the maps, links/ and three link pins", n.Name, seen, n.PinRoot)
		}
		expectPerm(t, n.Name, n.SubnetFile, 0o600)
	}
}
