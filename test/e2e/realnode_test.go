package e2e

// Nodes that carry a real node's netfilter state — kube-proxy's rules with
// NodePorts, flanneld's --ip-masq rules, a FORWARD policy of DROP, a
// NetworkPolicy engine — and the traffic every Kubernetes cluster carries:
// each case with 10 of 10 HTTP requests and a 3-second iperf3 transfer,
// and the counters saying which path carried it. One path per flow, both
// directions: the fast path only where both ends are pods.

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
	"github.com/hgw-ebpf/hgw-ebpf/internal/lab"
	"github.com/hgw-ebpf/hgw-ebpf/internal/lab/labtest"
)

// realNodeConfig is a lab whose nodes were moved over from flanneld
// --ip-masq (subnet file and flanneld's rules in place) and run hgw-ebpf
// --ip-masq, with kube-proxy's rules and the internet namespace.
func realNodeConfig(nodes, pods int) lab.Config {
	return lab.Config{Nodes: nodes, PodsPerNode: pods, Datapath: lab.DatapathEBPF,
		KubeProxy: true, FromFlanneld: true, IPMasq: true, Internet: true}
}

// movedBy is how many packets a node's program counted under reason
// between two counters() readings.
func movedBy(before, after map[string][]datapath.Counter, node, program, reason string) uint64 {
	return datapath.Packets(datapath.Delta(before[node], after[node]), program, reason)
}

// expectKernelPath checks that nothing node's programs saw between the two
// readings was redirected, and that at least min packets were left to the
// kernel by program under reason (if reason is not "").
func expectKernelPath(t *testing.T, before, after map[string][]datapath.Counter, node, program, reason string, min uint64) {
	t.Helper()
	moved := datapath.Delta(before[node], after[node])
	for _, prog := range []string{"from_pods", "from_underlay"} {
		if d := datapath.Redirected(moved, prog); d != 0 {
			t.Errorf("%s: %s redirected %d packets of a flow that must take the kernel path", node, prog, d)
		}
	}
	if reason == "" {
		return
	}
	if d := movedBy(before, after, node, program, reason); d < min {
		t.Errorf("%s: %s/%s moved by %d, want >= %d (counters now %+v)", node, program, reason, d, min, after[node])
	}
}

// httpURL is the URL of the lab's HTTP servers at addr.
func httpURL(addr string, port int) string { return fmt.Sprintf("http://%s:%d/", addr, port) }

