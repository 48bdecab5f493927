package e2e

// A node agent's metrics and probes, fetched as an operator on
// the node would: with curl inside the node's network namespace.

import (
	"context"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/hgw-ebpf/hgw-ebpf/internal/lab"
)

const metricsURL = "http://127.0.0.1:9742" // the agent's default --metrics-addr

// get fetches path of the node agent's metrics server with curl run inside
// the node's namespace, as an operator on the node would; it returns the
// HTTP status (0: no answer) and the body.
func get(ctx context.Context, st lab.State, node, path string) (int, string) {
	out, err := st.Output(ctx, node, "curl", "-s", "-m", "2", "-w", "\n%{http_code}", metricsURL+path)
	i := strings.LastIndexByte(out, '\n')
	if i < 0 {
		return 0, out
	}
	code, cerr := strconv.Atoi(strings.TrimSpace(out[i+1:]))
	if err != nil || cerr != nil {
		return 0, out
	}
	return code, out[:i]
}

// scrape reads the node's /metrics into families by name.
func scrape(t *testing.T, ctx context.Context, st lab.State, node string) map[string]*dto.MetricFamily {
	t.Helper()
	code, body := get(ctx, st, node, "/metrics")
	if code != 200 {
		t.Fatalf("%s: GET /metrics: %d %s", node, code, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("%s: parse /metrics: %v", node, err)
	}
	return fams
}

// value is the sample of family name whose labels include want; ok is false
// if there is none.
func value(fams map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	f, ok := fams[name]
	if !ok {
		return 0, false
	}
	for _, m := range f.GetMetric() {
		match := 0
		for _, lp := range m.GetLabel() {
			if v, ok := want[lp.GetName()]; ok && v == lp.GetValue() {
				match++
			}
		}
		if match != len(want) {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue(), true
		case m.Gauge != nil:
			return m.GetGauge().GetValue(), true
		}
	}
	return 0, false
}

// A node's metrics, fetched with curl inside the node, show fast-path
// counters that move with traffic, the peers, the attachments, and ready
// probes.
func TestMetricsInANodeFollowTraffic(t *testing.T) {
	l, ctx := startLabFor(t, time.Minute, 2, 1, lab.DatapathEBPF)
	st := l.State()
	n1, n2 := st.Nodes[0], st.Nodes[1]
	client, server := st.PodsOf(n1.Name)[0], st.PodsOf(n2.Name)[0]

	// /readyz's first line is the verdict; notes on the fast path follow.
	for path, want := range map[string]string{"/healthz": "ok", "/readyz": "ready"} {
		if code, body := get(ctx, st, n1.Name, path); code != 200 || strings.SplitN(strings.TrimSpace(body), "\n", 2)[0] != want {
			t.Errorf("%s %s: %d %q, want 200 %q", n1.Name, path, code, body, want)
		}
	}
	redirect := map[string]string{"family": "ipv4", "program": "from_pods", "reason": "redirect"}
	delivered := map[string]string{"family": "ipv4", "program": "from_underlay", "reason": "redirect_peer"}
	before1, before2 := scrape(t, ctx, st, n1.Name), scrape(t, ctx, st, n2.Name)
	const echoes = 20
	if out, err := pings(ctx, st, client.Name, server.IP, echoes, 10*time.Millisecond); err != nil {
		t.Fatalf("ping: %v\n%s", err, out)
	}
	after1, after2 := scrape(t, ctx, st, n1.Name), scrape(t, ctx, st, n2.Name)
	moved := func(b, a map[string]*dto.MetricFamily, labels map[string]string) float64 {
		x, _ := value(b, "hgw_fastpath_packets_total", labels)
		y, ok := value(a, "hgw_fastpath_packets_total", labels)
		if !ok {
			t.Errorf("no hgw_fastpath_packets_total%v", labels)
		}
		return y - x
	}
	// Requests leave node 1 through from_pods and reach node 2's pod by
	// redirect_peer; the replies take the mirror path.
	for _, c := range []struct {
		node          string
		before, after map[string]*dto.MetricFamily
		labels        map[string]string
	}{
		{n1.Name, before1, after1, redirect}, {n1.Name, before1, after1, delivered},
		{n2.Name, before2, after2, redirect}, {n2.Name, before2, after2, delivered},
	} {
		if d := moved(c.before, c.after, c.labels); d < echoes {
			t.Errorf("%s: hgw_fastpath_packets_total%v moved by %v for %d echo requests", c.node, c.labels, d, echoes)
		}
	}
	if v, ok := value(after1, "hgw_peers", map[string]string{"family": "ipv4"}); !ok || v != 1 {
		t.Errorf("%s: hgw_peers = %v (%v), want 1", n1.Name, v, ok)
	}
	for dev, prog := range map[string]string{"cni0": "from_pods", "eth0": "from_underlay"} {
		if v, ok := value(after1, "hgw_datapath_attached", map[string]string{"dev": dev, "program": prog}); !ok || v != 1 {
			t.Errorf("%s: hgw_datapath_attached{dev=%s,program=%s} = %v (%v), want 1", n1.Name, dev, prog, v, ok)
		}
	}
	if v, ok := value(after1, "hgw_lease_expiry_timestamp_seconds", nil); !ok || v < float64(time.Now().Unix()) {
		t.Errorf("%s: hgw_lease_expiry_timestamp_seconds = %v (%v), want a time ahead", n1.Name, v, ok)
	}
}

// An agent that starts while etcd is down serves its probes at once: it is
// alive, and /readyz says, in plain text, that it waits for its lease; it
// waits for etcd instead of exiting, and turns ready only once etcd is back,
// its programs are attached and its routes are in place. The node starts
// with no datapath state and no route to its peer (removed while its agent
// was stopped), so what /readyz reports can only come from this agent.
func TestReadyzWaitsForEtcdAndAttach(t *testing.T) {
	l, ctx := startLabFor(t, 2*time.Minute, 2, 1, lab.DatapathEBPF)
	st := l.State()
	node, peer := st.Nodes[1], st.Nodes[0]
	peerSubnet := netip.MustParsePrefix(peer.Subnet)
	if err := l.StopAgent(node.Name); err != nil {
		t.Fatal(err)
	}
	// What the last agent left: pins (programs stay attached through
	// their links) and kernel routes. `hgw-ebpf cleanup` removes both.
	if out, err := st.Output(ctx, node.Name, l.AgentBin(), "cleanup", "--bpffs-root", node.PinRoot); err != nil {
		t.Fatalf("%s: hgw-ebpf cleanup: %v\n%s", node.Name, err, out)
	}
	if fastPathAttached(t, st, node.Name) || hasRoute(t, node.Name, peerSubnet) {
		t.Fatalf("%s: programs or the route to %s still there after cleanup", node.Name, peer.Subnet)
	}

	l.StopEtcd()
	etcdUp := false
	defer func() {
		if !etcdUp {
			_ = l.StartEtcd(context.Background())
		}
	}()
	if err := l.StartAgent(node.Name); err != nil {
		t.Fatal(err)
	}
	var code int
	var body string
	if _, ok := waitFor(ctx, 10*time.Second, func() bool {
		code, body = get(ctx, st, node.Name, "/readyz")
		return code != 0
	}); !ok {
		t.Fatalf("%s: /readyz never answered while etcd was down", node.Name)
	}
	if code != 503 || !strings.HasPrefix(body, "not ready") || !strings.Contains(body, "etcd lease acquired") {
		t.Errorf("%s: /readyz with etcd down: %d %q, want 503 and a reason naming the lease", node.Name, code, body)
	}
	if code, body := get(ctx, st, node.Name, "/healthz"); code != 200 || strings.TrimSpace(body) != "ok" {
		t.Errorf("%s: /healthz with etcd down: %d %q, want 200 ok", node.Name, code, body)
	}
	// It waits rather than exits: the same process, still not ready and
	// still not attached, a few dial timeouts later.
	pid := mustNode(t, l.State(), node.Name).AgentPID
	time.Sleep(7 * time.Second)
	if now := mustNode(t, l.State(), node.Name).AgentPID; now != pid {
		t.Errorf("agent of %s restarted (%d -> %d) while etcd was down; it should wait", node.Name, pid, now)
	}
	if code, body := get(ctx, st, node.Name, "/readyz"); code != 503 {
		t.Errorf("%s: /readyz still with etcd down: %d %q", node.Name, code, body)
	}
	if fastPathAttached(t, st, node.Name) {
		t.Errorf("%s: programs attached before the agent has its lease", node.Name)
	}

	if err := l.StartEtcd(ctx); err != nil {
		t.Fatal(err)
	}
	etcdUp = true
	// Poll every 10 ms and look at the node the moment it first says ready.
	if _, ok := waitFor(ctx, 30*time.Second, func() bool {
		code, body = get(ctx, st, node.Name, "/readyz")
		return code == 200
	}); !ok {
		t.Fatalf("%s: not ready 30 s after etcd came back: %d %q", node.Name, code, body)
	}
	if !fastPathAttached(t, st, node.Name) {
		t.Errorf("%s: ready, but the programs are not attached", node.Name)
	}
	if !hasRoute(t, node.Name, peerSubnet) {
		t.Errorf("%s: ready, but no kernel route to %s's subnet %s", node.Name, peer.Name, peer.Subnet)
	}
	if ok, err := mapHas(node, peerSubnet, peer.IP); err != nil || !ok {
		t.Errorf("%s: ready, but the routes map has no entry %s via %s (err %v)", node.Name, peer.Subnet, peer.IP, err)
	}
	if strings.SplitN(body, "\n", 2)[0] != "ready" {
		t.Errorf("%s: /readyz 200 with body %q, want \"ready\" first", node.Name, body)
	}
}

// hasRoute reports whether node has a kernel route to subnet.
func hasRoute(t *testing.T, node string, subnet netip.Prefix) bool {
	t.Helper()
	routes, err := lab.NodeRoutes(node)
	if err != nil {
		t.Fatal(err)
	}
	_, ok := routes[subnet]
	return ok
}
