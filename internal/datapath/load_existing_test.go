package datapath

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/cilium/ebpf"
)

// pinnedIDs is the ID of every map pinned under root.
func pinnedIDs(t *testing.T, root string) map[string]ebpf.MapID {
	t.Helper()
	ids := map[string]ebpf.MapID{}
	for _, name := range pinnedMaps {
		m, err := ebpf.LoadPinnedMap(filepath.Join(root, name), nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		info, err := m.Info()
		m.Close()
		if err != nil {
			t.Fatal(err)
		}
		ids[name], _ = info.ID()
	}
	return ids
}

// Existing (the CNI plugin's load) uses the agent's maps or nothing: it
// creates no pin root and no map, and replaces no map of another layout.
func TestLoadExistingNeverCreatesOrReplaces(t *testing.T) {
	root := layoutTestRoot(t)

	absent := filepath.Join(root, "none")
	if _, err := Load(Options{PinRoot: absent, Existing: true}); !errors.Is(err, ErrNotPinned) {
		t.Errorf("Existing over a pin root that does not exist: %v, want ErrNotPinned", err)
	}
	if _, err := os.Stat(absent); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Existing created the pin root %s (%v)", absent, err)
	}
	if _, err := Load(Options{PinRoot: root, Existing: true}); !errors.Is(err, ErrNotPinned) {
		t.Errorf("Existing over an empty pin root: %v, want ErrNotPinned", err)
	}
	if ids := pinnedIDs(t, root); len(ids) != 0 {
		t.Errorf("Existing pinned maps %v", ids)
	}

	// The agent's maps: used as they are.
	agent, err := Load(Options{PinRoot: root})
	if err != nil {
		t.Fatal(err)
	}
	agent.Close()
	before := pinnedIDs(t, root)
	dp, err := Load(Options{PinRoot: root, Existing: true})
	if err != nil {
		t.Fatalf("Existing over the agent's maps: %v", err)
	}
	dp.Close()
	if after := pinnedIDs(t, root); len(after) != len(pinnedMaps) || !mapsEqual(after, before) {
		t.Errorf("maps after an Existing load %v, want the agent's %v", after, before)
	}

	// An agent of a version without routes6 (before dual stack): not
	// "nothing pinned" but another version's maps, and nothing is added.
	if err := os.Remove(filepath.Join(root, "routes6")); err != nil {
		t.Fatal(err)
	}
	before = pinnedIDs(t, root)
	if _, err := Load(Options{PinRoot: root, Existing: true}); !errors.Is(err, ErrLayoutMismatch) || !strings.Contains(err.Error(), "routes6") {
		t.Errorf("Existing over maps without routes6: %v, want ErrLayoutMismatch naming routes6", err)
	}
	if after := pinnedIDs(t, root); !mapsEqual(after, before) {
		t.Errorf("maps after a refused Existing load %v, want them untouched %v", after, before)
	}
	agent, err = Load(Options{PinRoot: root})
	if err != nil {
		t.Fatal(err)
	}
	agent.Close()

	// One map of another version's layout: an error, and the map stays.
	if err := os.Remove(filepath.Join(root, "routes")); err != nil {
		t.Fatal(err)
	}
	pinOld(t, root, &ebpf.MapSpec{Name: "routes", Type: ebpf.LPMTrie, KeySize: 8, ValueSize: 16,
		MaxEntries: 16, Flags: 1 /* BPF_F_NO_PREALLOC */})
	before = pinnedIDs(t, root)
	if _, err := Load(Options{PinRoot: root, Existing: true}); !errors.Is(err, ErrLayoutMismatch) {
		t.Errorf("Existing over a map of another layout: %v, want ErrLayoutMismatch", err)
	}
	if after := pinnedIDs(t, root); !mapsEqual(after, before) {
		t.Errorf("maps after a refused Existing load %v, want them untouched %v", after, before)
	}
}

func mapsEqual(a, b map[string]ebpf.MapID) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// Loads over one pin root at the same time (two first CNI ADDs, an ADD and
// the agent's start) take turns: every one succeeds, over one set of maps.
func TestConcurrentLoadsShareOneSetOfMaps(t *testing.T) {
	root := layoutTestRoot(t)
	const n = 8
	dps := make([]*Datapath, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { dps[i], errs[i] = Load(Options{PinRoot: root}) })
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Errorf("load %d: %v", i, errs[i])
			continue
		}
		dps[i].Close()
	}
	if ids := pinnedIDs(t, root); len(ids) != len(pinnedMaps) {
		t.Errorf("pinned maps %v, want all of %v", ids, pinnedMaps)
	}
}
