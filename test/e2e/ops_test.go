package e2e

// Operating the agent (issue 6): its metrics and probes as seen from inside
// a node, and a restart that replaces the programs under live traffic.

import (
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf/link"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/hgw-ebpf/hgw-ebpf/pkg/datapath"
	"github.com/hgw-ebpf/hgw-ebpf/pkg/lab"
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
	l := startLab(t, 2, 1, lab.DatapathEBPF)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st := l.State()
	n1, n2 := st.Nodes[0], st.Nodes[1]
	client, server := st.PodsOf(n1.Name)[0], st.PodsOf(n2.Name)[0]

	for path, want := range map[string]string{"/healthz": "ok", "/readyz": "ready"} {
		if code, body := get(ctx, st, n1.Name, path); code != 200 || strings.TrimSpace(body) != want {
			t.Errorf("%s %s: %d %q, want 200 %q", n1.Name, path, code, body, want)
		}
	}
	redirect := map[string]string{"program": "from_pods", "reason": "redirect"}
	delivered := map[string]string{"program": "from_underlay", "reason": "redirect_peer"}
	before1, before2 := scrape(t, ctx, st, n1.Name), scrape(t, ctx, st, n2.Name)
	const pings = 20
	if out, err := st.Output(ctx, client.Name, "ping", "-n", "-q", "-c", strconv.Itoa(pings), "-i", "0.01", "-W", "1", server.IP); err != nil {
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
		if d := moved(c.before, c.after, c.labels); d < pings {
			t.Errorf("%s: hgw_fastpath_packets_total%v moved by %v for %d echo requests", c.node, c.labels, d, pings)
		}
	}
	if v, ok := value(after1, "hgw_peers", nil); !ok || v != 1 {
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
// alive, and /readyz says it waits for its lease; it waits for etcd
// instead of exiting, and turns ready only once etcd is back, its programs
// are attached and its routes are in place.
func TestReadyzWaitsForEtcdAndAttach(t *testing.T) {
	l := startLab(t, 2, 1, lab.DatapathEBPF)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	st := l.State()
	node, peer := st.Nodes[1], st.Nodes[0]
	if err := l.StopAgent(node.Name); err != nil {
		t.Fatal(err)
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
	if code != 503 || !strings.Contains(body, "etcd lease acquired") {
		t.Errorf("%s: /readyz with etcd down: %d %q, want 503 naming the lease", node.Name, code, body)
	}
	if code, body := get(ctx, st, node.Name, "/healthz"); code != 200 {
		t.Errorf("%s: /healthz with etcd down: %d %q", node.Name, code, body)
	}
	// It waits rather than exits: the same process, still not ready, a
	// few dial timeouts later.
	pid := mustNode(t, l.State(), node.Name).AgentPID
	time.Sleep(7 * time.Second)
	if now := mustNode(t, l.State(), node.Name).AgentPID; now != pid {
		t.Errorf("agent of %s restarted (%d -> %d) while etcd was down; it should wait", node.Name, pid, now)
	}
	if code, body := get(ctx, st, node.Name, "/readyz"); code != 503 {
		t.Errorf("%s: /readyz still with etcd down: %d %q", node.Name, code, body)
	}

	if err := l.StartEtcd(ctx); err != nil {
		t.Fatal(err)
	}
	etcdUp = true
	if _, ok := waitFor(ctx, 30*time.Second, func() bool {
		code, body = get(ctx, st, node.Name, "/readyz")
		return code == 200
	}); !ok {
		t.Fatalf("%s: not ready 30 s after etcd came back: %d %q", node.Name, code, body)
	}
	if !fastPathAttached(t, st, node.Name) {
		t.Errorf("%s: ready, but the programs are not attached", node.Name)
	}
	routes, err := lab.NodeRoutes(node.Name)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := routes[netip.MustParsePrefix(peer.Subnet)]; !ok {
		t.Errorf("%s: ready, but no route to %s's subnet %s: %v", node.Name, peer.Name, peer.Subnet, routes)
	}
	maps, err := datapath.OpenPinned(node.PinRoot)
	if err != nil {
		t.Fatal(err)
	}
	defer maps.Close()
	entries, err := maps.Routes().List()
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Subnet.String() != peer.Subnet {
		t.Errorf("%s: ready, but the map holds %+v, want the route to %s", node.Name, entries, peer.Subnet)
	}
}

// pinnedLinks are the IDs of the tcx links pinned under a node's pin root
// and the programs they run, by pin name (program@device).
func pinnedLinks(t *testing.T, n lab.Node) map[string][2]uint32 {
	t.Helper()
	dir := filepath.Join(n.PinRoot, "links")
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("link pins of %s: %v", n.Name, err)
	}
	out := map[string][2]uint32{}
	for _, e := range entries {
		l, err := link.LoadPinnedLink(filepath.Join(dir, e.Name()), nil)
		if err != nil {
			t.Fatalf("open link pin %s: %v", e.Name(), err)
		}
		info, err := l.Info()
		l.Close()
		if err != nil {
			t.Fatalf("link info %s: %v", e.Name(), err)
		}
		out[e.Name()] = [2]uint32{uint32(info.ID), uint32(info.Program)}
	}
	return out
}

// Restarting the agents one node after the other (what an upgrade to a new
// binary does) loads new programs and swaps them into the same links while
// a pod pings a pod on the other node every 10 ms: not one packet is lost,
// every link keeps its ID, and every link runs a new program afterwards.
func TestAgentRestartReplacesProgramsWithoutLoss(t *testing.T) {
	l := startLab(t, 2, 1, lab.DatapathEBPF)
	st := l.State()
	before := map[string]map[string][2]uint32{}
	for _, n := range st.Nodes {
		before[n.Name] = pinnedLinks(t, n)
		if len(before[n.Name]) < 3 { // cni0, eth0 and the pod's veth
			t.Fatalf("%s: %d link pins, want from_pods@cni0, from_underlay@eth0 and the pod's veth: %v",
				n.Name, len(before[n.Name]), before[n.Name])
		}
	}
	a, b := st.Pods[0], st.Pods[1]
	wait := startPinger(t, st, a.Name, b.IP, 800) // 8 s
	time.Sleep(time.Second)
	for _, n := range st.Nodes {
		if err := l.StopAgent(n.Name); err != nil {
			t.Fatal(err)
		}
		if err := l.StartAgent(n.Name); err != nil {
			t.Fatal(err)
		}
		// The new agent has attached once its subnet file is rewritten
		// and it reports ready; give it the time to get there.
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		_, ok := waitFor(ctx, 15*time.Second, func() bool {
			code, _ := get(ctx, st, n.Name, "/readyz")
			return code == 200
		})
		cancel()
		if !ok {
			t.Fatalf("%s: restarted agent not ready", n.Name)
		}
	}
	sent, got := wait()
	if sent == 0 || got != sent {
		t.Errorf("ping every 10 ms across the restarts: %d sent, %d received", sent, got)
	}
	for _, n := range st.Nodes {
		after := pinnedLinks(t, n)
		for pin, was := range before[n.Name] {
			now, ok := after[pin]
			switch {
			case !ok:
				t.Errorf("%s: link %s gone after the restart", n.Name, pin)
			case now[0] != was[0]:
				t.Errorf("%s: link %s replaced (id %d -> %d), want updated in place", n.Name, pin, was[0], now[0])
			case now[1] == was[1]:
				t.Errorf("%s: link %s still runs program %d: not replaced", n.Name, pin, was[1])
			}
		}
	}
}

// hgwJSON runs `hgw-ebpf args... -o json --bpffs-root <pins>` inside the
// node and decodes its output into v.
func hgwJSON(t *testing.T, ctx context.Context, st lab.State, n lab.Node, v any, args ...string) {
	t.Helper()
	argv := append([]string{filepath.Join(binDir, "hgw-ebpf")}, args...)
	argv = append(argv, "-o", "json", "--bpffs-root", n.PinRoot)
	out, err := st.Output(ctx, n.Name, argv...)
	if err != nil {
		t.Fatalf("%v: %v\n%s", args, err, out)
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("hgw-ebpf %v -o json is not JSON: %v\n%s", args, err, out)
	}
}

// missingFields are the documented fields obj lacks.
func missingFields(obj map[string]any, fields ...string) []string {
	var missing []string
	for _, f := range fields {
		if _, ok := obj[f]; !ok {
			missing = append(missing, f)
		}
	}
	return missing
}

// `hgw-ebpf status|routes|stats -o json` inside a node parse as JSON with
// the fields the README documents, and say what the node has.
func TestInspectionJSONHasTheDocumentedFields(t *testing.T) {
	l := startLab(t, 2, 1, lab.DatapathEBPF)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st := l.State()
	pingAll(t, ctx, st)
	n, peer := st.Nodes[0], st.Nodes[1]

	var status map[string]any
	hgwJSON(t, ctx, st, n, &status, "status")
	if m := missingFields(status, "pin_root", "config", "attachments", "routes", "endpoints", "counters"); len(m) > 0 {
		t.Errorf("status -o json lacks %v: %v", m, status)
	}
	eps, _ := status["endpoints"].([]any)
	if len(eps) != 1 {
		t.Errorf("status endpoints %v: want the node's one pod", eps)
	}
	for _, e := range eps {
		if m := missingFields(e.(map[string]any), "ip", "ifindex", "pod_mac", "gateway_mac"); len(m) > 0 {
			t.Errorf("endpoint lacks %v: %v", m, e)
		}
	}
	cfg, _ := status["config"].(map[string]any)
	if m := missingFields(cfg, "pod_subnet", "gateway", "bridge_ifindex", "underlay_ifindex", "conntrack"); len(m) > 0 {
		t.Errorf("status config lacks %v: %v", m, cfg)
	}
	if cfg["pod_subnet"] != n.Subnet {
		t.Errorf("status config pod_subnet %v, want %s", cfg["pod_subnet"], n.Subnet)
	}
	atts, _ := status["attachments"].([]any)
	if len(atts) < 2 {
		t.Errorf("status attachments %v: want cni0 and eth0 at least", atts)
	}
	for _, a := range atts {
		if m := missingFields(a.(map[string]any), "dev", "ifindex", "program", "mode", "program_id"); len(m) > 0 {
			t.Errorf("attachment lacks %v: %v", m, a)
		}
	}

	var routes []map[string]any
	hgwJSON(t, ctx, st, n, &routes, "routes")
	if len(routes) != 1 {
		t.Fatalf("routes -o json: %v, want the one peer", routes)
	}
	if m := missingFields(routes[0], "subnet", "nexthop", "dev", "kernel", "map", "agree"); len(m) > 0 {
		t.Errorf("route lacks %v: %v", m, routes[0])
	}
	if routes[0]["subnet"] != peer.Subnet || routes[0]["nexthop"] != peer.IP || routes[0]["agree"] != true {
		t.Errorf("route %v: want %s via %s, kernel and map agreeing", routes[0], peer.Subnet, peer.IP)
	}

	var counters []map[string]any
	hgwJSON(t, ctx, st, n, &counters, "stats")
	found := false
	for _, c := range counters {
		if m := missingFields(c, "program", "reason", "packets", "bytes"); len(m) > 0 {
			t.Errorf("counter lacks %v: %v", m, c)
		}
		if c["program"] == "from_pods" && c["reason"] == "redirect" {
			found = c["packets"].(float64) > 0
		}
	}
	if !found {
		t.Errorf("stats -o json has no moving from_pods/redirect after pings: %v", counters)
	}
}
