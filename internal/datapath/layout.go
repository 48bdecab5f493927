package datapath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
)

// Pinned maps outlive the agent that created them, so a new version may
// find maps of an older layout. The kernel's compatibility check (type,
// sizes, flags) misses a layout change of the same size (fields reordered
// or renamed), so the key and value structs are also compared with the BTF
// the pinned map was created with. A changed map is never read with the new
// layout: it is unpinned and created afresh. The attached programs keep
// using the old map until the new ones replace them, and the agent refills
// the new maps (routes from etcd, config from its flags); counters restart.

// ErrLayoutMismatch means a pinned map has another layout than this
// version's, and the caller may not replace it.
var ErrLayoutMismatch = errors.New("pinned map layout differs")

// layoutDiff says how a pinned map differs from this version's spec, or ""
// if it does not.
func layoutDiff(m *ebpf.Map, ms *ebpf.MapSpec) string {
	if err := ms.Compatible(m); err != nil {
		return err.Error()
	}
	info, err := m.Info()
	if err != nil {
		return fmt.Sprintf("map info: %v", err)
	}
	id, ok := info.BTFID()
	if !ok {
		return "pinned map has no BTF"
	}
	h, err := btf.NewHandleFromID(id)
	if err != nil {
		return fmt.Sprintf("BTF of pinned map: %v", err)
	}
	defer h.Close()
	old, err := h.Spec(nil)
	if err != nil {
		return fmt.Sprintf("BTF of pinned map: %v", err)
	}
	for _, t := range []btf.Type{ms.Key, ms.Value} {
		s, ok := t.(*btf.Struct)
		if !ok {
			continue
		}
		var prev *btf.Struct
		if err := old.TypeByName(s.Name, &prev); err != nil {
			return fmt.Sprintf("struct %s missing from the pinned map's BTF", s.Name)
		}
		if a, b := describe(prev), describe(s); a != b {
			return fmt.Sprintf("struct %s changed from {%s} to {%s}", s.Name, a, b)
		}
	}
	return ""
}

// describe renders a struct's layout: member names, offsets and sizes.
func describe(s *btf.Struct) string {
	parts := make([]string, 0, len(s.Members))
	for _, m := range s.Members {
		size, _ := btf.Sizeof(m.Type)
		parts = append(parts, fmt.Sprintf("%s@%d:%d", m.Name, m.Offset.Bytes(), size))
	}
	return fmt.Sprintf("size %d: %s", s.Size, strings.Join(parts, " "))
}

// checkPinnedLayouts compares every pinned map under root with spec. With
// unpin set, changed maps are unpinned (to be created afresh) and their
// names returned; without it, a changed map is an error.
func checkPinnedLayouts(root string, spec *ebpf.CollectionSpec, unpin bool) ([]string, error) {
	var migrated []string
	for _, name := range pinnedMaps {
		path := filepath.Join(root, name)
		m, err := ebpf.LoadPinnedMap(path, nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return migrated, fmt.Errorf("open pinned map %s: %w", path, err)
		}
		diff := layoutDiff(m, spec.Maps[name])
		m.Close()
		if diff == "" {
			continue
		}
		if !unpin {
			return nil, fmt.Errorf("pinned map %s was written by another version (%s): start this version's agent to migrate it: %w", path, diff, ErrLayoutMismatch)
		}
		if err := os.Remove(path); err != nil {
			return migrated, fmt.Errorf("unpin outdated map %s: %w", path, err)
		}
		migrated = append(migrated, fmt.Sprintf("%s (%s)", name, diff))
	}
	return migrated, nil
}
