package e2e

import (
	"net"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
	"github.com/hgw-ebpf/hgw-ebpf/internal/lab"
)

// detachPinnedLinks detaches every program of node n through its pinned
// link, as an operator with bpftool would.
func detachPinnedLinks(t *testing.T, n lab.Node) {
	t.Helper()
	pins, err := filepath.Glob(filepath.Join(n.PinRoot, "links", "*"))
	if err != nil || len(pins) == 0 {
		t.Fatalf("no pinned links under %s (%v): tcx expected on this kernel", n.PinRoot, err)
	}
	for _, pin := range pins {
		lk, err := link.LoadPinnedLink(pin, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := lk.Detach(); err != nil {
			t.Fatalf("detach %s: %v", pin, err)
		}
		lk.Close()
	}
}

// A route deleted by hand is back within 1 s. Programs detached by hand:
// traffic keeps flowing over the kernel routes, and the agent reattaches
// them on its next resync.
func TestRepairsRouteAndAttachment(t *testing.T) {
	l, ctx := startLabFor(t, time.Minute, 2, 1, lab.DatapathEBPF)
	st := l.State()
	n1, n2 := st.Nodes[0], st.Nodes[1]
	peer := netip.MustParsePrefix(n2.Subnet)

	// Route deleted by hand.
	var deletedAt time.Time
	err := st.Do(n1.Name, func() error {
		deletedAt = time.Now()
		return netlink.RouteDel(&netlink.Route{Dst: &net.IPNet{IP: peer.Addr().AsSlice(), Mask: net.CIDRMask(peer.Bits(), 32)}})
	})
	if err != nil {
		t.Fatalf("delete route %s in %s: %v", peer, n1.Name, err)
	}
	restored, ok := waitFor(ctx, 5*time.Second, func() bool {
		routes, err := lab.NodeRoutes(n1.Name)
		return err == nil && routes[peer].String() == n2.IP
	})
	if !ok {
		t.Fatalf("route %s never restored in %s", peer, n1.Name)
	}
	if d := restored.Sub(deletedAt); d > time.Second {
		t.Errorf("route restored after %s, want <= 1s", d)
	}

	// Programs detached by hand.
	detachPinnedLinks(t, n1)
	if fastPathAttached(t, st, n1.Name) {
		t.Fatal("programs still attached after the manual detach")
	}
	pingAll(t, ctx, st) // kernel routes carry the traffic meanwhile
	if _, ok := waitFor(ctx, 10*time.Second, func() bool { return fastPathAttached(t, st, n1.Name) }); !ok {
		t.Fatal("agent did not reattach the programs on its resync")
	}
	before, _ := n1.Counters()
	pingAll(t, ctx, st)
	after, _ := n1.Counters()
	if datapath.Redirected(after, "from_pods") == datapath.Redirected(before, "from_pods") {
		t.Error("reattached from_pods redirects nothing")
	}
}
