package endpoints

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
	"github.com/hgw-ebpf/hgw-ebpf/internal/nldump"
)

// port is a veth enslaved to the bridge: the host end of a pod.
type port struct {
	name    string
	ifindex int
}

// view is what the kernel says about the bridge and its pods.
type view struct {
	ports      map[int]port // by ifindex
	desired    []datapath.Endpoint
	gatewayMAC net.HardwareAddr // the bridge's MAC
}

// kernelView reads the bridge, its veth ports, the MACs the bridge learned
// on each port (FDB) and the addresses the host resolved for them on the
// bridge (neighbour table, both families). A pod is known once it has sent
// a frame and the host has its address: the first ARP (IPv6: neighbour
// discovery) exchange with its gateway does both, per family.
func kernelView(h *netlink.Handle, bridge string) (view, error) {
	v := view{ports: map[int]port{}}
	br, err := h.LinkByName(bridge)
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) {
		return v, nil // no bridge yet: no pods
	}
	if err != nil {
		return v, fmt.Errorf("look up bridge %s: %w", bridge, err)
	}
	brIdx, gwMAC := br.Attrs().Index, br.Attrs().HardwareAddr
	v.gatewayMAC = gwMAC

	links, err := nldump.Retry(h.LinkList)
	if err != nil {
		return v, fmt.Errorf("list devices: %w", err)
	}
	for _, l := range links {
		if _, ok := l.(*netlink.Veth); ok && l.Attrs().MasterIndex == brIdx {
			v.ports[l.Attrs().Index] = port{name: l.Attrs().Name, ifindex: l.Attrs().Index}
		}
	}
	if len(v.ports) == 0 {
		return v, nil
	}

	subnets, err := bridgeSubnets(h, br)
	if err != nil {
		return v, err
	}
	fdb, err := nldump.Retry(func() ([]netlink.Neigh, error) { return h.NeighList(0, unix.AF_BRIDGE) })
	if err != nil {
		return v, fmt.Errorf("list FDB of %s: %w", bridge, err)
	}
	portOf := map[string]int{} // learned MAC -> port ifindex
	for _, f := range fdb {
		if _, ok := v.ports[f.LinkIndex]; !ok || f.State&unix.NUD_PERMANENT != 0 || len(f.HardwareAddr) != 6 {
			continue // not a pod port, or the port's own MAC
		}
		portOf[f.HardwareAddr.String()] = f.LinkIndex
	}
	var neighs []netlink.Neigh
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		ns, err := nldump.Retry(func() ([]netlink.Neigh, error) { return h.NeighList(brIdx, family) })
		if err != nil {
			return v, fmt.Errorf("list neighbours on %s: %w", bridge, err)
		}
		neighs = append(neighs, ns...)
	}
	for _, n := range neighs {
		if n.State&(unix.NUD_INCOMPLETE|unix.NUD_FAILED) != 0 || len(n.HardwareAddr) != 6 {
			continue
		}
		ip, ok := netip.AddrFromSlice(n.IP)
		if !ok || !inAny(subnets, ip.Unmap()) {
			continue
		}
		ip = ip.Unmap()
		idx, ok := portOf[n.HardwareAddr.String()]
		if !ok {
			continue
		}
		v.desired = append(v.desired, datapath.Endpoint{
			IP: ip, Ifindex: uint32(idx), PodMAC: n.HardwareAddr, GatewayMAC: gwMAC,
		})
	}
	return v, nil
}

// bridgeSubnets are the bridge's IPv4 and IPv6 networks: pods live there.
// Its link-local network (fe80::/64) is every device's: no pod lives there.
func bridgeSubnets(h *netlink.Handle, br netlink.Link) ([]netip.Prefix, error) {
	addrs, err := nldump.Retry(func() ([]netlink.Addr, error) { return h.AddrList(br, netlink.FAMILY_ALL) })
	if err != nil {
		return nil, fmt.Errorf("addresses of %s: %w", br.Attrs().Name, err)
	}
	var out []netip.Prefix
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if ip = ip.Unmap(); !ok || ip.IsLinkLocalUnicast() {
			continue
		}
		ones, _ := a.Mask.Size()
		out = append(out, netip.PrefixFrom(ip, ones).Masked())
	}
	return out, nil
}

func inAny(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a) && a != p.Addr() {
			return true
		}
	}
	return false
}
