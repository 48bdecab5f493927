package e2e

// When the fast path must not act: a NetworkPolicy engine on the node (its
// rules live in netfilter, which a redirected packet skips), and a node
// restarted with --datapath routes after an ebpf run.

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/hgw-ebpf/hgw-ebpf/pkg/datapath"
	"github.com/hgw-ebpf/hgw-ebpf/pkg/lab"
	"github.com/hgw-ebpf/hgw-ebpf/pkg/netfilter"
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

// ping sends count echo requests from pod from to ip and says whether any
// came back.
func ping(ctx context.Context, st lab.State, from lab.Pod, ip string, count int) bool {
	_, err := st.Output(ctx, from.Name, "ping", "-n", "-q", "-c", strconv.Itoa(count), "-i", "0.05", "-W", "1", ip)
	return err == nil
}

// A NetworkPolicy engine appears on node 2: within a resync its agent
// steps aside, so the engine's drop rule is honoured and the traffic it
// allows is carried by the kernel (counted step_aside, never redirected),
// and `status`, /readyz and the metrics name it. When the engine goes, the
// fast path is back within a resync.
func TestPolicyEngineTakesTheKernelPathAndBack(t *testing.T) {
	l := startLab(t, 2, 2, lab.DatapathEBPF)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	st := l.State()
	n1, n2 := st.Nodes[0], st.Nodes[1]
	client := st.PodsOf(n1.Name)[0]
	allowed, blocked := st.PodsOf(n2.Name)[0], st.PodsOf(n2.Name)[1]
	if !ping(ctx, st, client, blocked.IP, 3) {
		t.Fatalf("%s -> %s does not work before any policy", client.Name, blocked.Name)
	}

	kubeNetworkPolicies(t, st, n2.Name, blocked.IP, true)
	s, took := waitFastPath(t, ctx, st, n2, "step_aside", 10*time.Second)
	t.Logf("%s stepped aside %s after the engine appeared (resync 1 s)", n2.Name, took.Round(10*time.Millisecond))
	if len(s.FastPath.PolicyEngines) != 1 || s.FastPath.PolicyEngines[0].Name != netfilter.EngineKubeNetworkPolicies {
		t.Errorf("status -o json names %+v, want kube-network-policies", s.FastPath.PolicyEngines)
	}
	text, err := st.Output(ctx, n2.Name, filepath.Join(binDir, "hgw-ebpf"), "status", "--bpffs-root", n2.PinRoot)
	if err != nil || !strings.Contains(text, "stepping aside for NetworkPolicy engine kube-network-policies") {
		t.Errorf("status text does not say it steps aside for kube-network-policies (%v):\n%s", err, text)
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

	const pings = 10
	before := counters(t, st)[n2.Name]
	if !ping(ctx, st, client, allowed.IP, pings) {
		t.Errorf("%s -> %s (allowed by the policy) failed", client.Name, allowed.Name)
	}
	if ping(ctx, st, client, blocked.IP, 3) {
		t.Errorf("%s -> %s got through though the engine drops it: the fast path bypassed the policy", client.Name, blocked.Name)
	}
	after := counters(t, st)[n2.Name]
	moved := func(program, reason string) uint64 {
		return datapath.Packets(after, program, reason) - datapath.Packets(before, program, reason)
	}
	if d := moved("from_underlay", "step_aside"); d < pings+3 {
		t.Errorf("%s from_underlay step_aside moved by %d, want >= %d", n2.Name, d, pings+3)
	}
	for _, c := range [][2]string{{"from_underlay", "redirect"}, {"from_underlay", "redirect_peer"}, {"from_pods", "redirect"}} {
		if d := moved(c[0], c[1]); d != 0 {
			t.Errorf("%s %s %s moved by %d while stepping aside", n2.Name, c[0], c[1], d)
		}
	}

	kubeNetworkPolicies(t, st, n2.Name, "", false)
	_, took = waitFastPath(t, ctx, st, n2, "active", 10*time.Second)
	t.Logf("%s fast path back %s after the engine went (resync 1 s)", n2.Name, took.Round(10*time.Millisecond))
	before = counters(t, st)[n2.Name]
	if !ping(ctx, st, client, blocked.IP, pings) {
		t.Errorf("%s -> %s failed after the policy went", client.Name, blocked.Name)
	}
	after = counters(t, st)[n2.Name]
	if d := moved("from_underlay", "redirect_peer"); d < pings {
		t.Errorf("%s from_underlay redirect_peer moved by %d after the engine went, want >= %d", n2.Name, d, pings)
	}
}

// Restarted with --datapath routes after an ebpf run, every node removes
// what the run left: no program on any device (pods' veths included), no
// pins; pods keep talking over the kernel routes. A pod added afterwards
// ends with nothing attached either.
func TestRoutesRestartAfterEbpfLeavesNothingAttached(t *testing.T) {
	l := startLab(t, 2, 2, lab.DatapathEBPF)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	st := l.State()
	for _, n := range st.Nodes {
		progs, err := attachedTC(st, n.Name)
		if err != nil {
			t.Fatal(err)
		}
		if len(progs) < 2+len(st.PodsOf(n.Name)) {
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
