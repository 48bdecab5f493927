package peers_test

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/hgw-ebpf/hgw-ebpf/internal/peers"
	"github.com/hgw-ebpf/hgw-ebpf/internal/registry"
)

// scaleLeases is n /25 leases of 10.0.0.0/8 with distinct on-link peers,
// in key order as the registry hands them over.
func scaleLeases(n int) []registry.Lease {
	var out []registry.Lease
	for i := 0; len(out) < n; i++ {
		s := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 9), byte(i >> 1), byte(i&1) << 7}), 25)
		k := i + 256 // from 198.18.1.0: clear of the test node's 198.18.0.0/24
		out = append(out, registry.Lease{Key: key(s.String()), Subnet: s, PublicIP: netip.AddrFrom4([4]byte{198, 18 + byte(k>>16), byte(k >> 8), byte(k)})})
	}
	slices.SortFunc(out, func(a, b registry.Lease) int { return strings.Compare(a.Key, b.Key) })
	return out
}

// scaleInput is a node of a 65,536-peer cluster.
func scaleInput() peers.Input {
	return peers.Input{Own: netip.MustParsePrefix("10.255.255.0/24"), Network: netip.MustParsePrefix("10.0.0.0/8"),
		OnLink: []netip.Prefix{netip.MustParsePrefix("198.18.0.0/15")}, PublicIP: netip.MustParseAddr("198.19.255.254"),
		Leases: scaleLeases(65536)}
}

// Desired runs on every lease change, over every lease.
func BenchmarkDesired65536(b *testing.B) {
	in := scaleInput()
	for b.Loop() {
		peers.Desired(in)
	}
}

// Update compares every desired set with the previous one.
func BenchmarkUpdate65536(b *testing.B) {
	peerList, _ := peers.Desired(scaleInput())
	// New opens a netlink socket; nothing is written with it here.
	r, err := peers.New(peers.Options{Link: &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: "lo", Index: 1}}})
	if err != nil {
		b.Fatal(err)
	}
	r.Update(peerList)
	for b.Loop() {
		r.Update(peerList)
	}
}

// A resync (the full comparison) over 65,536 peers all in place: two
// dumps, a map listing and the comparison, no write.
func BenchmarkResync65536(b *testing.B) {
	e := newEnv(b)
	addr, err := netlink.ParseAddr("198.19.255.254/15")
	if err != nil {
		b.Fatal(err)
	}
	if err := e.h.AddrAdd(e.link, addr); err != nil {
		b.Fatal(err)
	}
	peerList, _ := peers.Desired(scaleInput())
	r, _ := e.reconciler(b, e.rm, peers.Options{})
	if res, err := r.Apply(b.Context(), peerList); err != nil || res.KernelRoutes != len(peerList) {
		b.Fatalf("first Apply: %d routes, %v", res.KernelRoutes, err)
	}
	for b.Loop() {
		if res, err := r.Apply(b.Context(), peerList); err != nil || res.Added+res.Changed+res.Removed != 0 {
			b.Fatalf("resync: %+v, %v", res, err)
		}
	}
}
