package e2e

import (
	"context"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vishvananda/netlink"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
	"github.com/hgw-ebpf/hgw-ebpf/internal/lab"
	"github.com/hgw-ebpf/hgw-ebpf/internal/registry"
)

// maxConvergence is how long after a lease appears or disappears every
// other node may take to route (or stop routing) to it.
const maxConvergence = time.Second

// A node joins: within 1 s of its lease appearing in etcd every other node
// has the kernel route and the routes-map entry for its subnet, and its pod
// is reachable. It leaves with cleanup: within 1 s of its lease going both
// are gone everywhere.
func TestNodeJoinAndLeave(t *testing.T) {
	l, ctx := startLabFor(t, 2*time.Minute, 2, 1, lab.DatapathEBPF)
	prefix := l.State().EtcdKeys + "/subnets/"

	// Join.
	events := watchLeases(ctx, l.Etcd(), prefix)
	joined, err := l.AddNode(ctx)
	if err != nil {
		t.Fatal(err)
	}
	subnet := netip.MustParsePrefix(joined.Subnet)
	leaseAt := eventTime(t, events, mvccpb.PUT, subnet)
	converged, ok := waitFor(ctx, 5*time.Second, func() bool { return everyPeer(t, l.State(), joined, subnet, true) })
	if !ok {
		t.Fatalf("peers never routed to %s", subnet)
	}
	if d := converged.Sub(leaseAt); d > maxConvergence {
		t.Errorf("peers routed to the new node %s after its lease appeared, want <= %s", d, maxConvergence)
	}
	if _, err := l.AddPod(ctx, joined.Name); err != nil {
		t.Fatal(err)
	}
	pingAll(t, ctx, l.State())

	// Leave with cleanup.
	events = watchLeases(ctx, l.Etcd(), prefix)
	var wg sync.WaitGroup
	var removeErr error
	wg.Go(func() { removeErr = l.RemoveNode(ctx, joined.Name) })
	goneAt := eventTime(t, events, mvccpb.DELETE, subnet)
	converged, ok = waitFor(ctx, 5*time.Second, func() bool { return everyPeer(t, l.State(), joined, subnet, false) })
	wg.Wait()
	if removeErr != nil {
		t.Fatal(removeErr)
	}
	if !ok {
		t.Fatalf("peers still route to %s", subnet)
	}
	if d := converged.Sub(goneAt); d > maxConvergence {
		t.Errorf("peers dropped the node %s after its lease went, want <= %s", d, maxConvergence)
	}
	pingAll(t, ctx, l.State())
}

// everyPeer reports whether every node but self has (want) or lacks (!want)
// both the kernel route and the routes-map entry for subnet via self (an
// IPv6 subnet via self's IPv6, in the routes6 map).
func everyPeer(t *testing.T, st lab.State, self lab.Node, subnet netip.Prefix, want bool) bool {
	via := self.IP
	if subnet.Addr().Is6() {
		via = self.IP6
	}
	for _, n := range st.Nodes {
		if n.Name == self.Name {
			continue
		}
		routes, err := lab.NodeRoutes(n.Name)
		if err != nil {
			t.Logf("routes of %s: %v", n.Name, err)
			return false
		}
		gw, inKernel := routes[subnet]
		if inKernel && gw.String() != via {
			inKernel = false
		}
		inMap, err := mapHas(n, subnet, via)
		if err != nil {
			t.Logf("routes map of %s: %v", n.Name, err)
			return false
		}
		if inKernel != want || inMap != want {
			return false
		}
	}
	return true
}

func mapHas(n lab.Node, subnet netip.Prefix, nexthop string) (bool, error) {
	maps, err := datapath.OpenPinned(n.PinRoot)
	if err != nil {
		return false, err
	}
	defer maps.Close()
	list := maps.Routes().List
	if subnet.Addr().Is6() {
		list = maps.Routes6().List
	}
	routes, err := list()
	if err != nil {
		return false, err
	}
	for _, r := range routes {
		if r.Subnet == subnet && r.NextHop.String() == nexthop {
			return true, nil
		}
	}
	return false, nil
}