// TestRealNodeTraffic: node -> remote pod and pod -> remote node, NodePort
// with both traffic policies, ClusterIP, pod -> internet and pod -> pod, on
// nodes carrying kube-proxy's and flanneld's --ip-masq rules.
func TestRealNodeTraffic(t *testing.T) {
	l := startLabConfig(t, realNodeConfig(2, 1))
	st := l.State()
	n1, n2 := st.Nodes[0], st.Nodes[1]
	p1, p2 := st.PodsOf(n1.Name)[0], st.PodsOf(n2.Name)[0] // p2 backs the services
	inet := st.Internet
	for _, ns := range []string{p1.Name, p2.Name, n2.Name, inet} {
		serveHTTP(t, st, ns, lab.BackendHTTPPort)
	}
	http, iperf := mustService(t, st, lab.SvcHTTP), mustService(t, st, lab.SvcIperf)
	localHTTP, localIperf := mustService(t, st, lab.SvcLocalHTTP), mustService(t, st, lab.SvcLocalIperf)
	const port = lab.BackendHTTPPort
	// At least three packets each way per HTTP connection.
	const minPackets = 3 * httpRequests
	type counts = map[string][]datapath.Counter

	for _, c := range []struct {
		name                string
		from, addr          string // the client's namespace, and where it connects
		httpPort, iperfPort int
		server              string // serves HTTP and iperf3 on the backend ports
		seenAs, why         string // the client's address as the server must see it, and why
		check               func(t *testing.T, before, after counts)
	}{{
		name: "node_to_remote_pod", from: n1.Name, addr: p2.IP, httpPort: port, iperfPort: lab.BackendIperfPort, server: p2.Name,
		seenAs: n1.IP, why: "a node's own address",
		check: func(t *testing.T, before, after counts) {
			// The node's packets meet conntrack on n2, and so do the pod's replies.
			expectKernelPath(t, before, after, n2.Name, "from_underlay", "src_not_pod", minPackets)
			expectKernelPath(t, before, after, n1.Name, "", "", 0)
		},
	}, {
		name: "pod_to_remote_node", from: p1.Name, addr: n2.IP, httpPort: port, iperfPort: lab.BackendIperfPort, server: n2.Name,
		seenAs: n1.IP, why: "flanneld's masquerade: the node is outside the cluster network",
		check: func(t *testing.T, before, after counts) {
			expectKernelPath(t, before, after, n1.Name, "from_pods", "no_route", minPackets)
			expectKernelPath(t, before, after, n2.Name, "", "", 0)
		},
	}, {
		name: "nodeport_cluster_backend_on_other_node", from: inet, addr: n1.IP, httpPort: http.NodePort, iperfPort: iperf.NodePort, server: p2.Name,
		seenAs: n1.IP, why: "n1 DNATs to p2 and SNATs to itself",
		check: func(t *testing.T, before, after counts) {
			expectKernelPath(t, before, after, n2.Name, "from_underlay", "src_not_pod", minPackets)
			expectKernelPath(t, before, after, n1.Name, "", "", 0)
		},
	}, {
		name: "nodeport_local", from: inet, addr: n2.IP, httpPort: localHTTP.NodePort, iperfPort: localIperf.NodePort, server: p2.Name,
		seenAs: lab.InternetIP.String(), why: "no SNAT with externalTrafficPolicy Local",
		check: func(t *testing.T, before, after counts) {
			expectKernelPath(t, before, after, n2.Name, "from_pods", "no_route", minPackets)
		},
	}, {
		name: "clusterip_backend_on_other_node", from: p1.Name, addr: http.ClusterIP.String(), httpPort: http.Port, iperfPort: iperf.Port, server: p2.Name,
		seenAs: p1.IP, why: "a ClusterIP only DNATs",
		check: func(t *testing.T, before, after counts) {
			// The replies are un-NATed by n1's conntrack: one per connection at least.
			if d := movedBy(before, after, n1.Name, "from_underlay", "ct_nat"); d < httpRequests {
				t.Errorf("%s: from_underlay ct_nat moved by %d, want >= %d", n1.Name, d, httpRequests)
			}
		},
	}, {
		name: "pod_to_internet", from: p1.Name, addr: lab.InternetIP.String(), httpPort: port, iperfPort: lab.BackendIperfPort, server: inet,
		seenAs: n1.IP, why: "only masqueraded requests get an answer: the internet routes no pod subnet",
		check: func(t *testing.T, before, after counts) {
			expectKernelPath(t, before, after, n1.Name, "from_pods", "no_route", minPackets)
		},
	}, {
		name: "pod_to_pod", from: p1.Name, addr: p2.IP, httpPort: port, iperfPort: lab.BackendIperfPort, server: p2.Name,
		seenAs: p1.IP, why: "pod-to-pod traffic keeps its source",
		check: func(t *testing.T, before, after counts) {
			// Requests one way, replies the other: both nodes forward both.
			for _, n := range []lab.Node{n1, n2} {
				if d := movedBy(before, after, n.Name, "from_pods", "redirect"); d < minPackets {
					t.Errorf("%s: from_pods redirected %d packets, want >= %d", n.Name, d, minPackets)
				}
				if d := movedBy(before, after, n.Name, "from_underlay", "redirect_peer"); d < minPackets {
					t.Errorf("%s: from_underlay delivered %d packets with redirect_peer, want >= %d", n.Name, d, minPackets)
				}
			}
		},
	}} {
		t.Run(c.name, func(t *testing.T) {
			before := labtest.AllCounters(t, st)
			if seen := expectHTTP(t, st, c.from, httpURL(c.addr, c.httpPort), c.server); seen != "" && seen != c.seenAs {
				t.Errorf("%s saw %s as %s, want %s (%s)", c.server, c.from, seen, c.seenAs, c.why)
			}
			expectIperf(t, st, c.server, lab.BackendIperfPort, c.from, c.addr, c.iperfPort)
			c.check(t, before, labtest.AllCounters(t, st))
		})
	}
}

func mustService(t *testing.T, st lab.State, name string) lab.ServicePort {
	t.Helper()
	s, ok := st.Service(name)
	if !ok {
		t.Fatalf("the lab has no service %s", name)
	}
	return s
}

