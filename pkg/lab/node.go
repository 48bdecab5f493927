package lab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sys/unix"

	"github.com/hgw-ebpf/hgw-ebpf/pkg/datapath"
	"github.com/hgw-ebpf/hgw-ebpf/pkg/namedns"
	"github.com/hgw-ebpf/hgw-ebpf/pkg/nldump"
	"github.com/hgw-ebpf/hgw-ebpf/pkg/registry"
	"github.com/hgw-ebpf/hgw-ebpf/pkg/subnetfile"
)

// AddNode adds a node to the running lab (with its agent, but no pods) and
// returns once the node has its subnet.
func (l *Lab) AddNode(ctx context.Context) (Node, error) {
	return l.addNode(ctx, netip.Prefix{}, false)
}

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

// prepareNode gives a new node, before its agent starts, the netfilter
// state a real node has at that point (Config.ForwardDrop, FromFlanneld).
// It returns the subnet file it left for the agent, if any: the node is
// ready once the agent has written its own.
func (l *Lab) prepareNode(n Node) (os.FileInfo, error) {
	if l.cfg.ForwardDrop {
		if err := setForwardDrop(n.Name); err != nil {
			return nil, err
		}
	}
	if !l.cfg.FromFlanneld || n.Agent == "" {
		return nil, nil
	}
	if err := l.asFlanneldLeftIt(n); err != nil {
		return nil, err
	}
	fi, err := os.Stat(n.SubnetFile)
	if err != nil {
		return nil, fmt.Errorf("subnet file left for %s: %w", n.Name, err)
	}
	return fi, nil
}

// flannelLeaseTTL is flanneld's subnet lease TTL.
const flannelLeaseTTL = 24 * time.Hour

// addNode adds a node; with a valid flannelSubnet it is a flanneld-style
// node on that subnet, else it follows the lab's datapath. A v4only node
// of a dual-stack lab has no IPv6.
func (l *Lab) addNode(ctx context.Context, flannelSubnet netip.Prefix, v4only bool) (Node, error) {
	l.mu.Lock()
	k := l.state.NextIndex
	if k > MaxNodes {
		l.mu.Unlock()
		return Node{}, fmt.Errorf("no node address left (max %d nodes)", MaxNodes)
	}
	l.state.NextIndex++
	name := NodeName(l.cfg.Prefix, k)
	dir := filepath.Join(l.state.Dir, name)
	agent := ""
	if !flannelSubnet.IsValid() {
		agent = l.cfg.agentOf(k)
	}
	n := Node{
		Name: name, Index: k, IP: nodeIP(k).String(), Agent: agent,
		PinRoot:    filepath.Join(l.state.PinRoot, name),
		SubnetFile: filepath.Join(dir, "subnet.env"),
		AgentLog:   filepath.Join(dir, "agent.log"),
	}
	dualStack := l.cfg.DualStack && !v4only
	if dualStack {
		n.IP6 = nodeIP6(k).String()
	}
	l.state.Nodes = append(l.state.Nodes, n)
	err := l.state.save()
	l.mu.Unlock()
	if err != nil {
		return Node{}, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Node{}, fmt.Errorf("create node dir: %w", err)
	}
	if l.cfg.Datapath != DatapathStatic && !flannelSubnet.IsValid() {
		if err := datapath.PreparePinRoot(n.PinRoot); err != nil {
			return Node{}, fmt.Errorf("create pin dir: %w", err)
		}
	}

	l.log.Info("creating node", "node", name, "addr", n.IP)
	if err := createNode(l.state.Underlay, name, k, dualStack); err != nil {
		return Node{}, err
	}
	left, err := l.prepareNode(n)
	if err != nil {
		return Node{}, err
	}
	switch {
	case flannelSubnet.IsValid():
		if err := l.staticNode(ctx, n, flannelSubnet, false); err != nil {
			return Node{}, err
		}
	case l.cfg.Datapath == DatapathStatic:
		if err := l.staticNode(ctx, n, NodePodCIDR(k), true); err != nil {
			return Node{}, err
		}
	default:
		if l.cfg.Registry == RegistryKube {
			if err := l.createKubeNode(ctx, n); err != nil {
				return Node{}, err
			}
		}
		l.runAgent(n)
	}
	env, err := waitSubnetEnv(ctx, n.SubnetFile, left, l.cfg.ReadyTimeout)
	if err != nil {
		return Node{}, fmt.Errorf("node %s: %w (agent log: %s)", name, err, n.AgentLog)
	}
	if err := l.setCNINetwork(n); err != nil {
		return Node{}, err
	}
	n.Subnet = env.Subnet.Masked().String()
	if env.IPv6Subnet.IsValid() {
		n.Subnet6 = env.IPv6Subnet.Masked().String()
	}
	l.updateNode(name, func(st *Node) { st.Subnet, st.Subnet6 = n.Subnet, n.Subnet6 })
	l.log.Info("node ready", "node", name, "subnet", n.Subnet, "subnet6", n.Subnet6)
	return n, nil
}

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

