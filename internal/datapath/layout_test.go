package datapath

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"

	"github.com/hgw-ebpf/hgw-ebpf/internal/testutil"
)

func layoutTestRoot(t *testing.T) string {
	t.Helper()
	testutil.RequireRoot(t)
	root := "/sys/fs/bpf/hgwt-layout-" + testutil.RandHex(t, 4)
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

// loadMigrating loads over the pins in root and checks that it replaced
// exactly one, the map name, whose layout has changed.
func loadMigrating(t *testing.T, root, name string) {
	t.Helper()
	dp, err := Load(Options{PinRoot: root})
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	if len(dp.Migrated) != 1 || !strings.HasPrefix(dp.Migrated[0], name) {
		t.Fatalf("migrated %v, want %s", dp.Migrated, name)
	}
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
	loadMigrating(t, root, "routes")
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
// The old layout is this version's node_config with two fields of the same
// type swapped.
func TestLoadMigratesAReorderedStructOfTheSameSize(t *testing.T) {
	root := layoutTestRoot(t)
	spec, err := loadHgw()
	if err != nil {
		t.Fatal(err)
	}
	var cur *btf.Struct
	if err := spec.Types.TypeByName("node_config", &cur); err != nil {
		t.Fatal(err)
	}
	old := btf.Copy(cur).(*btf.Struct)
	swap := map[string]int{}
	for i, m := range old.Members {
		swap[m.Name] = i
	}
	i, j := swap["pod_subnet"], swap["gateway"]
	old.Members[i].Name, old.Members[j].Name = old.Members[j].Name, old.Members[i].Name
	u32 := &btf.Int{Name: "__u32", Size: 4}
	pinOld(t, root, &ebpf.MapSpec{Name: "config", Type: ebpf.Array, KeySize: 4, ValueSize: cur.Size, MaxEntries: 1,
		Key: u32, Value: old})
	_, err = OpenPinned(root)
	if err == nil || !strings.Contains(err.Error(), "node_config changed") {
		t.Fatalf("OpenPinned = %v, want a layout error naming node_config", err)
	}
	loadMigrating(t, root, "config")
	if _, err := OpenPinned(root); err != nil {
		t.Fatalf("after migration: %v", err)
	}
}
