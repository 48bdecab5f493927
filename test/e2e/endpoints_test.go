package e2e

import (
	"context"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
	"github.com/hgw-ebpf/hgw-ebpf/internal/lab"
	"github.com/hgw-ebpf/hgw-ebpf/internal/lab/labtest"
)

// endpointsOf reads a node's pinned endpoints map, by pod IP.
func endpointsOf(t *testing.T, n lab.Node) map[netip.Addr]datapath.Endpoint {
	t.Helper()
	maps, err := datapath.OpenPinned(n.PinRoot)
	if err != nil {
		t.Fatalf("open pins of %s: %v", n.Name, err)
	}
	defer maps.Close()
	eps, err := maps.Endpoints().List()
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[netip.Addr]datapath.Endpoint, len(eps))
	for _, ep := range eps {
		out[ep.IP] = ep
	}
	return out
}

// podPort is what the kernel says about a pod: its host-side veth in the
// node (the cni0 port whose peer lives in the pod) and its own MAC.
type podPort struct {
	vethIndex int
	vethName  string
	podMAC    string
	gwMAC     string
}

func portOf(t *testing.T, st lab.State, pod lab.Pod) podPort {
	t.Helper()
	var p podPort
	var peerIndex int
	err := st.Do(pod.Name, func() error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		p.podMAC = l.Attrs().HardwareAddr.String()
		peerIndex = l.Attrs().ParentIndex // a veth's peer ifindex, in the node
		return nil
	})
	if err != nil {
		t.Fatalf("pod %s: %v", pod.Name, err)
	}
	err = st.Do(pod.Node, func() error {
		l, err := netlink.LinkByIndex(peerIndex)
		if err != nil {
			return err
		}
		br, err := netlink.LinkByName("cni0")
		if err != nil {
			return err
		}
		p.vethIndex, p.vethName, p.gwMAC = l.Attrs().Index, l.Attrs().Name, br.Attrs().HardwareAddr.String()
		return nil
	})
	if err != nil {
		t.Fatalf("host veth of pod %s on %s: %v", pod.Name, pod.Node, err)
	}
	return p
}

// endpointRight reports whether the node's map has the pod's entry exactly
// as the kernel describes the pod.
func endpointRight(t *testing.T, st lab.State, pod lab.Pod) bool {
	t.Helper()
	n, _ := st.Node(pod.Node)
	ep, ok := endpointsOf(t, n)[netip.MustParseAddr(pod.IP)]
	p := portOf(t, st, pod)
	return ok && int(ep.Ifindex) == p.vethIndex && ep.PodMAC.String() == p.podMAC && ep.GatewayMAC.String() == p.gwMAC
}

// fromPodsOn reports whether from_pods is attached to dev in node.
func fromPodsOn(t *testing.T, st lab.State, node, dev string) bool {
	t.Helper()
	for _, p := range mustAttachedTC(t, st, node) {
		if p.Dev == dev && p.Name == "from_pods" && p.Kind == "tcx/ingress" {
			return true
		}
	}
	return false
}

// counterOf is a node's packets of one program and reason, all families.
func counterOf(t *testing.T, n lab.Node, program, reason string) uint64 {
	t.Helper()
	return datapath.Packets(labtest.Counters(t, n), program, reason)
}

