package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
)

// Maps is a typed view of the pinned maps. The agent gets it from Load;
// inspection commands open it with OpenPinned, with no program loaded.
type Maps struct {
	root   string
	routes *ebpf.Map
	config *ebpf.Map
	stats  *ebpf.Map
	eps    *ebpf.Map
	names  counterNames
}

// pinnedMaps names every pinned map, in newMaps' argument order.
var pinnedMaps = [...]string{hgwMapRoutes, hgwMapConfig, hgwMapStats, hgwMapEndpoints}

func newMaps(root string, routes, config, stats, endpoints *ebpf.Map) (*Maps, error) {
	names, err := loadCounterNames()
	if err != nil {
		return nil, err
	}
	return &Maps{root: root, routes: routes, config: config, stats: stats, eps: endpoints, names: names}, nil
}

// OpenPinned opens the maps an agent pinned under root.
func OpenPinned(root string) (*Maps, error) {
	spec, err := loadHgw()
	if err != nil {
		return nil, fmt.Errorf("load embedded BPF spec: %w", err)
	}
	if _, err := checkPinnedLayouts(root, spec, false); err != nil {
		return nil, err
	}
	var ms [len(pinnedMaps)]*ebpf.Map
	for i, name := range pinnedMaps {
		path := filepath.Join(root, name)
		m, err := ebpf.LoadPinnedMap(path, nil)
		if err != nil {
			for _, prev := range ms[:i] {
				prev.Close()
			}
			return nil, fmt.Errorf("open pinned map %s: %w", path, err)
		}
		ms[i] = m
	}
	maps, err := newMaps(root, ms[0], ms[1], ms[2], ms[3])
	if err != nil {
		errors.Join(ms[0].Close(), ms[1].Close(), ms[2].Close(), ms[3].Close())
		return nil, err
	}
	return maps, nil
}

// PinRoot is the directory the maps are pinned in.
func (m *Maps) PinRoot() string { return m.root }

// Close releases the handles; the pins stay.
func (m *Maps) Close() error {
	return errors.Join(m.routes.Close(), m.config.Close(), m.stats.Close(), m.eps.Close())
}

// Routes is the LPM map of peer subnets.
func (m *Maps) Routes() *RouteMap { return &RouteMap{m: m.routes} }

// RouteMap gives typed access to the `routes` LPM trie.
type RouteMap struct{ m *ebpf.Map }

func routeKey(p netip.Prefix) (hgwRouteKey, error) {
	if !p.IsValid() || !p.Addr().Is4() {
		return hgwRouteKey{}, fmt.Errorf("route subnet %s is not an IPv4 prefix", p)
	}
	return hgwRouteKey{Prefixlen: uint32(p.Bits()), Addr: p.Masked().Addr().As4()}, nil
}

// Put inserts or overwrites the entry for r.Subnet in one update, so a live
// peer's entry is never missing while it changes.
func (r *RouteMap) Put(rt Route) error {
	key, err := routeKey(rt.Subnet)
	if err != nil {
		return err
	}
	if !rt.NextHop.Is4() {
		return fmt.Errorf("route %s: next hop %s is not IPv4", rt.Subnet, rt.NextHop)
	}
	val := hgwRouteValue{Nexthop: rt.NextHop.As4(), Ifindex: rt.Ifindex, Prefixlen: key.Prefixlen}
	if err := r.m.Put(&key, &val); err != nil {
		return fmt.Errorf("put %s via %s in routes map: %w", rt.Subnet, rt.NextHop, err)
	}
	return nil
}

// PutBatch writes routes in order, many per system call where the kernel
// can (BPF_MAP_UPDATE_BATCH), one update each otherwise. It returns how
// many were written before the first failure (none if one is not IPv4): a start with tens of
// thousands of peers fills the map in a few calls.
func (r *RouteMap) PutBatch(rts []Route) (int, error) {
	keys, vals := make([]hgwRouteKey, len(rts)), make([]hgwRouteValue, len(rts))
	for i, rt := range rts {
		key, err := routeKey(rt.Subnet)
		if err != nil {
			return 0, err // nothing written
		}
		if !rt.NextHop.Is4() {
			return 0, fmt.Errorf("route %s: next hop %s is not IPv4", rt.Subnet, rt.NextHop)
		}
		keys[i], vals[i] = key, hgwRouteValue{Nexthop: rt.NextHop.As4(), Ifindex: rt.Ifindex}
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
		return n, fmt.Errorf("put %d routes in routes map (%d written): %w", len(rts), n, err)
	}
	return n, nil
}

