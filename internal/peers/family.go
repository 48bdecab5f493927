package peers

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"net/netip"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/hgw-ebpf/hgw-ebpf/internal/registry"
)

// Family is the address family one Reconciler routes. A dual-stack node
// runs one Reconciler per family: the same mechanism, differing only in
// what this file says.
type Family uint8

// The families, as the kernel numbers them (rtm_family, nh_family).
const (
	IPv4 Family = unix.AF_INET
	IPv6 Family = unix.AF_INET6
)

// pick is v4 or v6, whichever is f's.
func pick[T any](f Family, v4, v6 T) T {
	if f == IPv6 {
		return v6
	}
	return v4
}

// String is the family's label in logs and metrics: ipv4 or ipv6.
func (f Family) String() string { return pick(f, "ipv4", "ipv6") }

// Name is the family as people write it: IPv4 or IPv6.
func (f Family) Name() string { return pick(f, "IPv4", "IPv6") }

// publicIPField is the lease value's field naming the family's next hop.
func (f Family) publicIPField() string { return pick(f, "PublicIP", "PublicIPv6") }

func (f Family) bits() int { return pick(f, 32, 128) }

// Has tells an address of the family. An IPv4-mapped IPv6 address is
// neither: the kernel would route it as IPv6, the map could not hold it.
func (f Family) Has(a netip.Addr) bool {
	if f == IPv6 {
		return a.Is6() && !a.Is4In6()
	}
	return a.Is4()
}

func familyOf(a netip.Addr) Family {
	if a.Is6() && !a.Is4In6() {
		return IPv6
	}
	return IPv4
}

// metric is the metric of the routes Apply installs. An IPv6 route always
// has one: the kernel gives a route added without it 1024, which is where
// flanneld's routes (and `ip -6 route add`'s) sit, so ours sit there too
// and a replace takes flanneld's over in place. IPv4 routes have none.
func (f Family) metric() uint32 { return pick[uint32](f, 0, 1024) }

// routeGroup is the netlink multicast group of the family's route events.
func (f Family) routeGroup() uint {
	return pick[uint](f, unix.RTNLGRP_IPV4_ROUTE, unix.RTNLGRP_IPV6_ROUTE)
}

// lease is the family's half of a lease: its subnet and the next hop
// that routes it (zero if the lease has none in this family: an IPv4-only
// lease has no IPv6 half).
func (f Family) lease(l *registry.Lease) (netip.Prefix, netip.Addr) {
	if f == IPv6 {
		return l.IPv6Subnet, l.PublicIPv6
	}
	return l.Subnet, l.PublicIP
}

// IPv6 nexthop objects take IDs in 224.0.0.0/3 read as a number:
// multicast and reserved space, never a peer's IPv4 address, so never the
// ID of an IPv4 peer's object.
const (
	nhid6Base = 0xe0000000
	nhid6Mask = 0x1fffffff
)

// nexthopID is the first ID tried for the nexthop object of a peer. IPv4:
// the peer's address read as a number, the same on every node and across
// restarts, so a restarted agent finds its objects by ID. An IPv6 address
// does not fit in an ID: its object takes a hash of the address in the
// IPv6 range, and the next free ID there if another object holds it
// (nextNexthopID); a restarted agent finds it by its gateway. 0.0.0.0 is
// never a peer (and 0 no valid ID).
func nexthopID(peer netip.Addr) uint32 {
	if familyOf(peer) == IPv4 {
		return binary.BigEndian.Uint32(peer.AsSlice())
	}
	h := fnv.New32a()
	b := peer.As16()
	h.Write(b[:])
	return nhid6Base | h.Sum32()&nhid6Mask
}

// nextNexthopID is the ID tried after id for an IPv6 peer.
func nextNexthopID(id uint32) uint32 { return nhid6Base | (id+1)&nhid6Mask }

// prefixMap is a map keyed by prefix, on every lease of every change: an
// IPv4 prefix is one number (address << 8 | length), for the map's 64-bit
// fast path; an IPv6 one is its 16 bytes and length, hashed as plain
// memory. (netip.Prefix as a key hashes 32 bytes and holds a pointer.)
type prefixMap[V any] struct {
	v4 map[uint64]V
	v6 map[v6key]V
}

type v6key struct {
	addr [16]byte
	bits uint8
}

func newPrefixMap[V any](size int) prefixMap[V] {
	return prefixMap[V]{v4: make(map[uint64]V, size), v6: map[v6key]V{}}
}

func v4key(p netip.Prefix) uint64 {
	return uint64(v4num(p.Addr()))<<8 | uint64(p.Bits())
}

