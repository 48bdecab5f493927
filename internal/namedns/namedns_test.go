package namedns_test

import (
	"errors"
	"fmt"
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/hgw-ebpf/hgw-ebpf/internal/namedns"
	"github.com/hgw-ebpf/hgw-ebpf/internal/testutil"
)

func netnsInode(t *testing.T, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// Do runs its function in the named namespace, returns its error, and
// leaves the caller's threads where they were.
func TestDo(t *testing.T) {
	testutil.RequireRoot(t)
	name, _ := testutil.NetNS(t, "do")
	want, home := netnsInode(t, namedns.Path(name)), netnsInode(t, "/proc/self/ns/net")
	sentinel := errors.New("sentinel")
	var got uint64
	err := namedns.Do(name, func() error {
		got = netnsInode(t, fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid()))
		return sentinel
	})
	if !errors.Is(err, sentinel) {
		t.Errorf("Do returned %v, want fn's error", err)
	}
	if got != want {
		t.Errorf("fn ran in netns %d, want %s's %d", got, name, want)
	}
	if now := netnsInode(t, "/proc/self/ns/net"); now != home {
		t.Errorf("caller's netns changed: %d, was %d", now, home)
	}
	if err := namedns.Do("hgwt-missing-ns", func() error { return nil }); err == nil {
		t.Error("Do in a missing namespace: no error")
	}
}
