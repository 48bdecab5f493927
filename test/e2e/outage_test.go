package e2e

import (
	"net/netip"
	"testing"
	"time"

	"github.com/hgw-ebpf/hgw-ebpf/internal/lab"
)

// etcd stops for 10 s and comes back: traffic between pods never stops,
// the agents reconnect, and a lease added once etcd is back (while the
// agents are still reconnecting) is routed to.
func TestEtcdOutage(t *testing.T) {
	l, ctx := startLabFor(t, 2*time.Minute, 2, 1, lab.DatapathEBPF)
	st := l.State()
	a, b := st.Pods[0], st.Pods[1]

	wait := startPinger(t, st, a.Name, b.IP, 1200, 10*time.Millisecond) // 12 s
	l.StopEtcd()
	time.Sleep(10 * time.Second)
	if err := l.StartEtcd(ctx); err != nil {
		t.Fatal(err)
	}
	sent, got := wait()
	if sent == 0 || got != sent {
		t.Errorf("ping across the etcd outage: %d sent, %d received", sent, got)
	}
	// A lease added after the outage is followed.
	addFlannelNode(t, ctx, l, netip.MustParsePrefix("10.244.210.0/24"), 20*time.Second)
	pingAll(t, ctx, l.State())
	// The agents' own leases survived the outage.
	leases, err := l.Leases(ctx)
	if err != nil || len(leases) != 3 {
		t.Errorf("leases after the outage: %+v, %v", leases, err)
	}
}