// Delete removes the entry for subnet; a missing entry is not an error.
func (r *RouteMap) Delete(subnet netip.Prefix) error {
	key, err := routeKey(subnet)
	if err != nil {
		return err
	}
	if err := r.m.Delete(&key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete %s from routes map: %w", subnet, err)
	}
	return nil
}

// Match returns the entry the programs would use for subnet: the trie's
// longest-prefix match (so a covering entry answers too; compare the next
// hop to tell).
func (r *RouteMap) Match(subnet netip.Prefix) (rt Route, ok bool, err error) {
	key, err := routeKey(subnet)
	if err != nil {
		return Route{}, false, err
	}
	var val hgwRouteValue
	if err := r.m.Lookup(&key, &val); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return Route{}, false, nil
		}
		return Route{}, false, fmt.Errorf("look up %s in routes map: %w", subnet, err)
	}
	return Route{Subnet: subnet.Masked(), NextHop: netip.AddrFrom4(val.Nexthop), Ifindex: val.Ifindex}, true, nil
}

// List returns every entry: in batches of a thousand where the kernel can
// (two syscalls per entry otherwise, which dominates a reconcile over
// thousands of peers).
func (r *RouteMap) List() ([]Route, error) {
	out, err := r.listBatch()
	if errors.Is(err, ebpf.ErrNotSupported) {
		return r.listIter()
	}
	return out, err
}

func (r *RouteMap) listBatch() ([]Route, error) {
	const chunk = 1024
	keys, vals := make([]hgwRouteKey, chunk), make([]hgwRouteValue, chunk)
	var (
		cursor ebpf.MapBatchCursor
		out    []Route
	)
	for {
		n, err := r.m.BatchLookup(&cursor, keys, vals, nil)
		for i := range n {
			out = append(out, routeOf(keys[i], vals[i]))
		}
		switch {
		case errors.Is(err, ebpf.ErrKeyNotExist): // the end
			return out, nil
		case errors.Is(err, ebpf.ErrNotSupported):
			return nil, err
		case err != nil:
			return nil, fmt.Errorf("list routes map: %w", err)
		}
	}
}

func routeOf(key hgwRouteKey, val hgwRouteValue) Route {
	return Route{
		Subnet:  netip.PrefixFrom(netip.AddrFrom4(key.Addr), int(key.Prefixlen)),
		NextHop: netip.AddrFrom4(val.Nexthop),
		Ifindex: val.Ifindex,
	}
}

func (r *RouteMap) listIter() ([]Route, error) {
	var (
		key  hgwRouteKey
		val  hgwRouteValue
		out  []Route
		iter = r.m.Iterate()
	)
	for iter.Next(&key, &val) {
		out = append(out, routeOf(key, val))
	}
	if err := iter.Err(); err != nil {
		return nil, fmt.Errorf("list routes map: %w", err)
	}
	return out, nil
}

// NodeConfig is what the programs need to know about this node.
type NodeConfig struct {
	PodSubnet       netip.Prefix `json:"pod_subnet"` // this node's pod subnet
	Gateway         netip.Addr   `json:"gateway"`    // the bridge's address in it
	BridgeIfindex   uint32       `json:"bridge_ifindex"`
	UnderlayIfindex uint32       `json:"underlay_ifindex"`
	// Conntrack says the conntrack table lookup is usable (see
	// ConntrackSupported): both programs leave flows the kernel's
	// conntrack tracks to the kernel.
	Conntrack bool `json:"conntrack"`
	// IgnoreConntrack (--unsafe-ignore-conntrack) skips every conntrack
	// check. With neither it nor Conntrack the programs fail closed:
	// nothing is redirected (reason no_conntrack).
	IgnoreConntrack bool `json:"ignore_conntrack"`
	// StepAside makes the programs pass every packet to the kernel
	// untouched (reason step_aside): the agent wants no fast path now.
	StepAside bool `json:"step_aside"`
}

// configFlags pairs each NodeConfig switch with its C flag.
func (c *NodeConfig) configFlags() []struct {
	on   *bool
	flag hgwConfigFlag
} {
	return []struct {
		on   *bool
		flag hgwConfigFlag
	}{
		{&c.Conntrack, hgwConfigFlagCONFIG_F_CONNTRACK},
		{&c.IgnoreConntrack, hgwConfigFlagCONFIG_F_IGNORE_CONNTRACK},
		{&c.StepAside, hgwConfigFlagCONFIG_F_STEP_ASIDE},
	}
}

