package datapath

import (
	"crypto/rand"
	"encoding/hex"
	"net/netip"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"

	"github.com/hgw-ebpf/hgw-ebpf/pkg/testutil"
)

func layoutTestRoot(t *testing.T) string {
	t.Helper()
	testutil.RequireRoot(t)
	b := make([]byte, 4)
	rand.Read(b)
	root := "/sys/fs/bpf/hgwt-layout-" + hex.EncodeToString(b)
	if err := PreparePinRoot(root); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := Cleanup(root); err != nil {
			t.Error(err)
		}
	})
	return root
}

// pinOld pins a map as an older version of the agent might have left it.
func pinOld(t *testing.T, root string, spec *ebpf.MapSpec) {
	t.Helper()
	spec.Pinning = ebpf.PinByName
	m, err := ebpf.NewMapWithOptions(spec, ebpf.MapOptions{PinPath: root})
	if err != nil {
		t.Fatal(err)
	}
	m.Close()
}

func TestLoadReusesMapsOfTheSameLayout(t *testing.T) {
	root := layoutTestRoot(t)
	dp, err := Load(Options{PinRoot: root})
	if err != nil {
		t.Fatal(err)
	}
	want := Route{Subnet: netip.MustParsePrefix("10.244.7.0/24"), NextHop: netip.MustParseAddr("198.18.0.17"), Ifindex: 3}
	if err := dp.Routes().Put(want); err != nil {
		t.Fatal(err)
	}
	dp.Close()
	dp, err = Load(Options{PinRoot: root})
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	if len(dp.Migrated) != 0 {
		t.Fatalf("migrated %v, want nothing: same layout", dp.Migrated)
	}
	got, err := dp.Routes().List()
	if err != nil || len(got) != 1 || got[0] != want {
		t.Fatalf("routes after reload = %v, %v; want [%v]", got, err, want)
	}
}

func TestLoadMigratesAMapOfAnotherSize(t *testing.T) {
	root := layoutTestRoot(t)
	pinOld(t, root, &ebpf.MapSpec{Name: "routes", Type: ebpf.LPMTrie, KeySize: 8, ValueSize: 16,
		MaxEntries: 16, Flags: 1 /* BPF_F_NO_PREALLOC */})
	if _, err := OpenPinned(root); err == nil {
		t.Fatal("OpenPinned read a routes map of another layout")
	}
	dp, err := Load(Options{PinRoot: root})
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	if len(dp.Migrated) != 1 || !strings.HasPrefix(dp.Migrated[0], "routes") {
		t.Fatalf("migrated %v, want routes", dp.Migrated)
	}
	m, err := ebpf.LoadPinnedMap(root+"/routes", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if m.ValueSize() != 12 {
		t.Errorf("pinned routes value size %d after migration, want 12", m.ValueSize())
	}
}

// Same sizes, fields in another order: only the BTF comparison sees it.
func TestLoadMigratesAReorderedStructOfTheSameSize(t *testing.T) {
	root := layoutTestRoot(t)
	u8 := &btf.Int{Name: "__u8", Size: 1}
	u32 := &btf.Int{Name: "__u32", Size: 4}
	addr := &btf.Array{Type: u8, Index: u32, Nelems: 4}
	old := &btf.Struct{Name: "node_config", Size: 24, Members: []btf.Member{
		{Name: "pod_prefixlen", Type: u32, Offset: 0},
		{Name: "pod_subnet", Type: addr, Offset: 32},
		{Name: "gateway", Type: addr, Offset: 64},
		{Name: "bridge_ifindex", Type: u32, Offset: 96},
		{Name: "underlay_ifindex", Type: u32, Offset: 128},
		{Name: "flags", Type: u32, Offset: 160},
	}}
	pinOld(t, root, &ebpf.MapSpec{Name: "config", Type: ebpf.Array, KeySize: 4, ValueSize: 24, MaxEntries: 1,
		Key: u32, Value: old})
	_, err := OpenPinned(root)
	if err == nil || !strings.Contains(err.Error(), "node_config changed") {
		t.Fatalf("OpenPinned = %v, want a layout error naming node_config", err)
	}
	dp, err := Load(Options{PinRoot: root})
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	if len(dp.Migrated) != 1 || !strings.HasPrefix(dp.Migrated[0], "config") {
		t.Fatalf("migrated %v, want config", dp.Migrated)
	}
	if _, err := OpenPinned(root); err != nil {
		t.Fatalf("after migration: %v", err)
	}
}
