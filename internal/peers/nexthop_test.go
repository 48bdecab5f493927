package peers_test

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
	"github.com/hgw-ebpf/hgw-ebpf/internal/peers"
)

// dels collects the IPv4 route deletions the kernel reports in the env's
// namespace until stop is called.
func (e *env) dels(t *testing.T) (stop func() []string) {
	t.Helper()
	events := e.routeEvents(t)
	return func() []string {
		time.Sleep(100 * time.Millisecond)
		var out []string
		for {
			select {
			case ev := <-events:
				if ev.Type == unix.RTM_DELROUTE && ev.Dst != nil && ev.Dst.IP.To4() != nil && ev.Table == unix.RT_TABLE_MAIN {
					out = append(out, ev.Dst.String())
				}
			default:
				return out
			}
		}
	}
}

// A node whose routes are of the other form (an agent before nexthop
// objects, or run with --plain-routes) has them replaced in place, never
// deleted first; objects of ours no route needs are removed, another
// program's are left.
func TestApplyConvertsBetweenRouteForms(t *testing.T) {
	forFamilies(t, func(t *testing.T, fam peers.Family) {
		e := newEnvFamily(t, fam)
		peerList := e.threePeers()
		for _, p := range peerList {
			e.addRoute(t, p.Subnet.String(), p.NextHop.String(), peers.RouteProtocol)
		}
		e.ip(t, "nexthop", "add", "id", "7", "via", e.tr("198.18.0.7"), "dev", "eth0", "proto", "static") // not ours

		stop := e.dels(t)
		r, _ := e.reconciler(t, e.rm, peers.Options{})
		res := apply(t, r, peerList)
		if got := stop(); len(got) != 0 || len(res.Errors) != 0 {
			t.Fatalf("to nexthop objects: routes deleted %v, errors %v; want none", got, res.Errors)
		}
		e.assertConverged(t, peerList)
		if got, want := e.routeLines(t), e.wantLines(peerList); !reflect.DeepEqual(got, want) {
			t.Errorf("ip route:\n got %q\nwant %q", got, want)
		}

		e.plain = true
		stop = e.dels(t)
		plain, _ := e.reconciler(t, e.rm, peers.Options{})
		res = apply(t, plain, peerList)
		if got := stop(); len(got) != 0 || len(res.Errors) != 0 {
			t.Fatalf("to plain routes: routes deleted %v, errors %v; want none", got, res.Errors)
		}
		e.assertConverged(t, peerList)
		if got, want := e.routeLines(t), e.wantLines(peerList); !reflect.DeepEqual(got, want) {
			t.Errorf("ip route:\n got %q\nwant %q", got, want)
		}
		if got := e.nexthops(t); len(got) != 0 {
			t.Errorf("nexthop objects of ours left: %v", got)
		}
		if out := e.ip(t, "nexthop", "show", "id", "7"); !strings.Contains(out, e.tr("198.18.0.7")) {
			t.Errorf("another program's nexthop object was removed: %q", out)
		}
	})
}

// A peer's nexthop ID held by another program's object: that peer gets
// plain routes and the object is left as it was.
func TestApplyNexthopIDTakenByAnother(t *testing.T) {
	e := newEnv(t)
	taken := peer("10.244.2.0/24", "198.18.0.12")
	id := fmt.Sprint(uint32(0xc612000c)) // 198.18.0.12 as a number
	e.ip(t, "nexthop", "add", "id", id, "via", "198.18.0.99", "dev", "eth0", "proto", "static")
	r, logs := e.reconciler(t, e.rm, peers.Options{})
	peerList := threePeers()

	if res := apply(t, r, peerList); len(res.Errors) != 0 {
		t.Fatalf("errors: %v", res.Errors)
	}
	e.assertConverged(t, peerList)
	lines := e.routeLines(t)
	want := taken.Subnet.String() + " via 198.18.0.12 dev eth0 proto 104"
	if len(lines) != 3 || lines[0] != want || !strings.Contains(lines[1], "nhid N") {
		t.Errorf("ip route %q; want %q plain, the others through objects", lines, want)
	}
	if out := e.ip(t, "nexthop", "show", "id", id); !strings.Contains(out, "198.18.0.99") {
		t.Errorf("the other program's object changed: %q", out)
	}
	if !logs.logged("nexthop ID taken by another program") {
		t.Error("no warning about the taken nexthop ID")
	}
}

// A nexthop object of ours deleted by hand takes its routes along without
// a route event of their own: its deletion event alone repairs both,
// within a second, on their own.
func TestRunRepairsDeletedNexthop(t *testing.T) {
	forFamilies(t, func(t *testing.T, fam peers.Family) {
		e := newEnvFamily(t, fam)
		// Two subnets through one object.
		peerList := append(e.threePeers(), e.peer("10.244.12.0/24", "198.18.0.12"))
		_, o, _ := e.running(t, peerList)
		lists := e.rm.listed()

		e.ip(t, "nexthop", "del", "id", fmt.Sprint(peers.NexthopID(peerList[0].NextHop)))
		if got := e.ours(t); len(got) != 2 {
			t.Logf("right after the deletion: %d routes of ours", len(got)) // the repair may already have begun
		}
		took := waitFor(t, 2*time.Second, "repair", func() bool { return e.converged(t, peerList) })
		t.Logf("nexthop object deleted by hand: both its routes restored in %v", took)
		if took >= time.Second {
			t.Errorf("repair took %v, want < 1s", took)
		}
		// OnRepair follows the run that converged, a moment later.
		waitFor(t, 2*time.Second, "OnRepair call", func() bool { return o.repairs.Load() > 0 })
		if n := e.rm.listed() - lists; n != 0 {
			t.Errorf("the repair listed the map %d times; want none (the peer's object and routes alone are written)", n)
		}
		if got, want := e.routeLines(t), e.wantLines(peerList); !reflect.DeepEqual(got, want) {
			t.Errorf("ip route:\n got %q\nwant %q", got, want)
		}
	})
}

// A start fills the map before the kernel: every new peer's entry in one
// batch, written while the kernel has none of their routes.
func TestApplyFillsMapBeforeKernel(t *testing.T) {
	forModes(t, func(t *testing.T, e *env) {
		bm := batchMap{e.rm}
		var peerList []peers.Peer
		for i := 12; i < 62; i++ { // not .11, the node's own: IPv6 refuses a local gateway
			peerList = append(peerList, e.peer(fmt.Sprintf("10.244.%d.0/24", i), fmt.Sprintf("198.18.0.%d", i)))
		}
		kernelAtBatch := -1
		e.rm.beforeBatch = func([]datapath.Route) { kernelAtBatch = len(e.ours(t)) }
		r, _ := e.reconciler(t, bm, peers.Options{})

		if res := apply(t, r, peerList); len(res.Errors) != 0 {
			t.Fatalf("errors: %v", res.Errors)
		}
		e.assertConverged(t, peerList)
		if ops := e.rm.take(); len(ops) == 0 || ops[0] != "batch 50" {
			t.Errorf("map writes start %v; want one batch of all 50", ops[:min(3, len(ops))])
		}
		if kernelAtBatch != 0 {
			t.Errorf("%d kernel routes of ours when the map was filled; want 0 (map first)", kernelAtBatch)
		}
	})
}
