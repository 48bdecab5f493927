package e2e

// Inspection without the agent: `hgw-ebpf status|routes|stats -o json`
// run inside a node.

import (
	"context"
	"encoding/json"
	"path/filepath"
	"testing"
	"time"

	"github.com/hgw-ebpf/hgw-ebpf/internal/lab"
)

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
// the fields docs/operations.md documents, and say what the node has.
func TestInspectionJSONHasTheDocumentedFields(t *testing.T) {
	l, ctx := startLabFor(t, time.Minute, 2, 1, lab.DatapathEBPF)
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
		if m := missingFields(c, "family", "program", "reason", "packets", "bytes"); len(m) > 0 {
			t.Errorf("counter lacks %v: %v", m, c)
		}
		if c["program"] == "from_pods" && c["reason"] == "redirect" && c["packets"].(float64) > 0 {
			found = true // one family's cell, the pings' (ipv4)
		}
	}
	if !found {
		t.Errorf("stats -o json has no moving from_pods/redirect after pings: %v", counters)
	}
}
