package e2e

// hgw-ebpf next to the real flanneld and the real flannel CNI plugin
// (../shared/tools), and nodes moving between the two under traffic.

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
	"github.com/hgw-ebpf/hgw-ebpf/internal/lab"
	"github.com/hgw-ebpf/hgw-ebpf/internal/lab/labtest"
	"github.com/hgw-ebpf/hgw-ebpf/internal/testutil"
)

// mixedIPMasq: the mixed cluster runs every agent with --ip-masq, as the
// standard kube-flannel manifest runs flanneld.
const mixedIPMasq = true

// flannelTools finds the real flanneld and flannel CNI plugin. Outside CI a
// machine without them skips, saying so; in CI their absence fails.
func flannelTools(t *testing.T) (flanneld, cniDir string) {
	t.Helper()
	flanneld, cniDir, err := lab.FlannelTools(testutil.RepoRoot())
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("the real flannel binaries are needed in CI: %v", err)
		}
		t.Skipf("the real flannel binaries are not here, so hgw-ebpf is not tested next to them: %v", err)
	}
	return flanneld, cniDir
}

// expectAllPairs expects HTTP to work between every two pods, and from
// every node to every pod of another node (each pod serves HTTP).
func expectAllPairs(t *testing.T, st lab.State) {
	t.Helper()
	for _, a := range st.Pods {
		for _, b := range st.Pods {
			if a.Name != b.Name {
				expectHTTP(t, st, a.Name, httpURL(b.IP, lab.BackendHTTPPort), b.Name)
			}
		}
	}
	for _, n := range st.Nodes {
		for _, p := range st.Pods {
			if p.Node != n.Name {
				expectHTTP(t, st, n.Name, httpURL(p.IP, lab.BackendHTTPPort), p.Name)
			}
		}
	}
}

// moveUnderTraffic moves node to agent while a 10-second TCP transfer runs
// from one pod to another and a third pings every 20 ms; it expects the
// transfer to finish and returns the pings lost.
func moveUnderTraffic(t *testing.T, ctx context.Context, l *lab.Lab, node, agent string, from, to, pinger lab.Pod, pingTo string) int {
	t.Helper()
	st := l.State()
	const pings, every = 500, 20 * time.Millisecond // 10 s
	waitPing := startPinger(t, st, pinger.Name, pingTo, pings, every)
	waitIperf := startIperf(t, st, to.Name, lab.BackendIperfPort, from.Name, to.IP, lab.BackendIperfPort, 10)
	time.Sleep(2 * time.Second)
	started := time.Now()
	if err := l.MoveAgent(ctx, node, agent); err != nil {
		t.Fatalf("move %s to %s: %v", node, agent, err)
	}
	t.Logf("%s moved to %s in %v", node, agent, time.Since(started).Round(time.Millisecond))
	res, err := waitIperf()
	if err != nil {
		t.Errorf("TCP transfer %s -> %s across the move of %s to %s: %v", from.Name, to.Name, node, agent, err)
	} else if s := res.stalls(); len(s) > 0 {
		t.Logf("TCP transfer across the move of %s to %s moved no byte in half-second intervals %v", node, agent, s)
	}
	sent, got := waitPing()
	t.Logf("move of %s to %s: %d of %d pings every %v lost", node, agent, sent-got, sent, every)
	if sent == 0 {
		t.Errorf("no ping sent across the move of %s", node)
	}
	return sent - got
}

// A mixed cluster: the real flanneld (--ip-masq) on one node, hgw-ebpf
// (--ip-masq) on two, pods attached by the real flannel CNI plugin with
// hgw-cni chained on our nodes, kube-proxy's rules everywhere. Every pod
// pair and every node-to-remote-pod pair talks over TCP. Then the flanneld
// node moves to hgw-ebpf (losing no ping) and an hgw-ebpf node to flanneld,
// each under a running transfer and a 20 ms ping; after each move every
// flanneld rule is there once.
func TestMixedClusterWithRealFlanneld(t *testing.T) {
	flanneld, cniDir := flannelTools(t)
	cfg := lab.Config{Nodes: 3, PodsPerNode: 1, Datapath: lab.DatapathEBPF, KubeProxy: true, IPMasq: mixedIPMasq,
		Flanneld: flanneld, FlanneldNodes: []int{1}, FlannelCNI: cniDir}
	l := startLabConfig(t, cfg)
	ctx := testContext(t, 4*time.Minute)
	st := l.State()
	n1, n2 := st.Nodes[0], st.Nodes[1]
	p1, p2, p3 := st.PodsOf(n1.Name)[0], st.PodsOf(n2.Name)[0], st.PodsOf(st.Nodes[2].Name)[0]
	if n1.Agent != lab.AgentFlanneld || n2.Agent != lab.AgentHgw {
		t.Fatalf("agents %s=%s %s=%s, want flanneld and hgw-ebpf", n1.Name, n1.Agent, n2.Name, n2.Agent)
	}
	for _, p := range st.Pods {
		serveHTTP(t, st, p.Name, lab.BackendHTTPPort)
	}
	for _, n := range st.Nodes {
		if !waitFlannelRules(ctx, st, n.Name, mixedIPMasq, 10*time.Second) {
			t.Errorf("%s (%s): flanneld's rules not there once each", n.Name, n.Agent)
		}
		expectFlannelRules(t, st, n.Name, mixedIPMasq, 1)
	}
	expectAllPairs(t, st)
	expectIperf(t, st, p2.Name, lab.BackendIperfPort, p1.Name, p2.IP, lab.BackendIperfPort)
	expectIperf(t, st, p1.Name, lab.BackendIperfPort, n2.Name, p1.IP, lab.BackendIperfPort)

	// flanneld -> hgw-ebpf: the target is no loss at all.
	if lost := moveUnderTraffic(t, ctx, l, n1.Name, lab.AgentHgw, p1, p2, p1, p3.IP); lost != 0 {
		t.Errorf("moving %s from flanneld to hgw-ebpf lost %d pings, want 0", n1.Name, lost)
	}
	if err := waitAttached(ctx, n1); err != nil {
		t.Fatal(err)
	}
	if !waitFlannelRules(ctx, st, n1.Name, mixedIPMasq, 10*time.Second) {
		t.Errorf("%s after moving to hgw-ebpf: flanneld's rules not there once each", n1.Name)
	}
	expectFlannelRules(t, st, n1.Name, mixedIPMasq, 1)
	before := labtest.AllCounters(t, st)
	expectHTTP(t, st, p1.Name, httpURL(p2.IP, lab.BackendHTTPPort), p2.Name)
	if d := datapath.Redirected(datapath.Delta(before[n1.Name], labtest.AllCounters(t, st)[n1.Name]), "from_pods"); d == 0 {
		t.Errorf("%s: no fast path for new pod-to-pod connections after moving to hgw-ebpf", n1.Name)
	}

	// hgw-ebpf -> flanneld: the loss is reported.
	moveUnderTraffic(t, ctx, l, n2.Name, lab.AgentFlanneld, p2, p3, p2, p1.IP)
	if err := l.WaitRoutes(ctx, 15*time.Second); err != nil {
		t.Fatal(err)
	}
	if !waitFlannelRules(ctx, st, n2.Name, mixedIPMasq, 15*time.Second) {
		t.Errorf("%s after moving to flanneld: flanneld's rules not there once each", n2.Name)
	}
	expectFlannelRules(t, st, n2.Name, mixedIPMasq, 1)
	expectAllPairs(t, l.State())
}
