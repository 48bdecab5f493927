package e2e

// The Kubernetes subnet manager end to end: labs whose agents run
// --kube-subnet-mgr against a real kube-apiserver on the underlay
// (hgw-lab up --registry kube), next to the real flanneld in its kube mode.

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"

	"github.com/hgw-ebpf/hgw-ebpf/internal/kubeapi"
	"github.com/hgw-ebpf/hgw-ebpf/internal/kubeapi/kubeapitest"
	"github.com/hgw-ebpf/hgw-ebpf/internal/lab"
)

const flannelPrefix = "flannel.alpha.coreos.com/"

// startKubeLab is startLabConfig for a kube lab. Without kube-apiserver
// and kubectl (`make deps` builds them) it skips outside CI, saying so,
// and fails in CI.
func startKubeLab(t *testing.T, cfg lab.Config) (*lab.Lab, corev1client.NodeInterface) {
	t.Helper()
	for _, b := range []string{"kube-apiserver", "kubectl"} {
		kubeapitest.Require(t, b)
	}
	cfg.Registry = lab.RegistryKube
	l := startLabConfig(t, cfg)
	core, err := corev1client.NewForConfig(l.KubeAPI().RestConfig(kubeapi.Admin))
	if err != nil {
		t.Fatal(err)
	}
	return l, core.Nodes()
}

// flannelAnnotations are a Node's annotations under flannel's prefix.
func flannelAnnotations(n *corev1.Node) map[string]string {
	out := map[string]string{}
	for k, v := range n.Annotations {
		if rest, ok := strings.CutPrefix(k, flannelPrefix); ok {
			out[rest] = v
		}
	}
	return out
}

// A dual-stack kube lab: every Node carries flanneld's annotations for its
// node, both families', and its NetworkUnavailable condition is False;
// every pod pair answers over IPv4 and IPv6, over the fast path.
func TestKubeAllPairsOverFastPath(t *testing.T) {
	const nodes, pods = 3, 2
	l, kn := startKubeLab(t, lab.Config{Nodes: nodes, PodsPerNode: pods, Datapath: lab.DatapathEBPF, DualStack: true})
	ctx := testContext(t, time.Minute)
	for _, n := range l.State().Nodes {
		node, err := kn.Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]string{"kube-subnet-manager": "true", "backend-type": "host-gw", "backend-data": "null", "public-ip": n.IP,
			"backend-v6-data": "null", "public-ipv6": n.IP6}
		if got := flannelAnnotations(node); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s: annotations %v, want %v", n.Name, got, want)
		}
		var cond *corev1.NodeCondition
		for i := range node.Status.Conditions {
			if node.Status.Conditions[i].Type == corev1.NodeNetworkUnavailable {
				cond = &node.Status.Conditions[i]
			}
		}
		if cond == nil || cond.Status != corev1.ConditionFalse {
			t.Errorf("%s: NetworkUnavailable %+v, want False", n.Name, cond)
		}
	}
	expectAllPairsOverFastPath(t, ctx, l.State(), nodes, pods)
}

// nodeEvents records when each Node change is seen by a watch of the API
// server, as a peer's informer would see it.
func nodeEvents(t *testing.T, ctx context.Context, kn corev1client.NodeInterface) <-chan nodeEvent {
	w, err := kn.Watch(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	out := make(chan nodeEvent, 256)
	go func() {
		defer w.Stop()
		for ev := range w.ResultChan() {
			if n, ok := ev.Object.(*corev1.Node); ok {
				select {
				case out <- nodeEvent{typ: ev.Type, node: n, at: time.Now()}:
				default:
				}
			}
		}
	}()
	return out
}

type nodeEvent struct {
	typ  watch.EventType
	node *corev1.Node
	at   time.Time
}

// firstEvent waits for the first event about node that match says is the
// one, and returns when it was seen.
func firstEvent(t *testing.T, events <-chan nodeEvent, node string, match func(nodeEvent) bool) time.Time {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case ev := <-events:
			if ev.node.Name == node && match(ev) {
				return ev.at
			}
		case <-timeout:
			t.Fatalf("no such event about Node %s", node)
		}
	}
}

