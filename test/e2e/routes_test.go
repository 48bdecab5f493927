package e2e

import (
	"testing"
	"time"

	"github.com/hgw-ebpf/hgw-ebpf/internal/lab"
)

// --datapath routes is plain flannel host-gw: the same all-pairs
// connectivity, with no BPF program attached to any device of any node.
func TestRoutesDatapath(t *testing.T) {
	l, ctx := startLabFor(t, time.Minute, 3, 1, lab.DatapathRoutes)
	st := l.State()
	pingAll(t, ctx, st)
	// The same check sees the programs on an ebpf node (so its silence
	// here means something): see TestAllPairsOverFastPath.
	for _, n := range st.Nodes {
		if progs := mustAttachedTC(t, st, n.Name); len(progs) > 0 {
			t.Errorf("%s has TC programs attached with --datapath routes: %+v", n.Name, progs)
		}
	}
}
