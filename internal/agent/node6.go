package agent

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/hgw-ebpf/hgw-ebpf/internal/nldump"
)

// underlay6 is the underlay's IPv6 side, for a dual-stack network: the
// node's public IPv6 (its IPv6 subnet's next hop on the other nodes) and
// the IPv6 prefixes on-link there.
type underlay6 struct {
	publicIP netip.Addr
	prefixes []netip.Prefix
	// why says how publicIP was chosen, and skipped names every other
	// address of the device with the reason it was not.
	why     string
	skipped []string
}

// resolveUnderlay6 reads the underlay's IPv6 side. The public IPv6 is
// given (--public-ipv6) or the device's best address for other nodes to
// route through for as long as the node runs: global scope (a ULA
// counts), never a temporary (privacy) address, which the kernel retires
// within hours, nor a deprecated one (past its preferred lifetime) or one
// that failed duplicate address detection. A permanent (configured)
// address comes before a dynamic one (SLAAC, DHCPv6), one that finished
// duplicate address detection before a tentative one, then the kernel's
// order.
func resolveUnderlay6(l netlink.Link, given netip.Addr) (underlay6, error) {
	addrs, err := nldump.Retry(func() ([]netlink.Addr, error) { return netlink.AddrList(l, netlink.FAMILY_V6) })
	if err != nil {
		return underlay6{}, fmt.Errorf("IPv6 addresses of %s: %w", l.Attrs().Name, err)
	}
	routes, err := nldump.Retry(func() ([]netlink.Route, error) {
		return netlink.RouteListFiltered(netlink.FAMILY_V6, &netlink.Route{LinkIndex: l.Attrs().Index, Table: unix.RT_TABLE_MAIN},
			netlink.RT_FILTER_OIF|netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return underlay6{}, fmt.Errorf("IPv6 routes of %s: %w", l.Attrs().Name, err)
	}
	u := underlay6{publicIP: given, prefixes: onLink6(addrs, routes)}
	if given.IsValid() {
		u.why = "given by --public-ipv6"
		return u, nil
	}
	u.publicIP, u.why, u.skipped = choosePublicIPv6(addrs)
	return u, nil
}

// choosePublicIPv6 picks the public IPv6 among a device's addresses (see
// resolveUnderlay6): the address, why it, and why not each of the others.
func choosePublicIPv6(addrs []netlink.Addr) (netip.Addr, string, []string) {
	type candidate struct {
		addr             netip.Addr
		dynamic, pending bool
	}
	var (
		cands   []candidate
		skipped []string
	)
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok || ip.Is4() || ip.Is4In6() {
			continue
		}
		if why := unusableIPv6(a, ip); why != "" {
			skipped = append(skipped, ip.String()+" ("+why+")")
			continue
		}
		cands = append(cands, candidate{addr: ip, dynamic: a.Flags&unix.IFA_F_PERMANENT == 0, pending: a.Flags&unix.IFA_F_TENTATIVE != 0})
	}
	if len(cands) == 0 {
		return netip.Addr{}, "", skipped
	}
	rank := func(c candidate) int {
		r := 0
		if c.dynamic {
			r += 2
		}
		if c.pending {
			r++
		}
		return r
	}
	best := slices.MinFunc(cands, func(a, b candidate) int { return rank(a) - rank(b) }) // the first of the best rank
	for _, c := range cands {
		if c != best {
			skipped = append(skipped, c.addr.String()+" (usable, but "+best.addr.String()+" comes first)")
		}
	}
	why := "a global address configured on the device"
	if best.dynamic {
		why = "a global address the device got dynamically (SLAAC or DHCPv6), not temporary"
	}
	if best.pending {
		why += ", still in duplicate address detection"
	}
	return best.addr, why, skipped
}

// unusableIPv6 says why an address cannot be the node's public IPv6, or
// "" if it can.
func unusableIPv6(a netlink.Addr, ip netip.Addr) string {
	switch {
	case a.Scope != unix.RT_SCOPE_UNIVERSE || ip.IsLinkLocalUnicast():
		return "not global"
	case a.Flags&unix.IFA_F_TEMPORARY != 0:
		// flannel issue #2293: a privacy address as the next hop of a
		// node's pods broke the cluster when it expired.
		return "temporary: a privacy address the kernel retires"
	case a.Flags&unix.IFA_F_DEPRECATED != 0 || a.PreferedLft == 0:
		return "deprecated: past its preferred lifetime"
	case a.Flags&unix.IFA_F_DADFAILED != 0:
		return "duplicate address detection failed"
	}
	return ""
}

// onLink6 is the IPv6 prefixes on-link on the device: its global
// addresses' networks (a /128, as DHCPv6 gives, is none) and its
// connected routes (a router advertisement's on-link prefix), without
// link-local and multicast ones, which no node's public IPv6 is in.
func onLink6(addrs []netlink.Addr, routes []netlink.Route) []netip.Prefix {
	var out []netip.Prefix
	add := func(p netip.Prefix) {
		p = p.Masked()
		if p.Bits() > 0 && p.Bits() < 128 && !p.Addr().IsLinkLocalUnicast() && !p.Addr().IsMulticast() && !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Is6() && !ip.Is4In6() && a.Flags&unix.IFA_F_DADFAILED == 0 {
			ones, _ := a.Mask.Size()
			add(netip.PrefixFrom(ip, ones))
		}
	}
	for _, r := range routes {
		if r.Dst == nil || r.Gw != nil || r.Type != unix.RTN_UNICAST || len(r.MultiPath) > 0 {
			continue
		}
		if ip, ok := netip.AddrFromSlice(r.Dst.IP); ok && ip.Is6() {
			ones, _ := r.Dst.Mask.Size()
			add(netip.PrefixFrom(ip, ones))
		}
	}
	return out
}

// noPublicIPv6 is the error of a dual-stack network on a node without a
// usable IPv6 address on its underlay.
func noPublicIPv6(dev string, u underlay6) error {
	msg := fmt.Sprintf("the network config enables IPv6, and %s has no address usable as this node's public IPv6", dev)
	if len(u.skipped) > 0 {
		msg += " (" + strings.Join(u.skipped, "; ") + ")"
	}
	return errors.New(msg + ": add a global, non-temporary IPv6 address to it or give --public-ipv6")
}
