package e2e

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/hgw-ebpf/hgw-ebpf/internal/lab"
)

// A node run by flanneld (host-gw) — its lease in flanneld's exact JSON
// with flanneld's TTL, no agent of ours — joins a cluster of hgw-ebpf
// nodes: they route to it (kernel route and fast-path entry) and every pod
// reaches every other pod, in both directions.
func TestFlanneldLeaseInterop(t *testing.T) {
	l := startLab(t, 2, 1, lab.DatapathEBPF)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	subnet := netip.MustParsePrefix("10.244.200.0/24")
	fl, err := l.AddFlannelNode(ctx, subnet)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.AddPod(ctx, fl.Name); err != nil {
		t.Fatal(err)
	}
	if _, ok := waitFor(ctx, 5*time.Second, func() bool { return everyPeer(t, l.State(), fl, subnet, true) }); !ok {
		t.Fatalf("hgw-ebpf nodes never routed to the flanneld node's %s", subnet)
	}
	pingAll(t, ctx, l.State())
}