type leaseEvent struct {
	typ mvccpb.Event_EventType
	key string
	at  time.Time
}

// watchLeases records when each lease key changes.
func watchLeases(ctx context.Context, cli *clientv3.Client, prefix string) <-chan leaseEvent {
	out := make(chan leaseEvent, 64)
	wc := cli.Watch(ctx, prefix, clientv3.WithPrefix())
	go func() {
		for resp := range wc {
			now := time.Now()
			for _, ev := range resp.Events {
				select {
				case out <- leaseEvent{typ: ev.Type, key: string(ev.Kv.Key), at: now}:
				default:
				}
			}
		}
	}()
	return out
}

// eventTime waits for the event of the given type on subnet's lease key.
func eventTime(t *testing.T, events <-chan leaseEvent, typ mvccpb.Event_EventType, subnet netip.Prefix) time.Time {
	t.Helper()
	suffix := "/" + strings.Replace(subnet.String(), "/", "-", 1)
	timeout := time.After(30 * time.Second)
	for {
		select {
		case ev := <-events:
			// IPv4-only, or dual-stack (<subnet>&<IPv6 subnet>).
			if ev.typ == typ && (strings.HasSuffix(ev.key, suffix) || strings.Contains(ev.key, suffix+"&")) {
				return ev.at
			}
		case <-timeout:
			t.Fatalf("no %s event for the lease of %s", typ, subnet)
		}
	}
}

// `hgw-ebpf cleanup --release-lease`, given only the etcd flags and the
// subnet file, finds the node's lease as `run` does (public IP from the
// default route's device) and releases it: the other nodes drop their
// route and map entry, and it says which lease it released.
func TestCleanupReleasesTheLeaseRunWouldFind(t *testing.T) {
	l, ctx := startLabFor(t, time.Minute, 2, 1, lab.DatapathEBPF)
	st := l.State()
	n := st.Nodes[0]
	subnet := netip.MustParsePrefix(n.Subnet)
	key := st.EtcdKeys + "/subnets/" + registry.SubnetKey(subnet)
	if err := l.StopAgent(n.Name); err != nil {
		t.Fatal(err)
	}
	// Lab nodes have no default route (their agents get --iface); a real
	// node has one, and cleanup takes the public IP from its device.
	addDefaultRoute(t, n)

	out, err := st.Output(ctx, n.Name, filepath.Join(binDir, "hgw-ebpf"), "cleanup", "--release-lease",
		"--etcd-endpoints", lab.EtcdEndpoint(), "--etcd-prefix", st.EtcdKeys,
		"--subnet-file", n.SubnetFile, "--bpffs-root", n.PinRoot)
	if err != nil {
		t.Fatalf("cleanup --release-lease: %v\n%s", err, out)
	}
	if !strings.Contains(out, "lease released") || !strings.Contains(out, key) || !strings.Contains(out, n.IP) {
		t.Errorf("cleanup does not say it released %s of %s:\n%s", key, n.IP, out)
	}
	resp, err := l.Etcd().Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 0 {
		t.Errorf("lease %s still in etcd after cleanup --release-lease", key)
	}
	if _, ok := waitFor(ctx, 5*time.Second, func() bool { return everyPeer(t, l.State(), n, subnet, false) }); !ok {
		t.Errorf("peers still route %s after its lease was released", subnet)
	}
}

// addDefaultRoute gives node n a default route via the underlay bridge's
// address, inside n's namespace (the underlay leads nowhere beyond it).
func addDefaultRoute(t *testing.T, n lab.Node) {
	t.Helper()
	h, err := lab.HandleAt(n.Name)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	gw := netip.MustParsePrefix(n.IP + "/24").Masked().Addr().Next()
	if err := h.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: gw.AsSlice()}); err != nil {
		t.Fatalf("default route in %s: %v", n.Name, err)
	}
}
