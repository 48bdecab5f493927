package registry

import (
	"encoding/json"
	"fmt"
	"net/netip"
)

// rawConfig is <prefix>/config's JSON, with flannel's field names.
type rawConfig struct {
	Network   string
	SubnetLen int
	SubnetMin string
	SubnetMax string
	Backend   struct {
		Type string
	}
}

// minNetworkBits: a Network larger than a /8 (the largest private block)
// would cover the node's own networks and the internet.
const minNetworkBits = 8

// maxSubnetBits bounds SubnetLen - Network length: at most 65,536 node
// subnets, Kubernetes' limit for node CIDRs too. Each subnet is an etcd
// key, a route and a map entry on every node; more is a typo, not a cluster.
const maxSubnetBits = 16

// unroutable are ranges the kernel never forwards to a pod.
var unroutable = []struct {
	prefix netip.Prefix
	what   string
}{
	{netip.MustParsePrefix("0.0.0.0/8"), "this network"},
	{netip.MustParsePrefix("127.0.0.0/8"), "loopback"},
	{netip.MustParsePrefix("169.254.0.0/16"), "link-local"},
	{netip.MustParsePrefix("224.0.0.0/4"), "multicast"},
	{netip.MustParsePrefix("240.0.0.0/4"), "reserved"},
}

// ParseConfig parses <prefix>/config and checks it as flanneld does
// (CheckNetworkConfig), and refuses what no cluster can use (a Network
// larger than a /8 or in an unroutable range, more than 65,536 subnets),
// filling in its defaults: SubnetLen 24 (Network's
// length + 2 for networks of /23 to /28), SubnetMin the second subnet,
// SubnetMax the last one. BackendType stays "" when the config names no
// backend (flanneld would then run udp).
func ParseConfig(data []byte) (Config, error) {
	var raw rawConfig
	if err := json.Unmarshal(data, &raw); err != nil {
		return Config{}, fmt.Errorf("not JSON: %w", err)
	}
	network, err := netip.ParsePrefix(raw.Network)
	if err != nil || !network.Addr().Is4() {
		return Config{}, fmt.Errorf("Network %q is not an IPv4 prefix", raw.Network)
	}
	network = network.Masked()
	if network.Bits() < minNetworkBits {
		return Config{}, fmt.Errorf("Network %s is larger than a /%d: it would take over routes to the node's own networks", network, minNetworkBits)
	}
	for _, r := range unroutable {
		if network.Overlaps(r.prefix) {
			return Config{}, fmt.Errorf("Network %s overlaps %s (%s): no pod can be routed there", network, r.prefix, r.what)
		}
	}
	cfg := Config{Network: network, SubnetLen: raw.SubnetLen, BackendType: raw.Backend.Type}
	// flannel's rules (CheckNetworkConfig): room for at least four
	// subnets, so flanneld and we cut the network the same way.
	if cfg.SubnetLen == 0 {
		switch {
		case network.Bits() > 28:
			return Config{}, fmt.Errorf("Network %s is too small: flannel needs at least a /28", network)
		case network.Bits() <= 22:
			cfg.SubnetLen = 24
		default:
			cfg.SubnetLen = network.Bits() + 2
		}
	}
	if cfg.SubnetLen < network.Bits()+2 || cfg.SubnetLen > 30 {
		return Config{}, fmt.Errorf("SubnetLen %d must be at least 2 longer than Network %s and at most 30", cfg.SubnetLen, network)
	}
	if bits := cfg.SubnetLen - network.Bits(); bits > maxSubnetBits {
		return Config{}, fmt.Errorf("SubnetLen %d cuts Network %s into %d subnets; at most %d are allowed (SubnetLen %d or less)",
			cfg.SubnetLen, network, 1<<bits, 1<<maxSubnetBits, network.Bits()+maxSubnetBits)
	}
	size := uint32(1) << (32 - cfg.SubnetLen)
	base := addrToU32(network.Addr())
	last := base + (uint32(1)<<(32-network.Bits()) - size)
	// Like flannel, skip the first subnet: its .0 is the network's address.
	cfg.SubnetMin, cfg.SubnetMax = u32ToAddr(base+size), u32ToAddr(last)
	for _, b := range []struct {
		name string
		s    string
		dst  *netip.Addr
	}{{"SubnetMin", raw.SubnetMin, &cfg.SubnetMin}, {"SubnetMax", raw.SubnetMax, &cfg.SubnetMax}} {
		if b.s == "" {
			continue
		}
		a, err := netip.ParseAddr(b.s)
		if err != nil || !network.Contains(a) {
			return Config{}, fmt.Errorf("%s %q is not an address in %s", b.name, b.s, network)
		}
		// flanneld refuses a bound inside a subnet; rounding it instead
		// would make us hand out a subnet flanneld would not.
		if m := netip.PrefixFrom(a, cfg.SubnetLen).Masked().Addr(); m != a {
			return Config{}, fmt.Errorf("%s %s is not on a /%d boundary (%s is)", b.name, a, cfg.SubnetLen, m)
		}
		*b.dst = a
	}
	if addrToU32(cfg.SubnetMin) > addrToU32(cfg.SubnetMax) {
		return Config{}, fmt.Errorf("SubnetMin %s is above SubnetMax %s", cfg.SubnetMin, cfg.SubnetMax)
	}
	return cfg, nil
}

// InRange reports whether p is one of the subnets this config hands out.
func (c Config) InRange(p netip.Prefix) bool {
	if p.Bits() != c.SubnetLen || !c.Network.Contains(p.Addr()) {
		return false
	}
	a := addrToU32(p.Addr())
	return a >= addrToU32(c.SubnetMin) && a <= addrToU32(c.SubnetMax)
}

func addrToU32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func u32ToAddr(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
