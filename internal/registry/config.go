package registry

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
)

// rawConfig is <prefix>/config's JSON, with flannel's field names.
type rawConfig struct {
	EnableIPv4    *bool // flannel's default: true
	EnableIPv6    bool
	Network       string
	SubnetLen     int
	SubnetMin     string
	SubnetMax     string
	IPv6Network   string
	IPv6SubnetLen int
	IPv6SubnetMin string
	IPv6SubnetMax string
	Backend       struct {
		Type string
	}
}

// minNetworkBits: a Network larger than a /8 (the largest private IPv4
// block) would cover the node's own networks and the internet.
const minNetworkBits = 8

// maxSubnetBits bounds SubnetLen - Network length: at most 65,536 node
// subnets, Kubernetes' limit for node CIDRs too. Each subnet is an etcd
// key, a route and a map entry on every node; more is a typo, not a cluster.
// IPv6 needs no such bound: a node's IPv6 subnet shares its lease with its
// IPv4 one, so there are never more IPv6 subnets in use than IPv4 ones.
const maxSubnetBits = 16

// reserved is a range the kernel never forwards to a pod.
type reserved struct {
	prefix netip.Prefix
	what   string
}

// family is what flannel's CheckNetworkConfig does differently for the
// IPv4 and the IPv6 network.
type family struct {
	name       string // "IPv4" or "IPv6"
	field      string // prefix of the config's field names: "" or "IPv6"
	bits       int    // address length
	maxLen     int    // longest subnet: room for a gateway and two pods
	defaultLen int    // the subnet length of networks large enough for it
	maxSubnets int    // bound of SubnetLen - network length (0: none)
	unroutable []reserved
}

var ipv4 = family{name: "IPv4", field: "", bits: 32, maxLen: 30, defaultLen: 24, maxSubnets: maxSubnetBits, unroutable: []reserved{
	{netip.MustParsePrefix("0.0.0.0/8"), "this network"},
	{netip.MustParsePrefix("127.0.0.0/8"), "loopback"},
	{netip.MustParsePrefix("169.254.0.0/16"), "link-local"},
	{netip.MustParsePrefix("224.0.0.0/4"), "multicast"},
	{netip.MustParsePrefix("240.0.0.0/4"), "reserved"},
}}

var ipv6 = family{name: "IPv6", field: "IPv6", bits: 128, maxLen: 126, defaultLen: 64, unroutable: []reserved{
	{netip.MustParsePrefix("::/8"), "unspecified, loopback and IPv4-mapped"},
	{netip.MustParsePrefix("fe80::/10"), "link-local"},
	{netip.MustParsePrefix("ff00::/8"), "multicast"},
}}

// ErrIPv6Only: flanneld's etcd leases always carry an IPv4 subnet (its
// IPv6-only mode needs the Kubernetes subnet manager).
var ErrIPv6Only = errors.New("EnableIPv4 is false, but an IPv6-only network is not possible with etcd " +
	"(flannel's etcd leases always carry an IPv4 subnet): keep EnableIPv4 and add EnableIPv6")

// ParseConfig parses <prefix>/config and checks it as flanneld does
// (CheckNetworkConfig), and refuses what no cluster can use (a network
// larger than a /8 or in an unroutable range, more than 65,536 IPv4
// subnets, an IPv6-only network), filling in its defaults: EnableIPv4
// true; SubnetLen 24 (Network's length + 2 for networks of /23 to /28),
// IPv6SubnetLen 64 (IPv6Network's length + 2 for /63 to /124); SubnetMin
// and IPv6SubnetMin the second subnet, SubnetMax and IPv6SubnetMax the
// last one. The IPv6 fields are read only with EnableIPv6, as in flanneld.
// BackendType stays "" when the config names no backend (flanneld would
// then run udp).
func ParseConfig(data []byte) (Config, error) {
	var raw rawConfig
	if err := json.Unmarshal(data, &raw); err != nil {
		return Config{}, fmt.Errorf("not JSON: %w", err)
	}
	if raw.EnableIPv4 != nil && !*raw.EnableIPv4 {
		return Config{}, ErrIPv6Only
	}
	cfg := Config{EnableIPv4: true, EnableIPv6: raw.EnableIPv6, BackendType: raw.Backend.Type}
	v4, err := ipv4.parse(raw.Network, raw.SubnetLen, raw.SubnetMin, raw.SubnetMax)
	if err != nil {
		return Config{}, err
	}
	cfg.Network, cfg.SubnetLen, cfg.SubnetMin, cfg.SubnetMax = v4.network, v4.len, v4.min, v4.max
	if cfg.EnableIPv6 {
		v6, err := ipv6.parse(raw.IPv6Network, raw.IPv6SubnetLen, raw.IPv6SubnetMin, raw.IPv6SubnetMax)
		if err != nil {
			return Config{}, fmt.Errorf("EnableIPv6: %w", err)
		}
		cfg.IPv6Network, cfg.IPv6SubnetLen, cfg.IPv6SubnetMin, cfg.IPv6SubnetMax = v6.network, v6.len, v6.min, v6.max
	}
	return cfg, nil
}

