package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
	"github.com/hgw-ebpf/hgw-ebpf/internal/lab"
	"github.com/hgw-ebpf/hgw-ebpf/internal/lab/labtest"
)

// Every pod reaches every other pod, over IPv4 and over IPv6 (a
// dual-stack cluster), and the cross-node packets were forwarded by the
// BPF programs, not by the kernel.
func TestAllPairsOverFastPath(t *testing.T) {
	const nodes, pods = 3, 2
	l := startLabConfig(t, lab.Config{Nodes: nodes, PodsPerNode: pods, Datapath: lab.DatapathEBPF, DualStack: true})
	ctx := testContext(t, time.Minute)
	expectAllPairsOverFastPath(t, ctx, l.State(), nodes, pods)
}

// expectAllPairsOverFastPath pings every pod pair, over IPv4 and in a
// dual-stack lab over IPv6 too, and expects on each node from_pods to have
// redirected every request and reply its pods sent to remote pods, and
// from_underlay every one they received, counted under each family.
func expectAllPairsOverFastPath(t *testing.T, ctx context.Context, st lab.State, nodes, pods int) {
	t.Helper()
	for _, n := range st.Nodes {
		if !fastPathAttached(t, st, n.Name) {
			t.Errorf("%s: from_pods/from_underlay not attached to cni0/eth0", n.Name)
		}
	}
	type family struct {
		name    string
		pingAll func(context.Context, int) []lab.PingResult
	}
	fams := []family{{"ipv4", st.PingAll}}
	if st.DualStack {
		fams = append(fams, family{"ipv6", st.PingAll6})
	}
	for _, f := range fams {
		before := labtest.AllCounters(t, st)
		expectAll(t, f.name, f.pingAll(ctx, 16), len(st.Pods))
		after := labtest.AllCounters(t, st)

		// Each local pod sends a request to, and answers a request from,
		// each remote pod: at least 2 x local x remote packets each way
		// per node.
		want := uint64(2 * pods * (nodes - 1) * pods)
		for _, n := range st.Nodes {
			for _, prog := range []string{"from_pods", "from_underlay"} {
				got := datapath.Redirected(datapath.OfFamily(datapath.Delta(before[n.Name], after[n.Name]), f.name), prog)
				if got < want {
					t.Errorf("%s: %s redirected %d %s packets, want >= %d (counters %+v)", n.Name, prog, got, f.name, want, after[n.Name])
				}
			}
		}
	}
}
