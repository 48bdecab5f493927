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
	root  string
	maps  hgwMaps // the generated set: one field per map in bpf/hgw.c
	names counterNames
}

// pinnedMaps names every pinned map.
var pinnedMaps = [...]string{hgwMapRoutes, hgwMapRoutes6, hgwMapConfig, hgwMapStats, hgwMapEndpoints}

func newMaps(root string, maps hgwMaps) (*Maps, error) {
	names, err := loadCounterNames()
	if err != nil {
		return nil, err
	}
	return &Maps{root: root, maps: maps, names: names}, nil
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
	// A collection of the pinned maps, assigned by name as the loader does.
	pinned := ebpf.Collection{Maps: map[string]*ebpf.Map{}}
	defer pinned.Close() // what Assign did not take
	for _, name := range pinnedMaps {
		path := filepath.Join(root, name)
		m, err := ebpf.LoadPinnedMap(path, nil)
		if err != nil {
			return nil, fmt.Errorf("open pinned map %s: %w", path, err)
		}
		pinned.Maps[name] = m
	}
	var maps hgwMaps
	if err := pinned.Assign(&maps); err != nil {
		return nil, fmt.Errorf("pinned maps under %s: %w", root, err)
	}
	m, err := newMaps(root, maps)
	if err != nil {
		closeMaps(maps)
		return nil, err
	}
	return m, nil
}

// PinRoot is the directory the maps are pinned in.
func (m *Maps) PinRoot() string { return m.root }

// Close releases the handles; the pins stay. Every map is closed, also
// after one fails (the generated Close stops at the first error).
func (m *Maps) Close() error { return closeMaps(m.maps) }

func closeMaps(mm hgwMaps) error {
	return errors.Join(mm.Config.Close(), mm.Endpoints.Close(), mm.Routes.Close(), mm.Routes6.Close(), mm.Stats.Close())
}

// NodeConfig is what the programs need to know about this node.
type NodeConfig struct {
	PodSubnet netip.Prefix `json:"pod_subnet"` // this node's pod subnet
	Gateway   netip.Addr   `json:"gateway"`    // the bridge's address in it
	// PodSubnet6 and Gateway6 are the node's IPv6 pod subnet and the
	// bridge's IPv6 address in it (dual stack). Zero: the node has no
	// IPv6 pods, and both programs pass IPv6 to the kernel (reason
	// no_ipv6_config).
	PodSubnet6      netip.Prefix `json:"pod_subnet6"`
	Gateway6        netip.Addr   `json:"gateway6"`
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
	if c.PodSubnet6.IsValid() || c.Gateway6.IsValid() {
		a := c.PodSubnet6.Addr()
		if !a.Is6() || a.Is4In6() || a.Zone() != "" || !c.PodSubnet6.Contains(c.Gateway6) {
			return fmt.Errorf("node config: IPv6 pod subnet %s and gateway %s must be IPv6, gateway inside the subnet (or both unset)", c.PodSubnet6, c.Gateway6)
		}
	}
	v := hgwNodeConfig{
		PodSubnet:       c.PodSubnet.Masked().Addr().As4(),
		PodPrefixlen:    uint32(c.PodSubnet.Bits()),
		Gateway:         c.Gateway.As4(),
		BridgeIfindex:   c.BridgeIfindex,
		UnderlayIfindex: c.UnderlayIfindex,
	}
	if c.PodSubnet6.IsValid() {
		v.Pod6Subnet = c.PodSubnet6.Masked().Addr().As16()
		v.Pod6Prefixlen = uint32(c.PodSubnet6.Bits())
		v.Gateway6 = c.Gateway6.As16()
	}
	for _, f := range c.configFlags() {
		if *f.on {
			v.Flags |= uint32(f.flag)
		}
	}
	if err := m.maps.Config.Put(uint32(0), &v); err != nil {
		return fmt.Errorf("write config map: %w", err)
	}
	return nil
}

