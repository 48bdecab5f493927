package datapath_test

// The typed map API the agent, the reconciler and `hgw-ebpf status` use:
// what goes in comes back out, through the pins too, and bad input is
// refused without touching the map.

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
)

func TestConfigRoundTrip(t *testing.T) {
	e := newRunEnv(t, false)
	if _, ok, err := e.dp.Config(); err != nil || ok {
		t.Fatalf("Config before any SetConfig = ok %v, err %v; want not ok, no error", ok, err)
	}
	want := datapath.NodeConfig{PodSubnet: podSubnet, Gateway: gateway,
		BridgeIfindex: uint32(e.cni0), UnderlayIfindex: uint32(e.eth0), Conntrack: true}
	if err := e.dp.SetConfig(want); err != nil {
		t.Fatal(err)
	}
	if got, ok, err := e.dp.Config(); err != nil || !ok || got != want {
		t.Errorf("Config = %+v, ok %v, err %v; want %+v", got, ok, err, want)
	}

	// A subnet given with host bits is stored as its network.
	unmasked := want
	unmasked.PodSubnet = netip.MustParsePrefix("10.244.1.77/24")
	unmasked.Conntrack = false
	if err := e.dp.SetConfig(unmasked); err != nil {
		t.Fatal(err)
	}
	maps, err := datapath.OpenPinned(e.dp.PinRoot())
	if err != nil {
		t.Fatal(err)
	}
	defer maps.Close()
	wantPinned := unmasked
	wantPinned.PodSubnet = podSubnet
	if got, ok, err := maps.Config(); err != nil || !ok || got != wantPinned {
		t.Errorf("Config through the pin = %+v, ok %v, err %v; want %+v", got, ok, err, wantPinned)
	}

	for name, bad := range map[string]datapath.NodeConfig{
		"IPv6 subnet":        {PodSubnet: netip.MustParsePrefix("fd00:10:244:1::/64"), Gateway: netip.MustParseAddr("fd00:10:244:1::1")},
		"gateway outside":    {PodSubnet: podSubnet, Gateway: netip.MustParseAddr("10.244.2.1")},
		"no gateway":         {PodSubnet: podSubnet},
		"no subnet":          {Gateway: gateway},
		"IPv6 gateway in v4": {PodSubnet: podSubnet, Gateway: netip.MustParseAddr("::ffff:10.244.1.1")},
	} {
		if err := e.dp.SetConfig(bad); err == nil {
			t.Errorf("SetConfig with %s (%+v) accepted", name, bad)
		}
	}
	if got, _, _ := e.dp.Config(); got != wantPinned {
		t.Errorf("a refused SetConfig changed the config to %+v", got)
	}
}

func TestRouteMapPutListDelete(t *testing.T) {
	e := newRunEnv(t, false)
	rm := e.dp.Routes()
	a := datapath.Route{Subnet: netip.MustParsePrefix("10.244.2.0/24"), NextHop: peerNode, Ifindex: uint32(e.eth0)}
	b := datapath.Route{Subnet: netip.MustParsePrefix("10.244.3.0/24"), NextHop: netip.MustParseAddr("198.18.0.13"), Ifindex: uint32(e.eth0)}
	for _, r := range []datapath.Route{a, b} {
		if err := rm.Put(r); err != nil {
			t.Fatal(err)
		}
	}
	// Overwrite in place, with host bits in the subnet: still one entry.
	a2 := datapath.Route{Subnet: netip.MustParsePrefix("10.244.2.9/24"), NextHop: netip.MustParseAddr("198.18.0.22"), Ifindex: uint32(e.eth1)}
	if err := rm.Put(a2); err != nil {
		t.Fatal(err)
	}
	a2.Subnet = a2.Subnet.Masked()
	expectRoutes(t, "after overwrite", rm, a2, b)

	// Match: exact, longest prefix, and a miss.
	if got, ok, err := rm.Match(b.Subnet); err != nil || !ok || got != b {
		t.Errorf("Match(%s) = %+v, %v, %v; want %+v", b.Subnet, got, ok, err, b)
	}
	wide := datapath.Route{Subnet: netip.MustParsePrefix("10.0.0.0/8"), NextHop: netip.MustParseAddr("198.18.0.99"), Ifindex: uint32(e.eth0)}
	if err := rm.Put(wide); err != nil {
		t.Fatal(err)
	}
	if got, ok, _ := rm.Match(netip.MustParsePrefix("10.9.0.0/24")); !ok || got.NextHop != wide.NextHop {
		t.Errorf("Match under 10.0.0.0/8 = %+v, %v; want the covering entry's next hop %s", got, ok, wide.NextHop)
	}
	if _, ok, _ := rm.Match(netip.MustParsePrefix("192.168.0.0/24")); ok {
		t.Error("Match found an entry for 192.168.0.0/24")
	}
	if err := rm.Delete(wide.Subnet); err != nil {
		t.Fatal(err)
	}

	if err := rm.Delete(b.Subnet); err != nil {
		t.Fatal(err)
	}
	if err := rm.Delete(b.Subnet); err != nil {
		t.Errorf("deleting a missing route: %v", err)
	}
	expectRoutes(t, "after delete", rm, a2)

	for name, bad := range map[string]datapath.Route{
		"IPv6 subnet":   {Subnet: netip.MustParsePrefix("fd00:10:244:2::/64"), NextHop: peerNode, Ifindex: 1},
		"IPv6 next hop": {Subnet: b.Subnet, NextHop: netip.MustParseAddr("fd00::12"), Ifindex: 1},
		"no subnet":     {NextHop: peerNode, Ifindex: 1},
		"no next hop":   {Subnet: b.Subnet, Ifindex: 1},
	} {
		err := rm.Put(bad)
		if err == nil {
			t.Errorf("Put with %s (%+v) accepted", name, bad)
		}
	}
	expectRoutes(t, "after refused puts", rm, a2)

	// The pinned map is the same map.
	maps, err := datapath.OpenPinned(e.dp.PinRoot())
	if err != nil {
		t.Fatal(err)
	}
	defer maps.Close()
	expectRoutes(t, "through the pin", maps.Routes(), a2)
}