// subnetRange is how one family's network is cut into node subnets.
type subnetRange struct {
	network  netip.Prefix
	len      int
	min, max netip.Addr // first address of the first and the last subnet handed out
}

func (c Config) ipv4() subnetRange {
	return subnetRange{c.Network, c.SubnetLen, c.SubnetMin, c.SubnetMax}
}

// ipv6 is the zero range without EnableIPv6.
func (c Config) ipv6() subnetRange {
	return subnetRange{c.IPv6Network, c.IPv6SubnetLen, c.IPv6SubnetMin, c.IPv6SubnetMax}
}

// parse is flannel's CheckNetworkConfig for one family, with our refusals.
func (f family) parse(networkS string, subnetLen int, minS, maxS string) (subnetRange, error) {
	name := f.field + "Network"
	if networkS == "" {
		return subnetRange{}, fmt.Errorf("%s is missing", name)
	}
	network, err := netip.ParsePrefix(networkS)
	if err != nil || network.Addr().BitLen() != f.bits {
		return subnetRange{}, fmt.Errorf("%s %q is not an %s prefix", name, networkS, f.name)
	}
	network = network.Masked()
	if network.Bits() < minNetworkBits {
		return subnetRange{}, fmt.Errorf("%s %s is larger than a /%d: it would take over routes to the node's own networks", name, network, minNetworkBits)
	}
	for _, r := range f.unroutable {
		if network.Overlaps(r.prefix) {
			return subnetRange{}, fmt.Errorf("%s %s overlaps %s (%s): no pod can be routed there", name, network, r.prefix, r.what)
		}
	}
	// flannel's rules: room for at least four subnets, so flanneld and we
	// cut the network the same way.
	lenName := f.field + "SubnetLen"
	if subnetLen == 0 {
		switch {
		case network.Bits() > f.maxLen-2:
			return subnetRange{}, fmt.Errorf("%s %s is too small: flannel needs at least a /%d", name, network, f.maxLen-2)
		case network.Bits() <= f.defaultLen-2:
			subnetLen = f.defaultLen
		default:
			subnetLen = network.Bits() + 2
		}
	}
	if subnetLen < network.Bits()+2 || subnetLen > f.maxLen {
		return subnetRange{}, fmt.Errorf("%s %d must be at least 2 longer than %s %s and at most %d", lenName, subnetLen, name, network, f.maxLen)
	}
	if bits := subnetLen - network.Bits(); f.maxSubnets > 0 && bits > f.maxSubnets {
		return subnetRange{}, fmt.Errorf("%s %d cuts %s %s into %d subnets; at most %d are allowed (%s %d or less)",
			lenName, subnetLen, name, network, 1<<bits, 1<<f.maxSubnets, lenName, network.Bits()+f.maxSubnets)
	}
	size := pow2(f.bits - subnetLen)
	base := addrNum(network.Addr())
	first, _ := base.add(size)
	end, _ := base.add(pow2(f.bits - network.Bits())) // network.Bits() >= 8: no overflow
	// Like flannel, skip the first subnet: its first address is the
	// network's.
	r := subnetRange{network: network, len: subnetLen, min: first.addr(network.Addr()), max: end.sub(size).addr(network.Addr())}
	for _, b := range []struct {
		name string
		s    string
		dst  *netip.Addr
	}{{f.field + "SubnetMin", minS, &r.min}, {f.field + "SubnetMax", maxS, &r.max}} {
		if b.s == "" {
			continue
		}
		a, err := netip.ParseAddr(b.s)
		if err == nil && a.BitLen() == f.bits && a.IsUnspecified() {
			continue // flanneld takes 0.0.0.0 and :: for unset
		}
		if err != nil || !network.Contains(a) {
			return subnetRange{}, fmt.Errorf("%s %q is not an address in %s", b.name, b.s, network)
		}
		// flanneld refuses a bound inside a subnet; rounding it instead
		// would make us hand out a subnet flanneld would not.
		if m := netip.PrefixFrom(a, subnetLen).Masked().Addr(); m != a {
			return subnetRange{}, fmt.Errorf("%s %s is not on a /%d boundary (%s is)", b.name, a, subnetLen, m)
		}
		*b.dst = a
	}
	if r.min.Compare(r.max) > 0 {
		return subnetRange{}, fmt.Errorf("%sSubnetMin %s is above %sSubnetMax %s", f.field, r.min, f.field, r.max)
	}
	return r, nil
}

// InRange reports whether p is one of the subnets this config hands out,
// IPv4 or (with EnableIPv6) IPv6.
func (c Config) InRange(p netip.Prefix) bool {
	if p.Addr().Is4() {
		return c.ipv4().contains(p)
	}
	return c.EnableIPv6 && c.ipv6().contains(p)
}

func (r subnetRange) contains(p netip.Prefix) bool {
	if !r.network.IsValid() || p.Bits() != r.len || !r.network.Contains(p.Addr()) {
		return false
	}
	return p.Addr().Compare(r.min) >= 0 && p.Addr().Compare(r.max) <= 0
}
