package registry

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// ParseSubnetKey parses the last element of a lease key as flannel writes
// it: "10.244.1.0-24", or dual-stack "10.244.1.0-24&fd00:10:244:1::-64"
// (v6 is the zero Prefix when absent). Prefixes must be canonical, as
// DualStackKey writes them: another spelling of the same subnet would be
// another key.
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
	if addr.String() != addrS {
		return netip.Prefix{}, fmt.Errorf("%q is not written as flannel writes it (%s)", addrS, addr)
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

// SubnetKey is the key element flannel writes for one subnet: address,
// "-", length. An IPv4-only lease's key is SubnetKey of its subnet;
// DualStackKey joins it with the lease's IPv6 subnet.
func SubnetKey(p netip.Prefix) string {
	return fmt.Sprintf("%s-%d", p.Masked().Addr(), p.Bits())
}

// DualStackKey is the key element of a lease of v4 and v6, as flannel's
// MakeSubnetKey writes it: "10.244.1.0-24&fd00:10:244:1::-64" (the IPv6
// address in its canonical RFC 5952 form, as Go prints it), or SubnetKey(v4)
// when v6 is the zero Prefix.
func DualStackKey(v4, v6 netip.Prefix) string {
	if !v6.IsValid() {
		return SubnetKey(v4)
	}
	return SubnetKey(v4) + "&" + SubnetKey(v6)
}
