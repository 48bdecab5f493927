package e2e

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/hgw-ebpf/hgw-ebpf/internal/lab"
)

// addFlannelNode adds a node run by flanneld (host-gw), with subnet and a
// pod, and fails t unless every hgw-ebpf node routes to it (kernel route
// and fast-path entry) within the given time.
func addFlannelNode(t *testing.T, ctx context.Context, l *lab.Lab, subnet netip.Prefix, within time.Duration) {
	t.Helper()
	fl, err := l.AddFlannelNode(ctx, subnet)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.AddPod(ctx, fl.Name); err != nil {
		t.Fatal(err)
	}
	if _, ok := waitFor(ctx, within, func() bool { return everyPeer(t, l.State(), fl, subnet, true) }); !ok {
		t.Fatalf("hgw-ebpf nodes never routed to the flanneld node's %s", subnet)
	}
}

// A node run by flanneld (host-gw) — its lease in flanneld's exact JSON
// with flanneld's TTL, no agent of ours — joins a cluster of hgw-ebpf
// nodes: they route to it and every pod reaches every other pod, in both
// directions.
func TestFlanneldLeaseInterop(t *testing.T) {
	l, ctx := startLabFor(t, time.Minute, 2, 1, lab.DatapathEBPF)
	addFlannelNode(t, ctx, l, netip.MustParsePrefix("10.244.200.0/24"), 5*time.Second)
	pingAll(t, ctx, l.State())
}
