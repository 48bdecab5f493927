package e2e

// When the fast path must not act: a NetworkPolicy engine on the node (its
// rules live in netfilter, which a redirected packet skips), and a node
// restarted with --datapath routes after an ebpf run.

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
	"github.com/hgw-ebpf/hgw-ebpf/internal/lab"
	"github.com/hgw-ebpf/hgw-ebpf/internal/lab/labtest"
	"github.com/hgw-ebpf/hgw-ebpf/internal/netfilter"
)

// kubeNetworkPolicies creates, inside node, the nftables table flannel's
// netpol option runs (inet kube-network-policies) with a forward-hook rule
// dropping what is sent to pod IP drop; present=false deletes the table.
func kubeNetworkPolicies(t *testing.T, st lab.State, node, drop string, present bool) {
	t.Helper()
	err := st.Do(node, func() error {
		c, err := nftables.New()
		if err != nil {
			return err
		}
		table := &nftables.Table{Family: nftables.TableFamilyINet, Name: netfilter.EngineKubeNetworkPolicies}
		if !present {
			c.DelTable(table)
			return c.Flush()
		}
		c.AddTable(table)
		ch := c.AddChain(&nftables.Chain{Name: "forward", Table: table, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter})
		c.AddRule(&nftables.Rule{Table: table, Chain: ch, Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4}, // daddr
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: net.ParseIP(drop).To4()},
			&expr.Verdict{Kind: expr.VerdictDrop},
		}})
		return c.Flush()
	})
	if err != nil {
		t.Fatalf("%s: kube-network-policies table (present=%v): %v", node, present, err)
	}
}

// fastPathStatus is the part of `hgw-ebpf status -o json` this file reads.
type fastPathStatus struct {
	FastPath *struct {
		State         string             `json:"state"`
		PolicyEngines []netfilter.Engine `json:"policy_engines"`
	} `json:"fast_path"`
}

// waitFastPath polls node's `hgw-ebpf status` until the fast path is in
// state, and returns how long that took.
func waitFastPath(t *testing.T, ctx context.Context, st lab.State, n lab.Node, state string, timeout time.Duration) (fastPathStatus, time.Duration) {
	t.Helper()
	start := time.Now()
	var s fastPathStatus
	var last string
	if _, ok := waitFor(ctx, timeout, func() bool {
		out, err := st.Output(ctx, n.Name, filepath.Join(binDir, "hgw-ebpf"), "status", "-o", "json", "--bpffs-root", n.PinRoot)
		last = out
		s = fastPathStatus{}
		return err == nil && json.Unmarshal([]byte(out), &s) == nil && s.FastPath != nil && s.FastPath.State == state
	}); !ok {
		t.Fatalf("%s: fast path not %q within %s; last status:\n%s", n.Name, state, timeout, last)
	}
	return s, time.Since(start)
}

