package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/hgw-ebpf/hgw-ebpf/pkg/datapath"
	"github.com/hgw-ebpf/hgw-ebpf/pkg/lab"
)

// Every pod reaches every other pod, and the cross-node packets were
// forwarded by the BPF programs, not by the kernel: on each node from_pods
// redirected every request and reply its pods sent to remote pods, and
// from_underlay every one they received.
func TestAllPairsOverFastPath(t *testing.T) {
	const nodes, pods = 3, 2
	l := startLab(t, nodes, pods, lab.DatapathEBPF)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st := l.State()

	for _, n := range st.Nodes {
		if !fastPathAttached(t, st, n.Name) {
			t.Errorf("%s: from_pods/from_underlay not attached to cni0/eth0", n.Name)
		}
	}
	before := counters(t, st)
	pingAll(t, ctx, st)
	after := counters(t, st)

	// Each local pod sends a request to, and answers a request from, each
	// remote pod: at least 2 x local x remote packets each way per node.
	want := uint64(2 * pods * (nodes - 1) * pods)
	for _, n := range st.Nodes {
		for _, prog := range []string{"from_pods", "from_underlay"} {
			got := lab.Redirected(after[n.Name], prog) - lab.Redirected(before[n.Name], prog)
			if got < want {
				t.Errorf("%s: %s redirected %d packets, want >= %d (counters %+v)", n.Name, prog, got, want, after[n.Name])
			}
		}
	}
}

func counters(t *testing.T, st lab.State) map[string][]datapath.Counter {
	t.Helper()
	out := map[string][]datapath.Counter{}
	for _, n := range st.Nodes {
		c, err := n.Counters()
		if err != nil {
			t.Fatal(err)
		}
		out[n.Name] = c
	}
	return out
}