// On nodes whose FORWARD policy is DROP (as Docker sets it), whatever the
// fast path leaves to the kernel must still be forwarded: flows on plain
// routes, a flow conntrack tracks across the switch to the fast path, and
// a packet over the underlay's MTU. The agent's FLANNEL-FWD accepts them.
func TestForwardPolicyDrop(t *testing.T) {
	cfg := lab.Config{Nodes: 2, PodsPerNode: 1, Datapath: lab.DatapathRoutes, KubeProxy: true, IPMasq: true, ForwardDrop: true}
	l := startLabConfig(t, cfg)
	ctx := testContext(t, 2*time.Minute)
	st := l.State()
	n1, n2 := st.Nodes[0], st.Nodes[1]
	p1, p2 := st.PodsOf(n1.Name)[0], st.PodsOf(n2.Name)[0]
	for _, n := range st.Nodes {
		save, err := st.IPTablesSave(n.Name)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(save, ":FORWARD DROP") {
			t.Fatalf("%s: FORWARD policy is not DROP; the test proves nothing", n.Name)
		}
		expectFlannelRules(t, st, n.Name, true, 1)
	}
	serveHTTP(t, st, p2.Name, lab.BackendHTTPPort)

	// Plain routes: every packet crosses FORWARD.
	expectHTTP(t, st, p1.Name, httpURL(p2.IP, lab.BackendHTTPPort), p2.Name)
	expectIperf(t, st, p2.Name, lab.BackendIperfPort, p1.Name, p2.IP, lab.BackendIperfPort)

	// A transfer conntrack tracks keeps the kernel path across the switch.
	wait := startIperf(t, st, p2.Name, lab.BackendIperfPort, p1.Name, p2.IP, lab.BackendIperfPort, 6)
	time.Sleep(2 * time.Second)
	if err := l.SwitchDatapath(ctx, lab.DatapathEBPF); err != nil {
		t.Fatal(err)
	}
	if err := waitAttached(ctx, st.Nodes...); err != nil {
		t.Fatal(err)
	}
	res, err := wait()
	if err != nil {
		t.Fatalf("transfer across the switch with FORWARD DROP: %v", err)
	}
	if s := res.stalls(); len(s) > 0 {
		t.Errorf("transfer across the switch stalled in intervals %v", s)
	}
	for _, n := range st.Nodes {
		if tracked(t, n) == 0 {
			t.Errorf("%s: the running transfer never counted as tracked", n.Name)
		}
	}

	// Over the MTU: p1's link takes jumbo frames, the underlay does not;
	// without DF the kernel fragments what from_pods leaves to it.
	setPodMTU(t, st, p1, 9000)
	before := labtest.AllCounters(t, st)
	out, err := st.Output(ctx, p1.Name, "ping", "-n", "-c", "5", "-i", "0.1", "-W", "2", "-M", "dont", "-s", "3000", p2.IP)
	if err != nil {
		t.Errorf("3 KB pings %s -> %s with FORWARD DROP: %v\n%s", p1.Name, p2.IP, err, out)
	}
	after := labtest.AllCounters(t, st)
	if d := movedBy(before, after, n1.Name, "from_pods", "too_big"); d < 5 {
		t.Errorf("%s: from_pods too_big moved by %d for 5 over-MTU pings", n1.Name, d)
	}
}

// setPodMTU sets the MTU of a pod's eth0 and of its veth in the node.
func setPodMTU(t *testing.T, st lab.State, pod lab.Pod, mtu int) {
	t.Helper()
	veth := portOf(t, st, pod).vethName
	for ns, dev := range map[string]string{pod.Name: "eth0", pod.Node: veth} {
		err := st.Do(ns, func() error {
			l, err := netlink.LinkByName(dev)
			if err != nil {
				return err
			}
			return netlink.LinkSetMTU(l, mtu)
		})
		if err != nil {
			t.Fatalf("MTU %d on %s in %s: %v", mtu, dev, ns, err)
		}
	}
}

// expectFlannelRules expects want copies of each of flanneld's rules
// (with --ip-masq when ipMasq) in a node, and no rule of any chain twice.
func expectFlannelRules(t *testing.T, st lab.State, node string, ipMasq bool, want int) {
	t.Helper()
	copies, err := st.FlannelRuleCopies(node, ipMasq)
	if err != nil {
		t.Fatal(err)
	}
	for r, n := range copies {
		if n != want {
			t.Errorf("%s: %d copies of %s %q, want %d", node, n, r.Table, r.Rule, want)
		}
	}
	save, err := st.IPTablesSave(node)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	table := ""
	for _, line := range strings.Split(save, "\n") {
		if strings.HasPrefix(line, "*") {
			table = line
		}
		if strings.HasPrefix(line, "-A ") {
			if seen[table+line] {
				t.Errorf("%s: rule twice in %s: %s", node, table, line)
			}
			seen[table+line] = true
		}
	}
}

