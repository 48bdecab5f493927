package agent

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/hgw-ebpf/hgw-ebpf/internal/nldump"
)

// underlay is the node's link towards its peers and what is on-link there.
type underlay struct {
	link     netlink.Link
	publicIP netip.Addr
	prefixes []netip.Prefix // the link's IPv4 networks: peers must be inside one
}

// resolveUnderlay finds the underlay device (default: the one of the default
// route, as flanneld) and the public IP (default: its first IPv4 address).
func resolveUnderlay(iface string, publicIP netip.Addr) (underlay, error) {
	var l netlink.Link
	var err error
	if iface == "" {
		l, err = defaultRouteLink()
	} else {
		l, err = netlink.LinkByName(iface)
		if err != nil {
			err = fmt.Errorf("underlay device --iface %q: %w", iface, err)
		}
	}
	if err != nil {
		return underlay{}, err
	}
	addrs, err := nldump.Retry(func() ([]netlink.Addr, error) { return netlink.AddrList(l, netlink.FAMILY_V4) })
	if err != nil {
		return underlay{}, fmt.Errorf("addresses of %s: %w", l.Attrs().Name, err)
	}
	u := underlay{link: l, publicIP: publicIP}
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP.To4())
		if !ok {
			continue
		}
		ones, _ := a.Mask.Size()
		u.prefixes = append(u.prefixes, netip.PrefixFrom(ip, ones).Masked())
		if !u.publicIP.IsValid() {
			u.publicIP = ip
		}
	}
	if !u.publicIP.IsValid() {
		return underlay{}, fmt.Errorf("underlay device %s has no IPv4 address: give --public-ip or --iface", l.Attrs().Name)
	}
	return u, nil
}

// PublicIP is the address `run` takes as this node's public IP: publicIP
// when given, else the first IPv4 address of iface (default: the default
// route's device). `cleanup --release-lease` finds the node's lease by it.
func PublicIP(iface string, publicIP netip.Addr) (netip.Addr, error) {
	ul, err := resolveUnderlay(iface, publicIP)
	return ul.publicIP, err
}

func defaultRouteLink() (netlink.Link, error) {
	routes, err := nldump.Retry(func() ([]netlink.Route, error) {
		return netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return nil, fmt.Errorf("list routes to find the default route's device: %w", err)
	}
	for _, r := range routes {
		if (r.Dst == nil || r.Dst.IP.IsUnspecified()) && r.LinkIndex > 0 {
			l, err := netlink.LinkByIndex(r.LinkIndex)
			if err != nil {
				return nil, fmt.Errorf("device of the default route (ifindex %d): %w", r.LinkIndex, err)
			}
			return l, nil
		}
	}
	return nil, errors.New("no default route to take the underlay device from: give --iface")
}

// ensureBridge returns the pod bridge, creating it (up, no address: the CNI
// bridge plugin adds the gateway address with the first pod) so that the
// programs can attach before any pod exists.
func ensureBridge(name string) (netlink.Link, bool, error) {
	l, err := netlink.LinkByName(name)
	if err == nil {
		return l, false, nil
	}
	var notFound netlink.LinkNotFoundError
	if !errors.As(err, &notFound) {
		return nil, false, fmt.Errorf("look up bridge %s: %w", name, err)
	}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
	if err := netlink.LinkAdd(br); err != nil && !errors.Is(err, unix.EEXIST) {
		return nil, false, fmt.Errorf("create bridge %s: %w", name, err)
	}
	l, err = netlink.LinkByName(name)
	if err != nil {
		return nil, false, fmt.Errorf("look up bridge %s: %w", name, err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return nil, false, fmt.Errorf("set bridge %s up: %w", name, err)
	}
	return l, true, nil
}
