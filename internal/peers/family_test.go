package peers_test

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hgw-ebpf/hgw-ebpf/internal/peers"
)

// A dual-stack node runs one Reconciler per family on the same tables:
// each writes, repairs and removes its own family's routes and nexthop
// objects only, whatever the other does.
func TestFamiliesKeepApart(t *testing.T) {
	e4 := newEnv(t)
	e6 := *e4
	e6.fam, e6.rm = peers.IPv6, newMemMap()
	peers4, peers6 := e4.threePeers(), e6.threePeers()
	r4, o4, _ := e4.running(t, peers4)
	r6, o6, _ := e6.running(t, peers6)
	both := func() bool { return e4.converged(t, peers4) && e6.converged(t, peers6) }

	// A deletion of one family's route or object is repaired by that
	// family's Reconciler alone.
	for _, del := range []struct {
		e    *env
		args []string
		o    *observer
	}{
		{&e6, []string{"-6", "route", "del", peers6[0].Subnet.String()}, o6},
		{&e6, []string{"nexthop", "del", "id", fmt.Sprint(peers.NexthopID(peers6[1].NextHop))}, o6},
		{e4, []string{"nexthop", "del", "id", fmt.Sprint(peers.NexthopID(peers4[2].NextHop))}, o4},
	} {
		before4, before6 := o4.repairs.Load(), o6.repairs.Load()
		del.e.ip(t, del.args...)
		waitFor(t, time.Second, fmt.Sprintf("repair after ip %v", del.args), both)
		time.Sleep(100 * time.Millisecond) // any stray repair by the other
		r4n, r6n := o4.repairs.Load()-before4, o6.repairs.Load()-before6
		if (del.o == o4) != (r4n > 0) || (del.o == o6) != (r6n > 0) {
			t.Errorf("ip %v: %d IPv4 and %d IPv6 repairs; want only the %s Reconciler's", del.args, r4n, r6n, del.e.fam)
		}
	}

	// IPv4's peers all leave: IPv6's routes and objects stay, and its
	// full comparison finds nothing to do.
	nh6 := e6.nexthops(t)
	r4.Update(nil)
	waitFor(t, time.Second, "IPv4 peers removed", func() bool { return e4.converged(t, nil) })
	if !e6.converged(t, peers6) {
		t.Errorf("IPv6 routes changed when the IPv4 peers left: %v", e6.ours(t))
	}
	if got := e6.nexthops(t); !reflect.DeepEqual(got, nh6) {
		t.Errorf("nexthop objects %v after the IPv4 peers left; want IPv6's %v", got, nh6)
	}
	runs := o6.runs.Load()
	r6.Resync()
	r6.Update(peers6)
	waitFor(t, time.Second, "IPv6 full comparison", func() bool { return o6.runs.Load() > runs })
	if !e6.converged(t, peers6) || o6.errs.Load() != 0 {
		t.Errorf("IPv6 after its full comparison: %v, %d errors", e6.ours(t), o6.errs.Load())
	}
}

// An IPv6 peer's object takes the first free ID from its hash: another
// program's object or one of ours for someone else there is skipped, the
// latter removed as no peer needs it; a restarted agent finds its objects
// by their gateway and writes nothing.
func TestIPv6NexthopIDs(t *testing.T) {
	e := newEnvFamily(t, peers.IPv6)
	peerList := e.threePeers()
	foreign, stale := peers.NexthopID(peerList[0].NextHop), peers.NexthopID(peerList[1].NextHop)
	e.ip(t, "nexthop", "add", "id", fmt.Sprint(foreign), "via", "fd00:198:18::99", "dev", "eth0", "proto", "static")
	e.ip(t, "nexthop", "add", "id", fmt.Sprint(stale), "via", "fd00:198:18::98", "dev", "eth0", "proto", "104")
	r, _ := e.reconciler(t, e.rm, peers.Options{})

	if res := apply(t, r, peerList); len(res.Errors) != 0 {
		t.Fatalf("errors: %v", res.Errors)
	}
	e.assertConverged(t, peerList)
	if got, want := e.routeLines(t), e.wantLines(peerList); !reflect.DeepEqual(got, want) {
		t.Errorf("ip route:\n got %q\nwant %q (every peer through an object)", got, want)
	}
	want := []string{
		fmt.Sprintf("%d %s", peers.NextNexthopID(foreign), peerList[0].NextHop),
		fmt.Sprintf("%d %s", peers.NextNexthopID(stale), peerList[1].NextHop),
		fmt.Sprintf("%d %s", peers.NexthopID(peerList[2].NextHop), peerList[2].NextHop),
	}
	slices.Sort(want)
	if got := e.nexthops(t); !reflect.DeepEqual(got, want) {
		t.Errorf("ip nexthop (ours): %q, want %q", got, want)
	}
	if out := e.ip(t, "nexthop", "show", "id", fmt.Sprint(foreign)); !slices.Contains(fields(out), "fd00:198:18::99") {
		t.Errorf("the other program's object changed: %q", out)
	}

	restarted, _ := e.reconciler(t, e.rm, peers.Options{})
	res := apply(t, restarted, peerList)
	assertCounts(t, res, 0, 0, 0, 3, 3)
	if got := e.nexthops(t); !reflect.DeepEqual(got, want) {
		t.Errorf("after a restart, ip nexthop: %q, want %q", got, want)
	}
}

// A peer joining between full runs whose first ID another program's
// object holds: the incremental run's create is refused, and the full run
// it asks for picks the next ID.
func TestIPv6NexthopIDTakenBetweenFullRuns(t *testing.T) {
	e := newEnvFamily(t, peers.IPv6)
	peerList := e.threePeers()
	r, _, _ := e.running(t, peerList[:2])
	id := peers.NexthopID(peerList[2].NextHop)
	e.ip(t, "nexthop", "add", "id", fmt.Sprint(id), "via", "fd00:198:18::99", "dev", "eth0", "proto", "static")

	r.Update(peerList)
	waitFor(t, time.Second, "the new peer routed", func() bool { return e.converged(t, peerList) })
	if got, want := e.routeLines(t), e.wantLines(peerList); !reflect.DeepEqual(got, want) {
		t.Errorf("ip route:\n got %q\nwant %q", got, want)
	}
	if got := e.nexthops(t); !slices.Contains(got, fmt.Sprintf("%d %s", peers.NextNexthopID(id), peerList[2].NextHop)) {
		t.Errorf("ip nexthop (ours): %q; want the new peer's at the ID after %d", got, id)
	}
}

func fields(s string) []string { return strings.Fields(s) }