// Pods attached through bridge + hgw-cni are in their node's map at once,
// with from_pods on their veths; CHECK agrees; traffic between nodes is
// delivered by bpf_redirect_peer; CNI DEL takes the entry and the
// attachment away.
func TestEndpointsThroughCNIChain(t *testing.T) {
	const nodes, pods = 2, 2
	l, ctx := startLabFor(t, time.Minute, nodes, pods, lab.DatapathEBPF)
	st := l.State()

	for _, pod := range st.Pods {
		if !endpointRight(t, st, pod) {
			t.Errorf("pod %s (%s) not in %s's endpoints map as the kernel describes it: %+v",
				pod.Name, pod.IP, pod.Node, endpointsOf(t, mustNode(t, st, pod.Node)))
		}
		if p := portOf(t, st, pod); !fromPodsOn(t, st, pod.Node, p.vethName) {
			t.Errorf("from_pods not attached to %s (pod %s)", p.vethName, pod.Name)
		}
		if err := l.CheckPod(ctx, pod.Name); err != nil {
			t.Errorf("CNI CHECK: %v", err)
		}
	}

	pingAllByPeerDelivery(t, ctx, st, pods)

	// CNI DEL.
	gone := st.Pods[len(st.Pods)-1]
	p := portOf(t, st, gone)
	node := mustNode(t, st, gone.Node)
	if err := l.RemovePod(ctx, gone.Name); err != nil {
		t.Fatal(err)
	}
	// hgw-cni's DEL runs before bridge's (a chain is deleted in reverse),
	// so for a moment the veth outlives the entry and the agent may learn
	// the pod again from the kernel; it drops the entry once the veth is
	// gone. What must hold is that nothing of the pod stays.
	pin := filepath.Join(node.PinRoot, "links", "from_pods@"+p.vethName)
	if _, ok := waitFor(ctx, 5*time.Second, func() bool {
		_, inMap := endpointsOf(t, node)[netip.MustParseAddr(gone.IP)]
		_, err := os.Stat(pin)
		return !inMap && os.IsNotExist(err)
	}); !ok {
		t.Errorf("endpoint %s or the link pin of %s still there 5 s after CNI DEL: %+v", gone.IP, p.vethName, endpointsOf(t, node))
	}
	// The other pods stay, and still talk.
	st = l.State()
	for _, pod := range st.Pods {
		if !endpointRight(t, st, pod) {
			t.Errorf("pod %s lost its endpoint when %s was deleted", pod.Name, gone.Name)
		}
	}
	pingAll(t, ctx, st)
}

// The agent restores an entry deleted by hand and removes one whose veth
// is gone, with its attachment.
func TestAgentRepairsEndpoints(t *testing.T) {
	l, ctx := startLabFor(t, time.Minute, 2, 2, lab.DatapathEBPF)
	st := l.State()
	pingAll(t, ctx, st) // the node learns the pods' addresses (ARP) and MACs (FDB)
	pod := st.Pods[0]
	node := mustNode(t, st, pod.Node)
	maps, err := datapath.OpenPinned(node.PinRoot)
	if err != nil {
		t.Fatal(err)
	}
	defer maps.Close()

	// Deleted by hand: back within a resync (1 s in tests).
	if err := maps.Endpoints().Delete(netip.MustParseAddr(pod.IP)); err != nil {
		t.Fatal(err)
	}
	if _, ok := waitFor(ctx, 5*time.Second, func() bool { return endpointRight(t, st, pod) }); !ok {
		t.Fatalf("endpoint %s not restored by the agent", pod.IP)
	}

	// An entry pointing at no device at all.
	ghost := netip.MustParseAddr(node.Subnet[:len(node.Subnet)-len("0/24")] + "200")
	if err := maps.Endpoints().Put(datapath.Endpoint{IP: ghost, Ifindex: 99999,
		PodMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, GatewayMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}}); err != nil {
		t.Fatal(err)
	}
	// A pod whose veth disappears without a CNI DEL.
	victim := st.Pods[1]
	if victim.Node != pod.Node {
		t.Fatalf("lab layout changed: %s and %s on different nodes", pod.Name, victim.Name)
	}
	vp := portOf(t, st, victim)
	if err := st.Do(victim.Node, func() error { return netlink.LinkDel(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: vp.vethName}}) }); err != nil {
		t.Fatalf("delete veth %s: %v", vp.vethName, err)
	}
	pin := filepath.Join(node.PinRoot, "links", "from_pods@"+vp.vethName)
	_, ok := waitFor(ctx, 5*time.Second, func() bool {
		eps := endpointsOf(t, node)
		_, g := eps[ghost]
		_, v := eps[netip.MustParseAddr(victim.IP)]
		_, perr := os.Stat(pin)
		return !g && !v && os.IsNotExist(perr)
	})
	if !ok {
		t.Errorf("stale entries (%s, %s) or the link pin %s not removed: %+v", ghost, victim.IP, pin, endpointsOf(t, node))
	}
	if !endpointRight(t, st, pod) {
		t.Errorf("the live pod %s lost its entry", pod.Name)
	}
}

