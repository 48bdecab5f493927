package datapath_test

import (
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
)

// Everything under the pin root is owner-only, whatever the umask and even
// if the root existed with a wider mode: the maps steer every pod's traffic.
func TestPinsAreOwnerOnly(t *testing.T) {
	ns := newTestNetns(t)
	ns.addLink(t, bridge("cni0", 1500))
	root := newPinRoot(t, ns)
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	dp, err := datapath.Load(datapath.Options{PinRoot: root, Mode: datapath.ModeTCX})
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	ns.do(t, func() {
		if _, err := dp.Attach("cni0", datapath.FromPods); err != nil {
			t.Fatal(err)
		}
	})
	seen := 0
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		st, err := os.Stat(path)
		if err != nil {
			return err
		}
		want := fs.FileMode(0o600)
		if d.IsDir() {
			want = 0o700
		}
		if st.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", path, st.Mode().Perm(), want)
		}
		seen++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// root, links/, the link pin and at least the four maps
	if seen < 7 {
		t.Errorf("walked %d entries under %s, want the maps, links/ and the link pin", seen, root)
	}
}