// A node joins a kube cluster: within 1 s of its Node carrying its lease
// (the annotations its agent writes) every other node routes to its
// podCIDR, kernel and map; its pod answers. It leaves (its Node deleted):
// within 1 s every other node has dropped both.
func TestKubeNodeJoinAndLeave(t *testing.T) {
	l, kn := startKubeLab(t, lab.Config{Nodes: 2, PodsPerNode: 1, Datapath: lab.DatapathEBPF})
	ctx := testContext(t, 2*time.Minute)

	events := nodeEvents(t, ctx, kn)
	joined, err := l.AddNode(ctx)
	if err != nil {
		t.Fatal(err)
	}
	subnet := netip.MustParsePrefix(joined.Subnet)
	if subnet != lab.NodePodCIDR(joined.Index) {
		t.Errorf("joined with subnet %s, its Node's podCIDR is %s", subnet, lab.NodePodCIDR(joined.Index))
	}
	leaseAt := firstEvent(t, events, joined.Name, func(ev nodeEvent) bool {
		return ev.node.Annotations[flannelPrefix+"kube-subnet-manager"] == "true"
	})
	converged, ok := waitFor(ctx, 5*time.Second, func() bool { return everyPeer(t, l.State(), joined, subnet, true) })
	if !ok {
		t.Fatalf("peers never routed to %s", subnet)
	}
	t.Logf("peers routed the new Node's podCIDR %v after its annotations", converged.Sub(leaseAt))
	if d := converged.Sub(leaseAt); d > maxConvergence {
		t.Errorf("peers routed to the new node %s after its Node carried the lease, want <= %s", d, maxConvergence)
	}
	if _, err := l.AddPod(ctx, joined.Name); err != nil {
		t.Fatal(err)
	}
	pingAll(t, ctx, l.State())

	events = nodeEvents(t, ctx, kn)
	errc := make(chan error, 1)
	go func() { errc <- l.RemoveNode(ctx, joined.Name) }()
	goneAt := firstEvent(t, events, joined.Name, func(ev nodeEvent) bool { return ev.typ == watch.Deleted })
	converged, ok = waitFor(ctx, 5*time.Second, func() bool { return everyPeer(t, l.State(), joined, subnet, false) })
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if !ok {
		t.Fatalf("peers still route to %s", subnet)
	}
	t.Logf("peers dropped the deleted Node's podCIDR %v after its deletion", converged.Sub(goneAt))
	if d := converged.Sub(goneAt); d > maxConvergence {
		t.Errorf("peers dropped the node %s after its Node was deleted, want <= %s", d, maxConvergence)
	}
	pingAll(t, ctx, l.State())
}

