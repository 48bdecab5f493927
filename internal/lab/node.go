package lab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
	"github.com/hgw-ebpf/hgw-ebpf/internal/namedns"
	"github.com/hgw-ebpf/hgw-ebpf/internal/nldump"
	"github.com/hgw-ebpf/hgw-ebpf/internal/subnetfile"
)

// AddNode adds a node to the running lab (with its agent, but no pods) and
// returns once the node has its subnet.
func (l *Lab) AddNode(ctx context.Context) (Node, error) {
	return l.addNode(ctx, netip.Prefix{}, false)
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

// readSubnetEnv reads a node's subnet file (internal/subnetfile's reader, the
// agent's): complete once FLANNEL_MTU is there too.
func readSubnetEnv(path string) (subnetfile.Env, error) {
	env, err := subnetfile.Read(path)
	if err != nil {
		return subnetfile.Env{}, err
	}
	if env.MTU == 0 {
		return subnetfile.Env{}, fmt.Errorf("%s: FLANNEL_MTU missing", path)
	}
	return env, nil
}

// waitSubnetEnv waits until the agent has written a complete subnet file
// (in place of old, the one it found, if not nil: both flanneld and
// hgw-ebpf replace the file by a rename, and only once they are ready).
func waitSubnetEnv(ctx context.Context, path string, old os.FileInfo, timeout time.Duration) (subnetfile.Env, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		env, err := readSubnetEnv(path)
		if err == nil && old != nil {
			if fi, serr := os.Stat(path); serr == nil && os.SameFile(fi, old) && fi.ModTime().Equal(old.ModTime()) {
				err = errors.New("still the file the agent found")
			}
		}
		if err == nil {
			return env, nil
		}
		select {
		case <-ctx.Done():
			return subnetfile.Env{}, fmt.Errorf("wait for subnet file %s: %w (last: %v)", path, ctx.Err(), err)
		case <-tick.C:
		}
	}
}