// Config reads the node config back; ok is false if none was written yet.
func (m *Maps) Config() (c NodeConfig, ok bool, err error) {
	var v hgwNodeConfig
	if err := m.maps.Config.Lookup(uint32(0), &v); err != nil {
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
	if v.Pod6Prefixlen != 0 {
		c.PodSubnet6 = netip.PrefixFrom(netip.AddrFrom16(v.Pod6Subnet), int(v.Pod6Prefixlen))
		c.Gateway6 = netip.AddrFrom16(v.Gateway6)
	}
	for _, f := range c.configFlags() {
		*f.on = v.Flags&uint32(f.flag) != 0
	}
	return c, true, nil
}

// Counter is one (family, program, reason) cell of the stats map, summed
// over CPUs.
type Counter struct {
	Family  string `json:"family"`  // "ipv4", "ipv6", "other" (not IP: ARP, ...)
	Program string `json:"program"` // "from_pods", "from_underlay"
	Reason  string `json:"reason"`  // "redirect", "no_route", ...
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

// Stats reads every counter, summed over CPUs, in family, program, then
// reason order (the stats map's own).
func (m *Maps) Stats() ([]Counter, error) {
	n := m.names
	out := make([]Counter, 0, len(n.families)*len(n.programs)*len(n.reasons))
	for f, fname := range n.families {
		for p, pname := range n.programs {
			for r, rname := range n.reasons {
				var perCPU []hgwCounter
				idx := uint32((f*len(n.programs)+p)*len(n.reasons) + r)
				if err := m.maps.Stats.Lookup(idx, &perCPU); err != nil {
					return nil, fmt.Errorf("read stats map index %d: %w", idx, err)
				}
				c := Counter{Family: fname, Program: pname, Reason: rname}
				for _, v := range perCPU {
					c.Packets += v.Packets
					c.Bytes += v.Bytes
				}
				out = append(out, c)
			}
		}
	}
	return out, nil
}

// Packets sums the packets counted for program and reason over every
// family.
func Packets(counters []Counter, program, reason string) uint64 {
	var sum uint64
	for _, c := range counters {
		if c.Program == program && c.Reason == reason {
			sum += c.Packets
		}
	}
	return sum
}

// Redirected sums the packets a program redirected: to a next hop or the
// bridge (reason "redirect") or straight into a known pod ("redirect_peer").
func Redirected(counters []Counter, program string) uint64 {
	return Packets(counters, program, "redirect") + Packets(counters, program, "redirect_peer")
}

// Delta is what each counter moved from before to after: two readings of
// one node's stats map (a cell missing from before counts from zero).
func Delta(before, after []Counter) []Counter {
	type cell struct{ family, program, reason string }
	was := make(map[cell]Counter, len(before))
	for _, c := range before {
		was[cell{c.Family, c.Program, c.Reason}] = c
	}
	out := make([]Counter, len(after))
	for i, c := range after {
		b := was[cell{c.Family, c.Program, c.Reason}]
		c.Packets -= b.Packets
		c.Bytes -= b.Bytes
		out[i] = c
	}
	return out
}

// OfFamily keeps the counters of one family: ipv4, ipv6 or other (not IP).
func OfFamily(counters []Counter, family string) []Counter {
	var out []Counter
	for _, c := range counters {
		if c.Family == family {
			out = append(out, c)
		}
	}
	return out
}

// counterNames holds the enum names from the object's BTF, index = value:
// the C enums are the one definition of families, programs and reasons.
type counterNames struct {
	families []string
	programs []string
	reasons  []string
}

func loadCounterNames() (counterNames, error) {
	spec, err := loadHgw()
	if err != nil {
		return counterNames{}, fmt.Errorf("load embedded BPF spec: %w", err)
	}
	families, err := enumNames(spec, "hgw_family", "FAMILY_")
	if err != nil {
		return counterNames{}, err
	}
	programs, err := enumNames(spec, "hgw_program", "PROG_")
	if err != nil {
		return counterNames{}, err
	}
	reasons, err := enumNames(spec, "hgw_reason", "REASON_")
	if err != nil {
		return counterNames{}, err
	}
	return counterNames{families: families, programs: programs, reasons: reasons}, nil
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
