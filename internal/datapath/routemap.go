package datapath

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
)

// Routes is the LPM map of peer IPv4 subnets (`routes`).
func (m *Maps) Routes() *RouteMap { return &RouteMap{m: m.maps.Routes, codec: route4Codec} }

// Routes6 is the LPM map of peer IPv6 subnets (`routes6`).
func (m *Maps) Routes6() *Route6Map { return &Route6Map{m: m.maps.Routes6, codec: route6Codec} }

// RouteMap gives typed access to the `routes` LPM trie (IPv4).
type RouteMap = lpmRoutes[hgwRouteKey, hgwRouteValue]

// Route6Map gives typed access to the `routes6` LPM trie (IPv6), with the
// same methods as RouteMap.
type Route6Map = lpmRoutes[hgwRoute6Key, hgwRoute6Value]

// routeCodec converts between Route and one family's key and value.
type routeCodec[K, V any] struct {
	name  string // the map's name, for errors
	key   func(netip.Prefix) (K, error)
	value func(Route, K) (V, error)
	route func(K, V) Route
}

var route4Codec = routeCodec[hgwRouteKey, hgwRouteValue]{
	name: hgwMapRoutes,
	key: func(p netip.Prefix) (hgwRouteKey, error) {
		if !p.IsValid() || !p.Addr().Is4() {
			return hgwRouteKey{}, fmt.Errorf("route subnet %s is not an IPv4 prefix", p)
		}
		return hgwRouteKey{Prefixlen: uint32(p.Bits()), Addr: p.Masked().Addr().As4()}, nil
	},
	value: func(rt Route, k hgwRouteKey) (hgwRouteValue, error) {
		if !rt.NextHop.Is4() {
			return hgwRouteValue{}, fmt.Errorf("route %s: next hop %s is not IPv4", rt.Subnet, rt.NextHop)
		}
		return hgwRouteValue{Nexthop: rt.NextHop.As4(), Ifindex: rt.Ifindex, Prefixlen: k.Prefixlen}, nil
	},
	route: func(k hgwRouteKey, v hgwRouteValue) Route {
		return Route{Subnet: netip.PrefixFrom(netip.AddrFrom4(k.Addr), int(k.Prefixlen)),
			NextHop: netip.AddrFrom4(v.Nexthop), Ifindex: v.Ifindex}
	},
}

// An IPv6 route's next hop is the peer's IPv6 host address: an IPv4 one
// (or IPv4-mapped) would make bpf_redirect_neigh resolve nothing.
var route6Codec = routeCodec[hgwRoute6Key, hgwRoute6Value]{
	name: hgwMapRoutes6,
	key: func(p netip.Prefix) (hgwRoute6Key, error) {
		if !p.IsValid() || !p.Addr().Is6() || p.Addr().Is4In6() {
			return hgwRoute6Key{}, fmt.Errorf("route subnet %s is not an IPv6 prefix", p)
		}
		return hgwRoute6Key{Prefixlen: uint32(p.Bits()), Addr: p.Masked().Addr().As16()}, nil
	},
	value: func(rt Route, k hgwRoute6Key) (hgwRoute6Value, error) {
		if !rt.NextHop.Is6() || rt.NextHop.Is4In6() || rt.NextHop.Zone() != "" {
			return hgwRoute6Value{}, fmt.Errorf("route %s: next hop %s is not a global IPv6 address", rt.Subnet, rt.NextHop)
		}
		return hgwRoute6Value{Nexthop: rt.NextHop.As16(), Ifindex: rt.Ifindex, Prefixlen: k.Prefixlen}, nil
	},
	route: func(k hgwRoute6Key, v hgwRoute6Value) Route {
		return Route{Subnet: netip.PrefixFrom(netip.AddrFrom16(k.Addr), int(k.Prefixlen)),
			NextHop: netip.AddrFrom16(v.Nexthop), Ifindex: v.Ifindex}
	},
}

// lpmRoutes is one family's LPM trie of peer subnets; the two families
// differ only in their codec.
type lpmRoutes[K, V any] struct {
	m     *ebpf.Map
	codec routeCodec[K, V]
}

func (r *lpmRoutes[K, V]) entry(rt Route) (K, V, error) {
	key, err := r.codec.key(rt.Subnet)
	if err != nil {
		var v V
		return key, v, err
	}
	val, err := r.codec.value(rt, key)
	return key, val, err
}