// With the plain bridge conflist (no hgw-cni) the agent learns the pods
// from the kernel once they have talked, attaches from_pods to their veths,
// and traffic then takes redirect_peer.
func TestAgentFillsEndpointsWithoutThePlugin(t *testing.T) {
	const nodes, pods = 2, 2
	l := startLabConfig(t, lab.Config{Nodes: nodes, PodsPerNode: pods, Datapath: lab.DatapathEBPF, PlainBridgeCNI: true})
	ctx := testContext(t, time.Minute)
	st := l.State()
	// No plugin wrote anything, and the pods have not talked yet.
	for _, n := range st.Nodes {
		if eps := endpointsOf(t, n); len(eps) != 0 {
			t.Errorf("%s: endpoints before any traffic without the plugin: %+v", n.Name, eps)
		}
	}
	pingAll(t, ctx, st)
	for _, pod := range st.Pods {
		if _, ok := waitFor(ctx, 5*time.Second, func() bool { return endpointRight(t, st, pod) }); !ok {
			t.Errorf("agent did not learn pod %s (%s): %+v", pod.Name, pod.IP, endpointsOf(t, mustNode(t, st, pod.Node)))
			continue
		}
		p := portOf(t, st, pod)
		if _, ok := waitFor(ctx, 5*time.Second, func() bool { return fromPodsOn(t, st, pod.Node, p.vethName) }); !ok {
			t.Errorf("agent did not attach from_pods to %s (pod %s)", p.vethName, pod.Name)
		}
	}
	pingAllByPeerDelivery(t, ctx, st, pods)
}

// pingAllByPeerDelivery pings every pod from every other and expects each
// node's from_underlay to deliver its share with redirect_peer: each
// local pod gets a request from and a reply to each remote pod.
func pingAllByPeerDelivery(t *testing.T, ctx context.Context, st lab.State, podsPerNode int) {
	t.Helper()
	before := map[string]uint64{}
	for _, n := range st.Nodes {
		before[n.Name] = counterOf(t, n, "from_underlay", "redirect_peer")
	}
	pingAll(t, ctx, st)
	want := uint64(2 * podsPerNode * (len(st.Nodes) - 1) * podsPerNode)
	for _, n := range st.Nodes {
		if got := counterOf(t, n, "from_underlay", "redirect_peer") - before[n.Name]; got < want {
			t.Errorf("%s: from_underlay delivered %d packets with redirect_peer, want >= %d", n.Name, got, want)
		}
	}
}

func mustNode(t *testing.T, st lab.State, name string) lab.Node {
	t.Helper()
	n, ok := st.Node(name)
	if !ok {
		t.Fatalf("no node %s", name)
	}
	return n
}

// podWhileAgentDown stops node 2's agent, adds a pod there through the
// lab's CNI configuration and checks that a pod on node 1 reaches it at once,
// with the agent still down; it returns the lab, the new pod and node 2.
func podWhileAgentDown(t *testing.T, ctx context.Context, cfg lab.Config) (*lab.Lab, lab.Pod, lab.Node) {
	t.Helper()
	l := startLabConfig(t, cfg)
	st := l.State()
	node := st.Nodes[1]
	if err := l.StopAgent(node.Name); err != nil {
		t.Fatal(err)
	}
	pod, err := l.AddPod(ctx, node.Name)
	if err != nil {
		t.Fatalf("add pod while the agent of %s is down: %v", node.Name, err)
	}
	st = l.State()
	if n := mustNode(t, st, node.Name); n.AgentPID != 0 {
		t.Fatalf("agent of %s runs again (pid %d); the test needs it down", node.Name, n.AgentPID)
	}
	// At once: no retries beyond ping's own first answer wait.
	client := st.PodsOf(st.Nodes[0].Name)[0]
	if out, err := pings(ctx, st, client.Name, pod.IP, 3, 50*time.Millisecond); err != nil {
		t.Fatalf("%s -> new pod %s (%s) while the agent is down: %v\n%s", client.Name, pod.Name, pod.IP, err, out)
	}
	return l, pod, mustNode(t, st, node.Name)
}