func (m prefixMap[V]) get(p netip.Prefix) (V, bool) {
	var v V
	var ok bool
	if p.Addr().Is4() {
		v, ok = m.v4[v4key(p)]
	} else {
		v, ok = m.v6[v6key{p.Addr().As16(), uint8(p.Bits())}]
	}
	return v, ok
}

func (m prefixMap[V]) set(p netip.Prefix, v V) {
	if p.Addr().Is4() {
		m.v4[v4key(p)] = v
	} else {
		m.v6[v6key{p.Addr().As16(), uint8(p.Bits())}] = v
	}
}

func (m prefixMap[V]) len() int { return len(m.v4) + len(m.v6) }

// each calls fn for every entry while it returns true; fn may delete
// the entry it is given.
func (m prefixMap[V]) each(fn func(netip.Prefix, V) bool) {
	for k, v := range m.v4 {
		if !fn(v4prefix(k), v) {
			return
		}
	}
	for k, v := range m.v6 {
		if !fn(netip.PrefixFrom(netip.AddrFrom16(k.addr), int(k.bits)), v) {
			return
		}
	}
}

func (m prefixMap[V]) delete(p netip.Prefix) {
	if p.Addr().Is4() {
		delete(m.v4, v4key(p))
	} else {
		delete(m.v6, v6key{p.Addr().As16(), uint8(p.Bits())})
	}
}

// keys is the prefixes of m that keep accepts (all if nil), ordered by
// address, then length (as comparePrefix): the IPv4 ones first, sorted
// by their number, which is that order and several times faster to sort
// than prefixes (a start sorts tens of thousands).
func (m prefixMap[V]) keys(keep func(netip.Prefix, V) bool) []netip.Prefix {
	var k4 []uint64
	for k, v := range m.v4 {
		if keep == nil || keep(v4prefix(k), v) {
			k4 = append(k4, k)
		}
	}
	slices.Sort(k4)
	out := make([]netip.Prefix, len(k4), len(k4)+len(m.v6))
	for i, k := range k4 {
		out[i] = v4prefix(k)
	}
	var k6 []netip.Prefix
	for k, v := range m.v6 {
		if p := netip.PrefixFrom(netip.AddrFrom16(k.addr), int(k.bits)); keep == nil || keep(p, v) {
			k6 = append(k6, p)
		}
	}
	slices.SortFunc(k6, comparePrefix)
	return append(out, k6...)
}

func v4prefix(k uint64) netip.Prefix {
	var a [4]byte
	binary.BigEndian.PutUint32(a[:], uint32(k>>8))
	return netip.PrefixFrom(netip.AddrFrom4(a), int(k&0xff))
}

// addrMap is a map keyed by address, as prefixMap is by prefix: an IPv4
// address is one number.
type addrMap[V any] struct {
	v4 map[uint32]V
	v6 map[[16]byte]V
}

func newAddrMap[V any](size int) addrMap[V] {
	return addrMap[V]{v4: make(map[uint32]V, size), v6: map[[16]byte]V{}}
}

func v4num(a netip.Addr) uint32 {
	b := a.As4()
	return binary.BigEndian.Uint32(b[:])
}

func (m addrMap[V]) get(a netip.Addr) (V, bool) {
	var v V
	var ok bool
	if a.Is4() {
		v, ok = m.v4[v4num(a)]
	} else {
		v, ok = m.v6[a.As16()]
	}
	return v, ok
}

func (m addrMap[V]) set(a netip.Addr, v V) {
	if a.Is4() {
		m.v4[v4num(a)] = v
	} else {
		m.v6[a.As16()] = v
	}
}

func (m addrMap[V]) delete(a netip.Addr) {
	if a.Is4() {
		delete(m.v4, v4num(a))
	} else {
		delete(m.v6, a.As16())
	}
}

func (m addrMap[V]) len() int { return len(m.v4) + len(m.v6) }

// each calls fn for every entry while it returns true.
func (m addrMap[V]) each(fn func(netip.Addr, V) bool) {
	for k, v := range m.v4 {
		var a [4]byte
		binary.BigEndian.PutUint32(a[:], k)
		if !fn(netip.AddrFrom4(a), v) {
			return
		}
	}
	for k, v := range m.v6 {
		if !fn(netip.AddrFrom16(k), v) {
			return
		}
	}
}

// checkFamily says why r cannot route p: it is not of r's family.
func (r *Reconciler) checkFamily(p Peer) error {
	if !r.fam.Has(p.Subnet.Addr()) || !r.fam.Has(p.NextHop) {
		return fmt.Errorf("peer %s via %s is not %s", p.Subnet, p.NextHop, r.fam.Name())
	}
	return nil
}
