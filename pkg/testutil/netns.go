package testutil

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

// netnsDir is where `ip netns` and netns.NewNamed keep named namespaces.
const netnsDir = "/var/run/netns"

// staleAfter is how old a leftover namespace of ours must be before it is
// taken for a crashed run's: far beyond go test's default 10 min timeout,
// so a concurrent run of the same test is never disturbed.
const staleAfter = 30 * time.Minute

// NetNS creates the named network namespace hgwt-<prefix>-<6 hex>, removed in t.Cleanup.
func NetNS(t testing.TB, prefix string) (string, netns.NsHandle) {
	t.Helper()
	if prefix == "" || strings.ContainsAny(prefix, "/ ") {
		t.Fatalf("netns prefix %q: want a non-empty word", prefix)
	}
	removeStale(t, "hgwt-"+prefix+"-")
	name := "hgwt-" + prefix + "-" + RandHex(t, 3)

	// NewNamed unshares the calling thread into the new namespace: keep
	// the goroutine on that thread until it is back home.
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("get current netns: %v", err)
	}
	defer orig.Close()
	h, err := netns.NewNamed(name)
	if rerr := netns.Set(orig); rerr != nil {
		// Stay locked: the runtime discards the thread when this
		// goroutine ends, so no code runs in the wrong namespace.
		t.Fatalf("restore netns after creating %s: %v", name, rerr)
	}
	runtime.UnlockOSThread()
	if err != nil {
		t.Fatalf("create netns %s: %v", name, err)
	}
	t.Cleanup(func() {
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("delete netns %s: %v", name, err)
		}
		if err := h.Close(); err != nil {
			t.Errorf("close netns %s: %v", name, err)
		}
	})
	return name, h
}

// InNetNS runs fn on a locked OS thread inside h and restores the thread's namespace after.
func InNetNS(t testing.TB, h netns.NsHandle, fn func()) {
	t.Helper()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("get current netns: %v", err)
	}
	defer orig.Close()
	if err := netns.Set(h); err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("enter netns %s: %v", h, err)
	}
	// Deferred so that a t.Fatal inside fn also brings the thread home.
	defer func() {
		if err := netns.Set(orig); err != nil {
			// Stay locked: the thread dies with this goroutine.
			t.Fatalf("restore netns: %v", err)
		}
		runtime.UnlockOSThread()
	}()
	fn()
}

// RandHex returns n random bytes as hex, for unique test resource names.
func RandHex(t testing.TB, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatalf("random name: %v", err)
	}
	return hex.EncodeToString(b)
}

// removeStale deletes namespaces named with prefix that a crashed earlier
// run left behind (older than staleAfter).
func removeStale(t testing.TB, prefix string) {
	t.Helper()
	entries, err := os.ReadDir(netnsDir)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			t.Logf("list %s: %v", netnsDir, err)
		}
		return
	}
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), prefix) {
			continue
		}
		info, err := e.Info()
		if err != nil || time.Since(info.ModTime()) < staleAfter {
			continue
		}
		if err := netns.DeleteNamed(e.Name()); err != nil {
			// Not mounted (a crash between create and mount): just the file.
			err = os.Remove(filepath.Join(netnsDir, e.Name()))
			if err != nil {
				t.Logf("remove stale netns %s: %v", e.Name(), err)
				continue
			}
		}
		t.Logf("removed stale netns %s from an earlier run", e.Name())
	}
}
