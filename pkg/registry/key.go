package registry

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// ParseSubnetKey parses the last element of a lease key as flannel writes
// it: "10.244.1.0-24", or dual-stack "10.244.1.0-24&fd00:10:244:1::-64"
// (v6 is the zero Prefix when absent). Prefixes must be canonical.
func ParseSubnetKey(s string) (v4, v6 netip.Prefix, err error) {
	v4s, v6s, dual := strings.Cut(s, "&")
	if v4, err = parseKeyPrefix(v4s, true); err != nil {
		return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("subnet key %q: %w", s, err)
	}
	if dual {
		if v6, err = parseKeyPrefix(v6s, false); err != nil {
			return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("subnet key %q: %w", s, err)
		}
	}
	return v4, v6, nil
}

func parseKeyPrefix(s string, want4 bool) (netip.Prefix, error) {
	addrS, bitsS, ok := strings.Cut(s, "-")
	if !ok {
		return netip.Prefix{}, fmt.Errorf("%q is not <address>-<length>", s)
	}
	addr, err := netip.ParseAddr(addrS)
	if err != nil || addr.Zone() != "" || addr.Is4In6() {
		return netip.Prefix{}, fmt.Errorf("%q is not an IP address", addrS)
	}
	if addr.Is4() != want4 {
		return netip.Prefix{}, fmt.Errorf("%s: wrong address family", addrS)
	}
	bits, err := strconv.Atoi(bitsS)
	if err != nil || bits < 0 || bits > addr.BitLen() || strconv.Itoa(bits) != bitsS {
		return netip.Prefix{}, fmt.Errorf("%q is not a prefix length", bitsS)
	}
	p := netip.PrefixFrom(addr, bits)
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("%s has host bits set", p)
	}
	return p, nil
}

// SubnetKey is the key element flannel uses for an IPv4 subnet.
func SubnetKey(p netip.Prefix) string {
	return fmt.Sprintf("%s-%d", p.Masked().Addr(), p.Bits())
}
