package testutil

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/hgw-ebpf/hgw-ebpf/internal/namedns"
)

func currentNetNS(t *testing.T) netns.NsHandle {
	t.Helper()
	h, err := netns.Get()
	if err != nil {
		t.Fatalf("get current netns: %v", err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

func TestNetNSCreatesNamedAndRemoves(t *testing.T) {
	RequireRoot(t)
	runtime.LockOSThread() // so "current netns" means one thread throughout
	defer runtime.UnlockOSThread()
	orig := currentNetNS(t)

	var name string
	t.Run("create", func(t *testing.T) {
		runtime.LockOSThread() // the thread NetNS worked on is the one checked below
		defer runtime.UnlockOSThread()
		var h netns.NsHandle
		name, h = NetNS(t, "tu")
		if ok, _ := filepath.Match("hgwt-tu-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]", name); !ok {
			t.Errorf("name %q, want hgwt-tu-<6 hex>", name)
		}
		byName, err := netns.GetFromName(name)
		if err != nil {
			t.Fatalf("open %s by name: %v", name, err)
		}
		defer byName.Close()
		if !byName.Equal(h) {
			t.Errorf("handle and named netns %s differ", name)
		}
		if h.Equal(orig) {
			t.Errorf("netns %s is the test's own namespace", name)
		}
		// NewNamed moved this thread; it must be back home.
		if now := currentNetNS(t); !now.Equal(orig) {
			t.Errorf("thread left in another netns after NetNS")
		}
	})
	if _, err := os.Stat(filepath.Join(namedns.Dir, name)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("netns %s still exists after its test ended (stat: %v)", name, err)
	}
}

func TestDoEntersAndRestores(t *testing.T) {
	RequireRoot(t)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig := currentNetNS(t)
	_, h := NetNS(t, "tu")

	ran := false
	Do(t, h, func() {
		ran = true
		if inside := currentNetNS(t); !inside.Equal(h) {
			t.Errorf("fn does not run inside the namespace")
		}
	})
	if !ran {
		t.Fatal("fn did not run")
	}
	if now := currentNetNS(t); !now.Equal(orig) {
		t.Fatal("thread not restored after Do")
	}

	// A panicking fn still brings the thread home.
	func() {
		defer func() { _ = recover() }()
		Do(t, h, func() { panic("boom") })
	}()
	if now := currentNetNS(t); !now.Equal(orig) {
		t.Fatal("thread not restored after fn panicked")
	}
}

func TestNetNSRemovesStaleLeftovers(t *testing.T) {
	RequireRoot(t)
	prefix := "tu" + RandHex(t, 2)
	if err := os.MkdirAll(namedns.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// Plain files stand in for a crashed run's leftovers (nsfs times
	// cannot be set); removeStale handles both.
	stale := filepath.Join(namedns.Dir, "hgwt-"+prefix+"-aaaaaa")
	fresh := filepath.Join(namedns.Dir, "hgwt-"+prefix+"-bbbbbb")
	for _, p := range []string{stale, fresh} {
		if err := os.WriteFile(p, nil, 0o444); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Remove(p) })
	}
	old := time.Now().Add(-2 * staleAfter)
	if err := os.Chtimes(stale, old, old); err != nil {
		t.Fatal(err)
	}

	NetNS(t, prefix)

	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale %s not removed (stat: %v)", stale, err)
	}
	if _, err := os.Stat(fresh); err != nil {
		t.Errorf("recent %s was removed, a concurrent run may own it: %v", fresh, err)
	}
}

func TestNewNetNSNamesAndRemoves(t *testing.T) {
	RequireRoot(t)
	var h netns.NsHandle
	var name string
	t.Run("create", func(t *testing.T) {
		h = NewNetNS(t, "hgwt-tu-new")
		matches, _ := filepath.Glob(filepath.Join(namedns.Dir, "hgwt-tu-new-*"))
		for _, m := range matches {
			byName, err := netns.GetFromPath(m)
			if err != nil {
				continue
			}
			if byName.Equal(h) {
				name = m
			}
			byName.Close()
		}
		if name == "" {
			t.Fatalf("no hgwt-tu-new-* in %s is the returned namespace (found %v)", namedns.Dir, matches)
		}
	})
	if _, err := os.Stat(name); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s still exists after its test ended (stat: %v)", name, err)
	}
}

func TestCleanupStaleRefusesForeignNames(t *testing.T) {
	for _, prefix := range []string{"", "cni-", "hgw-", "hgwt"} {
		if err := CleanupStale(prefix); err == nil {
			t.Errorf("CleanupStale(%q) = nil, want a refusal: only %s names are ours", prefix, NSPrefix)
		}
	}
}