// A NetworkPolicy engine appears on node 2 of real nodes (kube-proxy's
// rules with their INVALID drop, flanneld's --ip-masq rules): within a
// resync its agent steps aside, so the engine's drop rule is honoured and
// the traffic it allows (pings, HTTP, an iperf3 transfer) is carried by
// the kernel, counted step_aside and never redirected; `status` (text and
// JSON), /readyz and the metrics name it. When the engine goes, the fast
// path is back within a resync and `status` says so.
func TestPolicyEngineTakesTheKernelPathAndBack(t *testing.T) {
	l := startLabConfig(t, realNodeConfig(2, 2))
	ctx := testContext(t, 2*time.Minute)
	st := l.State()
	n1, n2 := st.Nodes[0], st.Nodes[1]
	client := st.PodsOf(n1.Name)[0]
	allowed, blocked := st.PodsOf(n2.Name)[0], st.PodsOf(n2.Name)[1]
	for _, p := range []lab.Pod{allowed, blocked} {
		serveHTTP(t, st, p.Name, lab.BackendHTTPPort)
	}
	ping := func(to lab.Pod, count int) bool {
		_, err := pings(ctx, st, client.Name, to.IP, count, 50*time.Millisecond)
		return err == nil
	}
	if !ping(blocked, 3) {
		t.Fatalf("%s -> %s does not work before any policy", client.Name, blocked.Name)
	}

	kubeNetworkPolicies(t, st, n2.Name, blocked.IP, true)
	s, took := waitFastPath(t, ctx, st, n2, "step_aside", 10*time.Second)
	t.Logf("%s stepped aside %s after the engine appeared (resync 1 s)", n2.Name, took.Round(10*time.Millisecond))
	if len(s.FastPath.PolicyEngines) != 1 || s.FastPath.PolicyEngines[0].Name != netfilter.EngineKubeNetworkPolicies {
		t.Errorf("status -o json names %+v, want kube-network-policies", s.FastPath.PolicyEngines)
	}
	if text := statusText(ctx, st, n2); !strings.Contains(text, "stepping aside for NetworkPolicy engine kube-network-policies") {
		t.Errorf("status text does not say it steps aside for kube-network-policies:\n%s", text)
	}
	if code, body := get(ctx, st, n2.Name, "/readyz"); code != 200 || !strings.HasPrefix(body, "ready\n") || !strings.Contains(body, "kube-network-policies") {
		t.Errorf("%s /readyz: %d %q, want ready with the engine named", n2.Name, code, body)
	}
	fams := scrape(t, ctx, st, n2.Name)
	if v, ok := value(fams, "hgw_policy_engine", map[string]string{"engine": "kube-network-policies"}); !ok || v != 1 {
		t.Errorf("hgw_policy_engine{engine=kube-network-policies} = %v (%v), want 1", v, ok)
	}
	if v, ok := value(fams, "hgw_fastpath_active", nil); !ok || v != 0 {
		t.Errorf("hgw_fastpath_active = %v (%v), want 0", v, ok)
	}

	const echoes = 10
	before := labtest.AllCounters(t, st)
	if !ping(allowed, echoes) {
		t.Errorf("%s -> %s (allowed by the policy) failed", client.Name, allowed.Name)
	}
	if ping(blocked, 3) {
		t.Errorf("%s -> %s got through though the engine drops it: the fast path bypassed the policy", client.Name, blocked.Name)
	}
	if answers, _ := httpGets(st, client.Name, httpURL(blocked.IP, lab.BackendHTTPPort), 3); len(answers) != 0 {
		t.Errorf("%d of 3 requests to %s answered: the policy's drop was bypassed", len(answers), blocked.Name)
	}
	expectHTTP(t, st, client.Name, httpURL(allowed.IP, lab.BackendHTTPPort), allowed.Name)
	expectIperf(t, st, allowed.Name, lab.BackendIperfPort, client.Name, allowed.IP, lab.BackendIperfPort)
	// Every echo request (the dropped ones too) and at least three
	// packets of each HTTP connection reached n2 while it stepped aside.
	expectKernelPath(t, before, labtest.AllCounters(t, st), n2.Name, "from_underlay", "step_aside", echoes+3+3*httpRequests)

	// The engine goes: the fast path is back at the next resync.
	kubeNetworkPolicies(t, st, n2.Name, "", false)
	gone := time.Now()
	back, ok := waitFor(ctx, 5*time.Second, func() bool {
		b := labtest.Counters(t, n2)
		_, _ = httpGets(st, client.Name, httpURL(allowed.IP, lab.BackendHTTPPort), 1)
		return datapath.Redirected(labtest.Counters(t, n2), "from_underlay") > datapath.Redirected(b, "from_underlay")
	})
	if !ok {
		t.Fatalf("%s: no fast path 5 s after the policy engine went", n2.Name)
	}
	t.Logf("fast path back %v after the policy engine went (resync 1 s)", back.Sub(gone).Round(10*time.Millisecond))
	// One resync (1 s) plus the probe's own time; three leave room for a
	// loaded machine without letting "never" pass.
	if d := back.Sub(gone); d > 3*time.Second {
		t.Errorf("fast path back after %v, want within one resync (1 s) and the probe's time", d)
	}
	waitFastPath(t, ctx, st, n2, "active", 10*time.Second)
	if text := statusText(ctx, st, n2); stepsAside(text) {
		t.Errorf("%s: status still says it steps aside after the engine went:\n%s", n2.Name, text)
	}
	before = labtest.AllCounters(t, st)
	if !ping(blocked, echoes) {
		t.Errorf("%s -> %s failed after the policy went", client.Name, blocked.Name)
	}
	if d := movedBy(before, labtest.AllCounters(t, st), n2.Name, "from_underlay", "redirect_peer"); d < echoes {
		t.Errorf("%s from_underlay redirect_peer moved by %d after the engine went, want >= %d", n2.Name, d, echoes)
	}
	expectHTTP(t, st, client.Name, httpURL(blocked.IP, lab.BackendHTTPPort), blocked.Name)
}

// stepsAside reports whether a line of `hgw-ebpf status` says the fast
// path steps aside for kube-network-policies.
func stepsAside(status string) bool {
	for _, line := range strings.Split(status, "\n") {
		if strings.Contains(line, "kube-network-policies") && strings.Contains(line, "aside") {
			return true
		}
	}
	return false
}

// statusText is node n's `hgw-ebpf status`, or what went wrong.
func statusText(ctx context.Context, st lab.State, n lab.Node) string {
	out, err := st.Output(ctx, n.Name, filepath.Join(binDir, "hgw-ebpf"), "status", "--bpffs-root", n.PinRoot)
	if err != nil {
		return fmt.Sprintf("%s(status failed: %v)", out, err)
	}
	return out
}

// Restarted with --datapath routes after an ebpf run, every node removes
// what the run left: no program on any device (pods' veths included), no
// pins; pods keep talking over the kernel routes. A pod added afterwards
// ends with nothing attached either.
func TestRoutesRestartAfterEbpfLeavesNothingAttached(t *testing.T) {
	l, ctx := startLabFor(t, 2*time.Minute, 2, 2, lab.DatapathEBPF)
	st := l.State()
	for _, n := range st.Nodes {
		if progs := mustAttachedTC(t, st, n.Name); len(progs) < 2+len(st.PodsOf(n.Name)) {
			t.Fatalf("%s: %d programs attached before the switch, want cni0, eth0 and every pod's veth: %+v", n.Name, len(progs), progs)
		}
	}
	if err := l.SwitchDatapath(ctx, lab.DatapathRoutes); err != nil {
		t.Fatal(err)
	}
	nothingLeft := func() {
		t.Helper()
		for _, n := range st.Nodes {
			// Programs go first, then the pins: wait for both.
			var progs []tcProgram
			var statErr error
			if _, ok := waitFor(ctx, 10*time.Second, func() bool {
				p, err := attachedTC(st, n.Name)
				progs = p
				_, statErr = os.Stat(n.PinRoot)
				return err == nil && len(p) == 0 && os.IsNotExist(statErr)
			}); !ok {
				t.Errorf("%s after the switch to routes: programs %+v, pin root %s: %v", n.Name, progs, n.PinRoot, statErr)
			}
		}
	}
	nothingLeft()
	pingAll(t, ctx, st)

	if _, err := l.AddPod(ctx, st.Nodes[1].Name); err != nil {
		t.Fatal(err)
	}
	st = l.State()
	nothingLeft()
	pingAll(t, ctx, st)
}