// leaseKey is flannel's key for a subnet (and an IPv6 one, if valid):
// <prefix>/subnets/10.244.1.0-24 or 10.244.1.0-24&fd00:10:244:1::-64.
func leaseKey(prefix string, subnet, subnet6 netip.Prefix) string {
	return strings.TrimSuffix(prefix, "/") + "/subnets/" + registry.DualStackKey(subnet.Masked(), subnet6.Masked())
}

// PutLease writes the lease of subnet with a raw value (any JSON, valid or
// not: tests feed the agents bad input too), bound to an etcd lease of ttl,
// or a reservation when ttl is 0.
func (l *Lab) PutLease(ctx context.Context, subnet netip.Prefix, value string, ttl time.Duration) error {
	return l.putLease(ctx, subnet, netip.Prefix{}, value, ttl)
}

// PutDualStackLease is PutLease for a dual-stack lease of subnet and
// subnet6, under flanneld's key for both.
func (l *Lab) PutDualStackLease(ctx context.Context, subnet, subnet6 netip.Prefix, value string, ttl time.Duration) error {
	return l.putLease(ctx, subnet, subnet6, value, ttl)
}

func (l *Lab) putLease(ctx context.Context, subnet, subnet6 netip.Prefix, value string, ttl time.Duration) error {
	key := leaseKey(l.cfg.EtcdPrefix, subnet, subnet6)
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var opts []clientv3.OpOption
	if ttl > 0 {
		grant, err := l.client.Grant(ctx, int64(ttl/time.Second))
		if err != nil {
			return fmt.Errorf("grant etcd lease for %s: %w", key, err)
		}
		opts = append(opts, clientv3.WithLease(grant.ID))
	}
	if _, err := l.client.Put(ctx, key, value, opts...); err != nil {
		return fmt.Errorf("put lease %s: %w", key, err)
	}
	return nil
}

// DeleteLease removes the lease of a subnet, IPv4-only or dual-stack.
func (l *Lab) DeleteLease(ctx context.Context, subnet netip.Prefix) error {
	key := leaseKey(l.cfg.EtcdPrefix, subnet, netip.Prefix{})
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for _, del := range []struct {
		key  string
		opts []clientv3.OpOption
	}{{key, nil}, {key + "&", []clientv3.OpOption{clientv3.WithPrefix()}}} {
		if _, err := l.client.Delete(ctx, del.key, del.opts...); err != nil {
			return fmt.Errorf("delete lease %s: %w", key, err)
		}
	}
	return nil
}

// Leases lists the subnet leases in the lab's etcd.
func (l *Lab) Leases(ctx context.Context) ([]LeaseEntry, error) {
	return listLeases(ctx, l.client, l.cfg.EtcdPrefix)
}

