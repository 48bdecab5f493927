package e2e

import (
	"context"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/hgw-ebpf/hgw-ebpf/pkg/datapath"
	"github.com/hgw-ebpf/hgw-ebpf/pkg/lab"
)

// maxConvergence is how long after a lease appears or disappears every
// other node may take to route (or stop routing) to it.
const maxConvergence = time.Second

// A node joins: within 1 s of its lease appearing in etcd every other node
// has the kernel route and the routes-map entry for its subnet, and its pod
// is reachable. It leaves with cleanup: within 1 s of its lease going both
// are gone everywhere.
func TestNodeJoinAndLeave(t *testing.T) {
	l := startLab(t, 2, 1, lab.DatapathEBPF)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
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
// both the kernel route and the routes-map entry for subnet via self.
func everyPeer(t *testing.T, st lab.State, self lab.Node, subnet netip.Prefix, want bool) bool {
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
		if inKernel && gw.String() != self.IP {
			inKernel = false
		}
		inMap, err := mapHas(n, subnet, self.IP)
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
	routes, err := maps.Routes().List()
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
			if ev.typ == typ && strings.HasSuffix(ev.key, suffix) {
				return ev.at
			}
		case <-timeout:
			t.Fatalf("no %s event for the lease of %s", typ, subnet)
		}
	}
}