// waitFlannelRules waits up to timeout for each of flanneld's rules to be
// in the node exactly once.
func waitFlannelRules(ctx context.Context, st lab.State, node string, ipMasq bool, timeout time.Duration) bool {
	_, ok := waitFor(ctx, timeout, func() bool {
		copies, err := st.FlannelRuleCopies(node, ipMasq)
		if err != nil {
			return false
		}
		for _, n := range copies {
			if n != 1 {
				return false
			}
		}
		return true
	})
	return ok
}

// An agent started with --ip-masq on a node where flanneld left its rules
// keeps exactly one copy of each, puts back what is removed, writes
// FLANNEL_IPMASQ=true, and masquerades through them; `hgw-ebpf cleanup`
// removes them all.
func TestFlanneldRulesTakenOver(t *testing.T) {
	l := startLabConfig(t, realNodeConfig(2, 1))
	ctx := testContext(t, 2*time.Minute)
	st := l.State()
	n1 := st.Nodes[0]
	p1 := st.PodsOf(n1.Name)[0]
	time.Sleep(2500 * time.Millisecond) // two resyncs of the agents
	for _, n := range st.Nodes {
		expectFlannelRules(t, st, n.Name, true, 1)
		if b, err := os.ReadFile(n.SubnetFile); err != nil || !strings.Contains(string(b), "FLANNEL_IPMASQ=true") {
			t.Errorf("%s: subnet file %q (%v), want FLANNEL_IPMASQ=true", n.Name, b, err)
		}
	}
	serveHTTP(t, st, st.Internet, lab.BackendHTTPPort)
	if seen := expectHTTP(t, st, p1.Name, httpURL(lab.InternetIP.String(), lab.BackendHTTPPort), st.Internet); seen != "" && seen != n1.IP {
		t.Errorf("the internet saw the pod as %s, want %s", seen, n1.IP)
	}
	expectIperf(t, st, st.Internet, lab.BackendIperfPort, p1.Name, lab.InternetIP.String(), lab.BackendIperfPort)

	// Removed rules come back, once.
	subnet := netip.MustParsePrefix(n1.Subnet)
	rules := lab.FlannelRules(netip.MustParsePrefix("10.244.0.0/16"), subnet, true)
	for _, r := range []lab.IPTablesRule{rules[0], rules[5], rules[len(rules)-3]} { // the POSTROUTING jump, a MASQUERADE, the FORWARD jump
		del := fmt.Sprintf("*%s\n-D %s\nCOMMIT\n", r.Table, strings.TrimPrefix(r.Rule, "-A "))
		if out, err := runStdin(ctx, st, n1.Name, del, "iptables-restore", "-w", "5", "--noflush"); err != nil {
			t.Fatalf("delete %q: %v\n%s", r.Rule, err, out)
		}
	}
	if !waitFlannelRules(ctx, st, n1.Name, true, 5*time.Second) {
		t.Errorf("%s: deleted rules not restored within 5 s", n1.Name)
	}
	expectFlannelRules(t, st, n1.Name, true, 1)

	// A restart finds its own rules: still one copy.
	if err := l.StopAgent(n1.Name); err != nil {
		t.Fatal(err)
	}
	if err := l.StartAgent(n1.Name); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2500 * time.Millisecond)
	expectFlannelRules(t, st, n1.Name, true, 1)

	// cleanup removes them all, chains included.
	if err := l.StopAgent(n1.Name); err != nil {
		t.Fatal(err)
	}
	if out, err := st.Output(ctx, n1.Name, filepath.Join(binDir, "hgw-ebpf"), "cleanup", "--bpffs-root", n1.PinRoot); err != nil {
		t.Fatalf("cleanup: %v\n%s", err, out)
	}
	expectFlannelRules(t, st, n1.Name, true, 0)
	save, err := st.IPTablesSave(n1.Name)
	if err != nil {
		t.Fatal(err)
	}
	for _, chain := range []string{lab.FlannelMasqChain, lab.FlannelFwdChain} {
		if strings.Contains(save, ":"+chain+" ") {
			t.Errorf("%s: chain %s left after cleanup", n1.Name, chain)
		}
	}
}

// runStdin runs argv in a lab namespace with input on its standard input.
func runStdin(ctx context.Context, st lab.State, ns, input string, argv ...string) (string, error) {
	var out lab.LimitedBuffer
	err := st.Exec(ctx, ns, argv, strings.NewReader(input), &out, &out)
	return out.String(), err
}
