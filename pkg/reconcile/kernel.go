package reconcile

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/hgw-ebpf/hgw-ebpf/pkg/datapath"
)

// RouteProtocol tags the kernel routes the agent owns: `proto 104` in
// `ip route`. 104 is not assigned in the kernel's rtnetlink.h nor in
// iproute2's rt_protos (boot=3, static=4, bird=12, bgp=186, ...), so no other
// routing daemon uses it. Only routes with this tag are ever deleted; a
// flanneld route (proto boot) for a peer's subnet is replaced by ours, which
// is how a node migrates from flanneld without a gap.
const RouteProtocol netlink.RouteProtocol = 104

// maxDumpRetries bounds the re-reads of a route dump the kernel marked
// interrupted (the table changed while it was read).
const maxDumpRetries = 5

// ourRoutes lists the main table's IPv4 routes tagged RouteProtocol.
func ourRoutes(h *netlink.Handle) ([]netlink.Route, error) {
	filter := &netlink.Route{Table: unix.RT_TABLE_MAIN, Protocol: RouteProtocol}
	for attempt := 1; ; attempt++ {
		routes, err := h.RouteListFiltered(netlink.FAMILY_V4, filter, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
		if errors.Is(err, netlink.ErrDumpInterrupted) && attempt < maxDumpRetries {
			continue // partial result: read the whole table again
		}
		if err != nil {
			return nil, fmt.Errorf("list routes with protocol %d: %w", RouteProtocol, err)
		}
		return routes, nil
	}
}

// kernelRoute is the route Apply installs for one peer.
func kernelRoute(subnet netip.Prefix, nexthop netip.Addr, ifindex int) *netlink.Route {
	return &netlink.Route{
		LinkIndex: ifindex,
		Dst:       ipNet(subnet),
		Gw:        nexthop.AsSlice(),
		Protocol:  RouteProtocol,
		Table:     unix.RT_TABLE_MAIN,
	}
}

func ipNet(p netip.Prefix) *net.IPNet {
	p = p.Masked()
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// prefixOf converts an IPv4 route destination; false for nil (default
// route) or IPv6.
func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP.To4())
	if !ok {
		return netip.Prefix{}, false
	}
	ones, bits := n.Mask.Size()
	if bits != 32 {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(a, ones), true
}

// asRoute is a kernel route in the map's terms; false if it is not a
// gatewayed IPv4 route (not one Apply would install).
func asRoute(rt netlink.Route) (datapath.Route, bool) {
	p, ok := prefixOf(rt.Dst)
	gw, gok := netip.AddrFromSlice(rt.Gw.To4())
	if !ok || !gok || rt.LinkIndex <= 0 {
		return datapath.Route{}, false
	}
	return datapath.Route{Subnet: p, NextHop: gw, Ifindex: uint32(rt.LinkIndex)}, true
}

func routeString(n *net.IPNet) string {
	if n == nil {
		return "default"
	}
	return n.String()
}

// KernelRoutes lists the agent's kernel routes (protocol RouteProtocol) in
// the namespace of h, in the map's terms: `hgw-ebpf routes`.
func KernelRoutes(h *netlink.Handle) ([]datapath.Route, error) {
	routes, err := ourRoutes(h)
	if err != nil {
		return nil, err
	}
	out := make([]datapath.Route, 0, len(routes))
	for _, rt := range routes {
		if r, ok := asRoute(rt); ok {
			out = append(out, r)
		}
	}
	return out, nil
}

// RemoveKernelRoutes deletes every main-table route tagged RouteProtocol in
// the namespace of h, on any device: `hgw-ebpf cleanup` without an agent.
// It returns how many it deleted.
func RemoveKernelRoutes(h *netlink.Handle) (int, error) {
	routes, err := ourRoutes(h)
	if err != nil {
		return 0, err
	}
	var errs []error
	n := 0
	for _, rt := range routes {
		if err := h.RouteDel(&rt); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("delete route %s: %w", routeString(rt.Dst), err))
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}