// A node whose Node has no podCIDR yet (kube-controller-manager has not
// allocated one) is waited for: its agent logs why, /readyz says what it
// waits for, no subnet file is written. Once the podCIDR is set the node
// joins, and its pod answers.
func TestKubeNodeWaitsForPodCIDR(t *testing.T) {
	l, kn := startKubeLab(t, lab.Config{Nodes: 1, PodsPerNode: 1, Datapath: lab.DatapathEBPF})
	ctx := testContext(t, 2*time.Minute)
	st := l.State()
	k := st.NextIndex
	name := lab.NodeName(st.Prefix, k)
	// Registered by its kubelet, no podCIDR yet: the lab keeps it as it is.
	bare := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name,
		Annotations: map[string]string{"volumes.kubernetes.io/controller-managed-attach-detach": "true"}}}
	if _, err := kn.Create(ctx, bare, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	type added struct {
		n   lab.Node
		err error
	}
	done := make(chan added, 1)
	go func() {
		n, err := l.AddNode(ctx)
		done <- added{n, err}
	}()
	var logPath string
	if _, ok := waitFor(ctx, 20*time.Second, func() bool {
		n, ok := l.State().Node(name)
		if !ok {
			return false
		}
		logPath = n.AgentLog
		b, _ := os.ReadFile(logPath)
		return strings.Contains(string(b), "waiting for the node's subnet") && strings.Contains(string(b), "no IPv4 podCIDR yet")
	}); !ok {
		t.Fatalf("the agent of %s never said it waits for a podCIDR (log %s)", name, logPath)
	}
	code, body := get(ctx, l.State(), name, "/readyz")
	if code != 503 || !strings.Contains(body, "node subnet acquired") {
		t.Errorf("/readyz while waiting for a podCIDR: %d %q", code, body)
	}
	n, _ := l.State().Node(name)
	if exists(n.SubnetFile) {
		t.Errorf("subnet file %s written before the node had a podCIDR", n.SubnetFile)
	}
	select {
	case a := <-done:
		t.Fatalf("the node joined without a podCIDR: %+v %v", a.n, a.err)
	case <-time.After(time.Second):
	}

	cidr := lab.NodePodCIDR(k).String()
	patch := fmt.Sprintf(`{"spec":{"podCIDR":%q,"podCIDRs":[%q]}}`, cidr, cidr)
	if _, err := kn.Patch(ctx, name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	var a added
	select {
	case a = <-done:
	case <-ctx.Done():
		t.Fatal("the node never joined after its podCIDR was set")
	}
	if a.err != nil {
		t.Fatal(a.err)
	}
	if a.n.Subnet != cidr {
		t.Errorf("the node joined with %s, its podCIDR is %s", a.n.Subnet, cidr)
	}
	if _, err := l.AddPod(ctx, a.n.Name); err != nil {
		t.Fatal(err)
	}
	pingAll(t, ctx, l.State())
	if code, body := get(ctx, l.State(), name, "/readyz"); code != 200 {
		t.Errorf("/readyz after joining: %d %q", code, body)
	}
}

// kill -9 of an agent, then an API server outage with another agent
// killed during it (it comes back to no API server): a pod pinging a
// remote pod every 10 ms throughout loses nothing, and every node keeps
// routing its peers. Once the API server is back both agents are ready
// again and a node added then is routed.
func TestKubeKill9AndAPIServerOutageLoseNothing(t *testing.T) {
	l, _ := startKubeLab(t, lab.Config{Nodes: 2, PodsPerNode: 1, Datapath: lab.DatapathEBPF})
	ctx := testContext(t, 3*time.Minute)
	st := l.State()
	n1, n2 := st.Nodes[0], st.Nodes[1]
	a, b := st.PodsOf(n1.Name)[0], st.PodsOf(n2.Name)[0]
	kill9 := func(n lab.Node) {
		t.Helper()
		cur, _ := l.State().Node(n.Name)
		if err := syscall.Kill(cur.AgentPID, syscall.SIGKILL); err != nil {
			t.Fatalf("kill agent of %s: %v", n.Name, err)
		}
		if _, ok := waitFor(ctx, 10*time.Second, func() bool {
			now, _ := l.State().Node(n.Name)
			return now.AgentPID != 0 && now.AgentPID != cur.AgentPID
		}); !ok {
			t.Fatalf("the lab did not restart the killed agent of %s", n.Name)
		}
	}
	ready := func(n lab.Node, d time.Duration) bool {
		_, ok := waitFor(ctx, d, func() bool { code, _ := get(ctx, l.State(), n.Name, "/readyz"); return code == 200 })
		return ok
	}
	routed := func() bool {
		return everyPeer(t, l.State(), n1, netip.MustParsePrefix(n1.Subnet), true) &&
			everyPeer(t, l.State(), n2, netip.MustParsePrefix(n2.Subnet), true)
	}

	wait := startPinger(t, st, a.Name, b.IP, 2500, 10*time.Millisecond) // 25 s
	time.Sleep(500 * time.Millisecond)
	kill9(n1)
	if !ready(n1, 30*time.Second) {
		t.Fatalf("the restarted agent of %s never became ready", n1.Name)
	}

	srv := l.KubeAPI()
	srv.Stop()
	outage := time.Now()
	kill9(n2)
	time.Sleep(5 * time.Second)
	if code, body := get(ctx, l.State(), n2.Name, "/readyz"); code != 503 || !strings.Contains(body, "node subnet acquired") {
		t.Errorf("/readyz of an agent started during the outage: %d %q", code, body)
	}
	if !routed() {
		t.Error("routes (kernel or map) lost during the API server outage")
	}
	if err := srv.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("API server out for %v", time.Since(outage).Round(100*time.Millisecond))
	back := time.Now()
	if !ready(n2, time.Minute) {
		t.Fatalf("the agent of %s started during the outage never became ready", n2.Name)
	}
	t.Logf("%s ready %v after the API server came back", n2.Name, time.Since(back).Round(100*time.Millisecond))
	sent, got := wait()
	if sent == 0 || got != sent {
		t.Errorf("ping across kill -9 and the API server outage: %d sent, %d received", sent, got)
	}
	if !routed() {
		t.Error("routes lost after the outage")
	}
	for _, n := range []lab.Node{n1, n2} {
		if !fastPathAttached(t, st, n.Name) {
			t.Errorf("%s: fast path detached", n.Name)
		}
	}
	if _, err := l.AddNode(ctx); err != nil {
		t.Fatal(err)
	}
	if err := l.WaitRoutes(ctx, 10*time.Second); err != nil {
		t.Fatalf("a node added after the outage: %v", err)
	}
}

// A mixed kube-mode cluster, dual-stack: the real flanneld
// (--kube-subnet-mgr --ip-masq) on one node, hgw-ebpf on two, pods through
// the real flannel CNI plugin (hgw-cni chained on our nodes). Each side
// routes the other's podCIDRs from the other's Node annotations, which are
// the same bytes whoever wrote them, both families'; every pod pair and
// every node-to-remote-pod pair talks over TCP, ours over the fast path.
// Then the flanneld node moves to hgw-ebpf under a transfer and a 20 ms
// ping, losing none.
func TestMixedKubeClusterWithRealFlanneld(t *testing.T) {
	flanneld, cniDir := flannelTools(t)
	l, kn := startKubeLab(t, lab.Config{Nodes: 3, PodsPerNode: 1, Datapath: lab.DatapathEBPF, IPMasq: true, DualStack: true,
		Flanneld: flanneld, FlanneldNodes: []int{1}, FlannelCNI: cniDir})
	ctx := testContext(t, 4*time.Minute)
	st := l.State()
	n1, n2, n3 := st.Nodes[0], st.Nodes[1], st.Nodes[2]
	p1, p2, p3 := st.PodsOf(n1.Name)[0], st.PodsOf(n2.Name)[0], st.PodsOf(n3.Name)[0]
	if n1.Agent != lab.AgentFlanneld || n2.Agent != lab.AgentHgw {
		t.Fatalf("agents %s=%s %s=%s, want flanneld and hgw-ebpf", n1.Name, n1.Agent, n2.Name, n2.Agent)
	}

	// The annotations flanneld wrote and those we wrote: the same keys and
	// bytes, but for each node's own address.
	byNode := map[string]map[string]string{}
	for _, n := range st.Nodes {
		node, err := kn.Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		byNode[n.Name] = flannelAnnotations(node)
		if got := byNode[n.Name]["public-ip"]; got != n.IP {
			t.Errorf("%s (%s): public-ip %q, want %s", n.Name, n.Agent, got, n.IP)
		}
		if got := byNode[n.Name]["public-ipv6"]; got != n.IP6 {
			t.Errorf("%s (%s): public-ipv6 %q, want %s", n.Name, n.Agent, got, n.IP6)
		}
		delete(byNode[n.Name], "public-ip")
		delete(byNode[n.Name], "public-ipv6")
	}
	if fl, ours := fmt.Sprint(byNode[n1.Name]), fmt.Sprint(byNode[n2.Name]); fl != ours {
		t.Errorf("flanneld's annotations %s, ours %s", fl, ours)
	}

	// flanneld routes our podCIDRs, we route its: kernel routes there,
	// kernel routes and map entries here.
	routes, err := lab.NodeRoutes(n1.Name)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []lab.Node{n2, n3} {
		if gw, ok := routes[netip.MustParsePrefix(n.Subnet)]; !ok || gw.String() != n.IP {
			t.Errorf("flanneld on %s does not route %s via %s (routes %v)", n1.Name, n.Subnet, n.IP, routes)
		}
	}
	if !everyPeer(t, st, n1, netip.MustParsePrefix(n1.Subnet), true) {
		t.Errorf("hgw-ebpf nodes do not route flanneld's %s via %s, kernel and map", n1.Subnet, n1.IP)
	}

	if err := l.WaitRoutes(ctx, 10*time.Second); err != nil {
		t.Errorf("routes of both families: %v", err)
	}
	expectAll(t, "ipv6", st.PingAll6(ctx, 16), len(st.Pods))
	for _, p := range st.Pods {
		serveHTTP(t, st, p.Name, lab.BackendHTTPPort)
	}
	ours := []lab.Node{n2, n3}
	before := map[string]uint64{}
	for _, n := range ours {
		before[n.Name] = counterOf(t, n, "from_pods", "redirect")
	}
	expectAllPairs(t, st)
	for _, n := range ours {
		if d := counterOf(t, n, "from_pods", "redirect") - before[n.Name]; d == 0 {
			t.Errorf("%s: nothing redirected for its pod's connections", n.Name)
		}
	}

	if lost := moveUnderTraffic(t, ctx, l, n1.Name, lab.AgentHgw, p1, p2, p1, p3.IP); lost != 0 {
		t.Errorf("moving %s from flanneld to hgw-ebpf lost %d pings, want 0", n1.Name, lost)
	}
	if err := waitAttached(ctx, n1); err != nil {
		t.Fatal(err)
	}
	node, err := kn.Get(ctx, n1.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := flannelAnnotations(node); got["public-ip"] != n1.IP || got["kube-subnet-manager"] != "true" {
		t.Errorf("%s's annotations after the move: %v", n1.Name, got)
	}
	expectAllPairs(t, l.State())
}

// hgw-ebpf cleanup --release-lease --kube-subnet-mgr takes the lease off
// the node's Node (NODE_NAME), as `run` published it: the annotations
// go, the podCIDR stays, and the other nodes drop their route and map
// entry.
func TestKubeCleanupReleasesTheNodesLease(t *testing.T) {
	l, kn := startKubeLab(t, lab.Config{Nodes: 2, PodsPerNode: 1, Datapath: lab.DatapathEBPF})
	ctx := testContext(t, time.Minute)
	st := l.State()
	n := st.Nodes[0]
	subnet := netip.MustParsePrefix(n.Subnet)
	if err := l.StopAgent(n.Name); err != nil {
		t.Fatal(err)
	}
	addDefaultRoute(t, n)
	out, err := st.Output(ctx, n.Name, "env", "NODE_NAME="+n.Name, filepath.Join(binDir, "hgw-ebpf"), "cleanup", "--release-lease",
		"--kube-subnet-mgr", "--kubeconfig-file", st.Kubeconfig, "--subnet-file", n.SubnetFile, "--bpffs-root", n.PinRoot)
	if err != nil {
		t.Fatalf("cleanup --release-lease --kube-subnet-mgr: %v\n%s", err, out)
	}
	if !strings.Contains(out, "lease released") || !strings.Contains(out, n.IP) {
		t.Errorf("cleanup does not say it released %s's lease:\n%s", n.Name, out)
	}
	node, err := kn.Get(ctx, n.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := flannelAnnotations(node); len(got) != 0 || node.Spec.PodCIDR != n.Subnet {
		t.Errorf("after release: annotations %v (want none), podCIDR %q (want %s)", got, node.Spec.PodCIDR, n.Subnet)
	}
	if _, ok := waitFor(ctx, 5*time.Second, func() bool { return everyPeer(t, l.State(), n, subnet, false) }); !ok {
		t.Errorf("peers still route %s after its lease was released", subnet)
	}
}
