package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/hgw-ebpf/hgw-ebpf/internal/subnetfile"
)

// The lab stands in for the agent where no agent runs: on every node of a
// DatapathStatic lab (subnet file, a reservation, routes both ways), and on
// a node the lab sets up as flanneld's host-gw backend leaves one
// (AddFlannelNode: flanneld's lease bytes, its TTL, its routes), whose
// peers' agents must route to it on their own.

// AddFlannelNode adds a node that runs no agent of ours, set up the way
// flanneld's host-gw backend leaves a node: its lease for subnet in
// flanneld's exact JSON, bound to an etcd lease with flanneld's 24 h TTL,
// its subnet file, and kernel routes to every node that had a lease when
// it was added. The other nodes' agents must route to it on their own.
func (l *Lab) AddFlannelNode(ctx context.Context, subnet netip.Prefix) (Node, error) {
	if l.cfg.Registry != RegistryEtcd {
		return Node{}, fmt.Errorf("a flanneld-style node writes an etcd lease: not in a %s lab", l.cfg.Registry)
	}
	if !subnet.IsValid() || !clusterNetwork.Contains(subnet.Addr()) || subnet.Bits() != 24 {
		return Node{}, fmt.Errorf("flannel node subnet %s: want a /24 inside %s", subnet, clusterNetwork)
	}
	return l.addNode(ctx, subnet.Masked(), false)
}

// AddFlannelNodeIPv4 is AddFlannelNode for a node without IPv6 in a
// dual-stack lab: no IPv6 address, an IPv4-only lease and subnet file, as
// a flanneld node without IPv6 leaves them, and IPv4 routes only.
func (l *Lab) AddFlannelNodeIPv4(ctx context.Context, subnet netip.Prefix) (Node, error) {
	if !l.cfg.DualStack {
		return Node{}, errors.New("an IPv4-only node is the exception in a dual-stack lab: this lab is IPv4 only")
	}
	if !subnet.IsValid() || !clusterNetwork.Contains(subnet.Addr()) || subnet.Bits() != 24 {
		return Node{}, fmt.Errorf("flannel node subnet %s: want a /24 inside %s", subnet, clusterNetwork)
	}
	return l.addNode(ctx, subnet.Masked(), true)
}

// flannelLeaseTTL is flanneld's subnet lease TTL.
const flannelLeaseTTL = 24 * time.Hour

// subnet6Of is the IPv6 subnet the lab gives the node it gives subnet
// (10.244.k.0/24): fd00:10:244:<k in hex>::/64, inside the /56.
func subnet6Of(subnet netip.Prefix) netip.Prefix {
	return netip.MustParsePrefix(fmt.Sprintf("fd00:10:244:%x::/64", subnet.Addr().As4()[2]))
}

// subnetEnv is the subnet file of a node on subnet (and its IPv6 subnet
// with dualStack), as flanneld writes it.
func subnetEnv(subnet netip.Prefix, dualStack bool) subnetfile.Env {
	env := subnetfile.Env{Network: clusterNetwork, Subnet: subnet, MTU: 1500}
	if dualStack {
		env.IPv6Network, env.IPv6Subnet = clusterNetwork6, subnet6Of(subnet)
	}
	return env
}

// staticNode stands in for an agent: the node gets subnet, a subnet file,
// a lease and kernel routes to every node with a lease. With fromPeers
// (datapath "static": nobody else will) the lease is a reservation and the
// lab adds the routes towards it too; without, it is a flanneld-style lease
// with flanneld's TTL that the peers' agents must pick up.
func (l *Lab) staticNode(ctx context.Context, n Node, subnet netip.Prefix, fromPeers bool) error {
	env := subnetEnv(subnet, n.IP6 != "")
	if err := writeSubnetEnv(n.SubnetFile, env); err != nil {
		return err
	}
	// Byte for byte what flanneld v0.28's host-gw backend writes (seen in
	// the lab's etcd with the real flanneld: its LeaseAttrs with a null
	// PublicIPv6 and empty BackendData omitted), not our own encoder's idea
	// of it.
	attrs := fmt.Sprintf(`{"PublicIP":%q,"PublicIPv6":null,"BackendType":"host-gw"}`, n.IP)
	if env.IPv6Subnet.IsValid() {
		attrs = fmt.Sprintf(`{"PublicIP":%q,"PublicIPv6":%q,"BackendType":"host-gw"}`, n.IP, n.IP6)
	}
	ttl := time.Duration(0)
	if !fromPeers {
		ttl = flannelLeaseTTL
	}
	if err := l.putLease(ctx, subnet, env.IPv6Subnet, attrs, ttl); err != nil {
		return err
	}
	n.Subnet = subnet.String()
	if env.IPv6Subnet.IsValid() {
		n.Subnet6 = env.IPv6Subnet.String()
	}
	for _, other := range l.State().Nodes {
		if other.Name == n.Name || other.Subnet == "" {
			continue
		}
		if err := addStaticRoutes(n.Name, other, n.IP6 != ""); err != nil {
			return err
		}
		if !fromPeers {
			continue
		}
		if err := addStaticRoutes(other.Name, n, other.IP6 != ""); err != nil {
			return err
		}
	}
	return nil
}

// addStaticRoutes routes peer's subnets in node as flanneld does: its
// subnet via its IP and, if both have IPv6 (ipv6: node has), its IPv6
// subnet via its IPv6.
func addStaticRoutes(node string, peer Node, ipv6 bool) error {
	if err := addStaticRoute(node, netip.MustParsePrefix(peer.Subnet), netip.MustParseAddr(peer.IP)); err != nil {
		return err
	}
	if !ipv6 || peer.Subnet6 == "" || peer.IP6 == "" {
		return nil
	}
	return addStaticRoute(node, netip.MustParsePrefix(peer.Subnet6), netip.MustParseAddr(peer.IP6))
}

func (l *Lab) removeStaticRoutesTo(subnet netip.Prefix) error {
	var errs []error
	for _, n := range l.State().Nodes {
		h, err := HandleAt(n.Name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		err = h.RouteDel(&netlink.Route{Dst: prefixIPNet(subnet.Masked())})
		if err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("delete route %s in %s: %w", subnet, n.Name, err))
		}
		h.Close()
	}
	return errors.Join(errs...)
}

// addStaticRoute installs `<subnet> via <nexthop> dev eth0` (either
// family) in a node: the lab's own stand-in for the agent (datapath
// "static"), and flanneld's routes on a node it left.
func addStaticRoute(node string, subnet netip.Prefix, nexthop netip.Addr) error {
	h, err := HandleAt(node)
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(nodeUplink)
	if err != nil {
		return fmt.Errorf("find %s in %s: %w", nodeUplink, node, err)
	}
	r := &netlink.Route{
		LinkIndex: l.Attrs().Index,
		Dst:       prefixIPNet(subnet),
		Gw:        net.IP(nexthop.AsSlice()),
	}
	if err := h.RouteReplace(r); err != nil {
		return fmt.Errorf("route %s via %s in %s: %w", subnet, nexthop, node, err)
	}
	return nil
}

// writeSubnetEnv writes a subnet file byte for byte as flanneld does
// (where the lab stands in for an agent, or for what flanneld left
// behind), with flanneld's mode.
func writeSubnetEnv(path string, env subnetfile.Env) error {
	b, err := subnetfile.Format(env)
	if err == nil {
		err = os.WriteFile(path, b, 0o644)
	}
	if err != nil {
		return fmt.Errorf("write subnet file: %w", err)
	}
	return nil
}