// A pod created while its node's agent is down is served by the plugin
// alone: its endpoint and veth attachment exist, and traffic to it is
// delivered with redirect_peer from its first packet.
func TestPodAddedWhileAgentDownUsesThePlugin(t *testing.T) {
	ctx := testContext(t, time.Minute)
	cfg := lab.Config{Nodes: 2, PodsPerNode: 1, Datapath: lab.DatapathEBPF}
	l, pod, node := podWhileAgentDown(t, ctx, cfg)
	st := l.State()
	if !endpointRight(t, st, pod) {
		t.Errorf("the plugin did not write %s (%s) while the agent was down: %+v", pod.Name, pod.IP, endpointsOf(t, node))
	}
	if p := portOf(t, st, pod); !fromPodsOn(t, st, node.Name, p.vethName) {
		t.Errorf("the plugin did not attach from_pods to %s", p.vethName)
	}
	expectPeerDelivery(t, ctx, st, node, pod, "with the agent down")
	// The agent, back, keeps what the plugin wrote.
	if err := l.StartAgent(node.Name); err != nil {
		t.Fatal(err)
	}
	if _, ok := waitFor(ctx, 10*time.Second, func() bool { n, _ := l.State().Node(node.Name); return n.AgentPID != 0 }); !ok {
		t.Fatal("agent did not start again")
	}
	time.Sleep(2 * time.Second) // a resync (1 s in tests) has run
	if !endpointRight(t, l.State(), pod) {
		t.Errorf("the restarted agent dropped %s's endpoint", pod.Name)
	}
}

// Without the plugin, a pod created while the agent is down is reachable at
// once over the bridge (from_underlay's redirect_neigh path), and the
// agent, back, learns it and moves it to redirect_peer.
func TestPodAddedWhileAgentDownWithoutThePlugin(t *testing.T) {
	ctx := testContext(t, time.Minute)
	cfg := lab.Config{Nodes: 2, PodsPerNode: 1, Datapath: lab.DatapathEBPF, PlainBridgeCNI: true}
	l, pod, node := podWhileAgentDown(t, ctx, cfg)
	if eps := endpointsOf(t, node); len(eps) != 0 {
		t.Errorf("%s: endpoints with no plugin and no agent: %+v", node.Name, eps)
	}
	if err := l.StartAgent(node.Name); err != nil {
		t.Fatal(err)
	}
	st := l.State()
	if _, ok := waitFor(ctx, 10*time.Second, func() bool { return endpointRight(t, st, pod) }); !ok {
		t.Fatalf("the agent did not learn %s (%s): %+v", pod.Name, pod.IP, endpointsOf(t, node))
	}
	p := portOf(t, st, pod)
	if _, ok := waitFor(ctx, 5*time.Second, func() bool { return fromPodsOn(t, st, node.Name, p.vethName) }); !ok {
		t.Errorf("the agent did not attach from_pods to %s", p.vethName)
	}
	expectPeerDelivery(t, ctx, st, node, pod, "after the agent learnt the pod")
}

// expectPeerDelivery pings pod on node from the first node's pod, five
// times, and expects each request delivered by redirect_peer.
func expectPeerDelivery(t *testing.T, ctx context.Context, st lab.State, node lab.Node, pod lab.Pod, when string) {
	t.Helper()
	before := counterOf(t, node, "from_underlay", "redirect_peer")
	client := st.PodsOf(st.Nodes[0].Name)[0]
	if out, err := pings(ctx, st, client.Name, pod.IP, 5, 50*time.Millisecond); err != nil {
		t.Fatalf("ping %s %s: %v\n%s", pod.IP, when, err, out)
	}
	if got := counterOf(t, node, "from_underlay", "redirect_peer") - before; got < 5 {
		t.Errorf("%s: redirect_peer moved by %d for 5 echo requests %s", node.Name, got, when)
	}
}
