package testutil

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/hgw-ebpf/hgw-ebpf/internal/namedns"
)

// staleAfter is how old a leftover namespace of ours must be before it is
// taken for a crashed run's: far beyond go test's default 10 min timeout,
// so a concurrent run of the same test is never disturbed.
const staleAfter = 30 * time.Minute

// NSPrefix starts the name of every namespace a test creates, so that a
// crashed run's leftovers are recognised and nothing else is touched.
const NSPrefix = "hgwt-"

// NewNetNS creates the named network namespace <name>-<6 hex> and deletes
// it in t.Cleanup. name must start with NSPrefix ("hgwt-"). Leftovers of a
// crashed run with the same name are removed first (see CleanupStale). The
// calling goroutine's thread is left in its own namespace.
func NewNetNS(t testing.TB, name string) netns.NsHandle {
	t.Helper()
	if !strings.HasPrefix(name, NSPrefix) {
		t.Fatalf("netns name %q: want the prefix %q", name, NSPrefix)
	}
	_, h := create(t, name)
	return h
}

// NetNS is NewNetNS for the name hgwt-<word>, also returning the full name
// (for `ip netns exec` and the like).
func NetNS(t testing.TB, word string) (string, netns.NsHandle) {
	t.Helper()
	return create(t, NSPrefix+word)
}

func create(t testing.TB, prefix string) (string, netns.NsHandle) {
	t.Helper()
	if len(prefix) <= len(NSPrefix) || strings.ContainsAny(prefix, "/ ") {
		t.Fatalf("netns name %q: want %s<word>", prefix, NSPrefix)
	}
	if err := CleanupStale(prefix + "-"); err != nil {
		t.Logf("stale namespaces: %v", err)
	}
	name := prefix + "-" + RandHex(t, 3)

	if err := namedns.Create(name); err != nil {
		t.Fatal(err)
	}
	h, err := netns.GetFromName(name)
	if err != nil {
		namedns.Delete(name)
		t.Fatalf("open netns %s: %v", name, err)
	}
	t.Cleanup(func() {
		if err := namedns.Delete(name); err != nil {
			t.Error(err)
		}
		if err := h.Close(); err != nil {
			t.Errorf("close netns %s: %v", name, err)
		}
	})
	return name, h
}

// Do runs fn on a locked OS thread inside h and brings the thread back to
// its namespace after, also when fn calls t.Fatal or panics. Goroutines fn
// starts do not inherit the namespace: use netlink.NewHandleAt(h) for
// netlink work instead.
func Do(t testing.TB, h netns.NsHandle, fn func()) {
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

// DoIn is Do inside the named namespace.
func DoIn(t testing.TB, name string, fn func()) {
	t.Helper()
	h, err := netns.GetFromName(name)
	if err != nil {
		t.Fatalf("open netns %s: %v", name, err)
	}
	defer h.Close()
	Do(t, h, fn)
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

// CleanupStale deletes the named namespaces whose name starts with prefix
// and that are older than 30 minutes: leftovers of a crashed run. Younger
// ones may belong to a test running right now in another package, and are
// kept. prefix must start with NSPrefix, so nothing but test namespaces is
// ever removed.
func CleanupStale(prefix string) error {
	if !strings.HasPrefix(prefix, NSPrefix) {
		return fmt.Errorf("cleanup stale netns %q: only names starting with %q", prefix, NSPrefix)
	}
	entries, err := os.ReadDir(namedns.Dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("list %s: %w", namedns.Dir, err)
	}
	var errs []error
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
			if err := os.Remove(filepath.Join(namedns.Dir, e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, fmt.Errorf("remove stale netns %s: %w", e.Name(), err))
			}
		}
	}
	return errors.Join(errs...)
}