// Put inserts or overwrites the entry for r.Subnet in one update, so a live
// peer's entry is never missing while it changes.
func (r *lpmRoutes[K, V]) Put(rt Route) error {
	key, val, err := r.entry(rt)
	if err != nil {
		return err
	}
	if err := r.m.Put(&key, &val); err != nil {
		return fmt.Errorf("put %s via %s in %s map: %w", rt.Subnet, rt.NextHop, r.codec.name, err)
	}
	return nil
}

// PutBatch writes routes in order, many per system call where the kernel
// can (BPF_MAP_UPDATE_BATCH), one update each otherwise. It returns how
// many were written before the first failure (none if one is not of the
// map's family): a start with tens of thousands of peers fills the map in a
// few calls.
func (r *lpmRoutes[K, V]) PutBatch(rts []Route) (int, error) {
	keys, vals := make([]K, len(rts)), make([]V, len(rts))
	for i, rt := range rts {
		var err error
		if keys[i], vals[i], err = r.entry(rt); err != nil {
			return 0, err // nothing written
		}
	}
	if len(rts) == 0 {
		return 0, nil
	}
	n, err := r.m.BatchUpdate(keys, vals, nil)
	if errors.Is(err, ebpf.ErrNotSupported) {
		for i, rt := range rts {
			if err := r.Put(rt); err != nil {
				return i, err
			}
		}
		return len(rts), nil
	}
	if err != nil {
		return n, fmt.Errorf("put %d routes in %s map (%d written): %w", len(rts), r.codec.name, n, err)
	}
	return n, nil
}

// Delete removes the entry for subnet; a missing entry is not an error.
func (r *lpmRoutes[K, V]) Delete(subnet netip.Prefix) error {
	key, err := r.codec.key(subnet)
	if err != nil {
		return err
	}
	if err := r.m.Delete(&key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete %s from %s map: %w", subnet, r.codec.name, err)
	}
	return nil
}

// Match returns the entry the programs would use for subnet: the trie's
// longest-prefix match (so a covering entry answers too; compare the next
// hop to tell).
func (r *lpmRoutes[K, V]) Match(subnet netip.Prefix) (rt Route, ok bool, err error) {
	key, err := r.codec.key(subnet)
	if err != nil {
		return Route{}, false, err
	}
	var val V
	if err := r.m.Lookup(&key, &val); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return Route{}, false, nil
		}
		return Route{}, false, fmt.Errorf("look up %s in %s map: %w", subnet, r.codec.name, err)
	}
	rt = r.codec.route(key, val)
	rt.Subnet = subnet.Masked()
	return rt, true, nil
}

// List returns every entry: in batches of a thousand where the kernel can
// (two syscalls per entry otherwise, which dominates a reconcile over
// thousands of peers).
func (r *lpmRoutes[K, V]) List() ([]Route, error) {
	out, err := r.listBatch()
	if errors.Is(err, ebpf.ErrNotSupported) {
		return r.listIter()
	}
	return out, err
}

func (r *lpmRoutes[K, V]) listBatch() ([]Route, error) {
	const chunk = 1024
	keys, vals := make([]K, chunk), make([]V, chunk)
	var (
		cursor ebpf.MapBatchCursor
		out    []Route
	)
	for {
		n, err := r.m.BatchLookup(&cursor, keys, vals, nil)
		for i := range n {
			out = append(out, r.codec.route(keys[i], vals[i]))
		}
		switch {
		case errors.Is(err, ebpf.ErrKeyNotExist): // the end
			return out, nil
		case errors.Is(err, ebpf.ErrNotSupported):
			return nil, err
		case err != nil:
			return nil, fmt.Errorf("list %s map: %w", r.codec.name, err)
		}
	}
}

func (r *lpmRoutes[K, V]) listIter() ([]Route, error) {
	return listAll(r.m, r.codec.name, r.codec.route)
}

// listAll reads every entry of m, one lookup at a time, through conv.
func listAll[K, V, T any](m *ebpf.Map, name string, conv func(K, V) T) ([]T, error) {
	var (
		key  K
		val  V
		out  []T
		iter = m.Iterate()
	)
	for iter.Next(&key, &val) {
		out = append(out, conv(key, val))
	}
	if err := iter.Err(); err != nil {
		return nil, fmt.Errorf("list %s map: %w", name, err)
	}
	return out, nil
}