// RemoveNode takes a node out the way an operator would with cleanup: its
// agent stops, its datapath state is removed, its lease is released, and
// its namespaces (the node's and its pods') are deleted.
func (l *Lab) RemoveNode(ctx context.Context, name string) error {
	n, ok := l.State().Node(name)
	if !ok {
		return fmt.Errorf("no node %s", name)
	}
	l.stopAgent(name, 5*time.Second)
	var errs []error
	if l.cfg.Datapath != DatapathStatic {
		errs = append(errs, runCleanup(ctx, l.agentBin, name, n.PinRoot))
	}
	if l.cfg.Registry == RegistryKube {
		errs = append(errs, l.deleteKubeNode(ctx, name))
	} else if n.Subnet != "" {
		errs = append(errs, l.DeleteLease(ctx, netip.MustParsePrefix(n.Subnet)))
		if l.cfg.Datapath == DatapathStatic {
			errs = append(errs, l.removeStaticRoutesTo(netip.MustParsePrefix(n.Subnet)))
		}
	}
	for _, p := range l.State().PodsOf(name) {
		errs = append(errs, namedns.Delete(p.Name))
	}
	errs = append(errs, removeUnderlayPort(l.State().Underlay, n.Index), namedns.Delete(name))
	if err := os.RemoveAll(n.PinRoot); err != nil {
		errs = append(errs, fmt.Errorf("remove %s: %w", n.PinRoot, err))
	}
	l.mu.Lock()
	delete(l.cni, name)
	nodes := l.state.Nodes[:0]
	for _, sn := range l.state.Nodes {
		if sn.Name != name {
			nodes = append(nodes, sn)
		}
	}
	l.state.Nodes = nodes
	pods := l.state.Pods[:0]
	for _, p := range l.state.Pods {
		if p.Node != name {
			pods = append(pods, p)
		}
	}
	l.state.Pods = pods
	errs = append(errs, l.state.save())
	l.mu.Unlock()
	return errors.Join(errs...)
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

// NodeRoutes lists a node's kernel routes into the cluster networks
// (IPv4 and IPv6), as subnet -> next hop.
func NodeRoutes(node string) (map[netip.Prefix]netip.Addr, error) {
	h, err := HandleAt(node)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	routes, err := nldump.Retry(func() ([]netlink.Route, error) { return h.RouteList(nil, netlink.FAMILY_ALL) })
	if err != nil {
		return nil, fmt.Errorf("list routes in %s: %w", node, err)
	}
	out := map[netip.Prefix]netip.Addr{}
	for _, r := range routes {
		if r.Dst == nil || r.Gw == nil {
			continue
		}
		ones, _ := r.Dst.Mask.Size()
		dst, ok1 := netip.AddrFromSlice(r.Dst.IP)
		gw, ok2 := netip.AddrFromSlice(r.Gw)
		if !ok1 || !ok2 {
			continue
		}
		p := netip.PrefixFrom(dst.Unmap(), ones)
		if clusterNetwork.Overlaps(p) || clusterNetwork6.Overlaps(p) {
			out[p] = gw.Unmap()
		}
	}
	return out, nil
}

// WaitRoutes waits until every node routes every other node's subnet via
// that node's address: the control plane has converged.
func (l *Lab) WaitRoutes(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		missing, err := missingRoutes(l.State().Nodes)
		if err == nil && missing == "" {
			return nil
		}
		select {
		case <-ctx.Done():
			if err != nil {
				return fmt.Errorf("wait for routes: %w", err)
			}
			return fmt.Errorf("wait for routes: %w: %s", ctx.Err(), missing)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// missingRoutes describes the first node lacking a route to a peer, or "".
func missingRoutes(nodes []Node) (string, error) {
	for _, n := range nodes {
		have, err := NodeRoutes(n.Name)
		if err != nil {
			return "", err
		}
		for _, peer := range nodes {
			if peer.Name == n.Name || peer.Subnet == "" {
				continue
			}
			for _, want := range [][2]string{{peer.Subnet, peer.IP}, {peer.Subnet6, peer.IP6}} {
				if want[0] == "" {
					continue // not dual-stack
				}
				if gw, ok := have[netip.MustParsePrefix(want[0])]; !ok || gw.String() != want[1] {
					return fmt.Sprintf("%s has no route %s via %s", n.Name, want[0], want[1]), nil
				}
			}
		}
	}
	return "", nil
}