func expectRoutes(t *testing.T, when string, rm *datapath.RouteMap, want ...datapath.Route) {
	t.Helper()
	got, err := rm.List()
	if err != nil {
		t.Fatalf("%s: list routes: %v", when, err)
	}
	byKey := func(a, b datapath.Route) int { return strings.Compare(a.Subnet.String(), b.Subnet.String()) }
	slices.SortFunc(got, byKey)
	want = slices.Clone(want)
	slices.SortFunc(want, byKey)
	if !slices.Equal(got, want) {
		t.Errorf("%s: routes = %+v, want %+v", when, got, want)
	}
}

// Stats names every (family, program, reason) cell after the C enums,
// starts at zero, and the names match what the tests of this package count
// on.
func TestStatsCells(t *testing.T) {
	e := newRunEnv(t, false)
	cs, err := e.dp.Stats()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[counterKey]bool{}
	for _, c := range cs {
		k := counterKey{c.Family, c.Program, c.Reason}
		if seen[k] {
			t.Errorf("counter %v listed twice", k)
		}
		seen[k] = true
		if c.Packets != 0 || c.Bytes != 0 {
			t.Errorf("fresh counter %v = %d packets, %d bytes; want 0", k, c.Packets, c.Bytes)
		}
	}
	for _, f := range []string{"ipv4", "ipv6", "other"} {
		for _, p := range []datapath.Program{datapath.FromPods, datapath.FromUnderlay} {
			for _, r := range []string{"redirect", "not_ip", "malformed", "ip_options", "fragment", "not_for_host",
				"local_dest", "no_route", "ttl_expired", "too_big", "no_config", "ct_nat", "ct_tracked", "icmp_error",
				"no_ipv6_config", "ext_header"} {
				if !seen[counterKey{f, string(p), r}] {
					t.Errorf("no counter %s/%s/%s", f, p, r)
				}
			}
		}
	}
	if len(cs)%6 != 0 {
		t.Errorf("%d counters: not the same reasons for each family and program", len(cs))
	}
}

// List reads more entries than one batch holds, each once.
func TestRouteMapListsThousands(t *testing.T) {
	e := newRunEnv(t, false)
	rm := e.dp.Routes()
	const n = 2500
	for i := range n {
		r := datapath.Route{Subnet: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24),
			NextHop: netip.AddrFrom4([4]byte{198, 19, byte(i >> 8), byte(i)}), Ifindex: uint32(e.eth0)}
		if err := rm.Put(r); err != nil {
			t.Fatal(err)
		}
	}
	got, err := rm.List()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[netip.Prefix]bool{}
	for _, r := range got {
		a := r.Subnet.Addr().As4()
		if seen[r.Subnet] || r.NextHop != netip.AddrFrom4([4]byte{198, 19, a[1], a[2]}) {
			t.Fatalf("entry %+v listed twice or with the wrong next hop", r)
		}
		seen[r.Subnet] = true
	}
	if len(seen) != n {
		t.Errorf("listed %d entries, want %d", len(seen), n)
	}
}