// SetConfig writes the node config the programs read on every packet.
func (m *Maps) SetConfig(c NodeConfig) error {
	if !c.PodSubnet.Addr().Is4() || !c.Gateway.Is4() || !c.PodSubnet.Contains(c.Gateway) {
		return fmt.Errorf("node config: pod subnet %s and gateway %s must be IPv4, gateway inside the subnet", c.PodSubnet, c.Gateway)
	}
	v := hgwNodeConfig{
		PodSubnet:       c.PodSubnet.Masked().Addr().As4(),
		PodPrefixlen:    uint32(c.PodSubnet.Bits()),
		Gateway:         c.Gateway.As4(),
		BridgeIfindex:   c.BridgeIfindex,
		UnderlayIfindex: c.UnderlayIfindex,
	}
	for _, f := range c.configFlags() {
		if *f.on {
			v.Flags |= uint32(f.flag)
		}
	}
	if err := m.config.Put(uint32(0), &v); err != nil {
		return fmt.Errorf("write config map: %w", err)
	}
	return nil
}

// Config reads the node config back; ok is false if none was written yet.
func (m *Maps) Config() (c NodeConfig, ok bool, err error) {
	var v hgwNodeConfig
	if err := m.config.Lookup(uint32(0), &v); err != nil {
		return NodeConfig{}, false, fmt.Errorf("read config map: %w", err)
	}
	if v.PodPrefixlen == 0 {
		return NodeConfig{}, false, nil
	}
	c = NodeConfig{
		PodSubnet:       netip.PrefixFrom(netip.AddrFrom4(v.PodSubnet), int(v.PodPrefixlen)),
		Gateway:         netip.AddrFrom4(v.Gateway),
		BridgeIfindex:   v.BridgeIfindex,
		UnderlayIfindex: v.UnderlayIfindex,
	}
	for _, f := range c.configFlags() {
		*f.on = v.Flags&uint32(f.flag) != 0
	}
	return c, true, nil
}

// Counter is one (program, reason) cell of the stats map, summed over CPUs.
type Counter struct {
	Program string `json:"program"` // "from_pods", "from_underlay"
	Reason  string `json:"reason"`  // "redirect", "no_route", ...
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

// Stats reads every counter, summed over CPUs, in program then reason order.
func (m *Maps) Stats() ([]Counter, error) {
	out := make([]Counter, 0, len(m.names.programs)*len(m.names.reasons))
	for p, pname := range m.names.programs {
		for r, rname := range m.names.reasons {
			var perCPU []hgwCounter
			idx := uint32(p*len(m.names.reasons) + r)
			if err := m.stats.Lookup(idx, &perCPU); err != nil {
				return nil, fmt.Errorf("read stats map index %d: %w", idx, err)
			}
			c := Counter{Program: pname, Reason: rname}
			for _, v := range perCPU {
				c.Packets += v.Packets
				c.Bytes += v.Bytes
			}
			out = append(out, c)
		}
	}
	return out, nil
}

// counterNames holds the enum names from the object's BTF, index = value:
// the C enums are the one definition of programs and reasons.
type counterNames struct {
	programs []string
	reasons  []string
}

func loadCounterNames() (counterNames, error) {
	spec, err := loadHgw()
	if err != nil {
		return counterNames{}, fmt.Errorf("load embedded BPF spec: %w", err)
	}
	programs, err := enumNames(spec, "hgw_program", "PROG_")
	if err != nil {
		return counterNames{}, err
	}
	reasons, err := enumNames(spec, "hgw_reason", "REASON_")
	if err != nil {
		return counterNames{}, err
	}
	return counterNames{programs: programs, reasons: reasons}, nil
}

// enumNames returns the lower-cased names of enum `name` without prefix,
// indexed by value, up to the <prefix>MAX sentinel.
func enumNames(spec *ebpf.CollectionSpec, name, prefix string) ([]string, error) {
	var e *btf.Enum
	if err := spec.Types.TypeByName(name, &e); err != nil {
		return nil, fmt.Errorf("enum %s in BPF object BTF: %w", name, err)
	}
	max := -1
	for _, v := range e.Values {
		if v.Name == prefix+"MAX" {
			max = int(v.Value)
		}
	}
	if max < 0 {
		return nil, fmt.Errorf("enum %s has no %sMAX", name, prefix)
	}
	names := make([]string, max)
	for _, v := range e.Values {
		if int(v.Value) < max {
			names[v.Value] = strings.ToLower(strings.TrimPrefix(v.Name, prefix))
		}
	}
	return names, nil
}
