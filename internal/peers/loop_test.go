package peers_test

import (
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
	"github.com/hgw-ebpf/hgw-ebpf/internal/peers"
	"github.com/hgw-ebpf/hgw-ebpf/internal/testutil"
)

// waitFor polls cond until it holds and returns how long that took.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > timeout {
			t.Fatalf("%s: not within %v", what, timeout)
		}
		time.Sleep(time.Millisecond)
	}
	return time.Since(start)
}

// startRun runs r until the returned stop is called; stop waits for Run.
func startRun(t *testing.T, r *peers.Reconciler) (stop func()) {
	t.Helper()
	return testutil.Run(t, "Run", r.Run)
}

// observer counts the runs Run makes.
type observer struct {
	runs, repairs, errs atomic.Int32
}

func (o *observer) options() peers.Options {
	return peers.Options{
		Observe: func(res peers.Result, d time.Duration) {
			o.runs.Add(1)
			o.errs.Store(int32(len(res.Errors)))
		},
		OnRepair: func() { o.repairs.Add(1) },
	}
}

// running starts a Reconciler on e whose resync is an hour away (only the
// triggers under test run it) and waits until it has applied peers; the
// log is emptied.
func (e *env) running(t *testing.T, peerList []peers.Peer) (*peers.Reconciler, *observer, *testLog) {
	t.Helper()
	o := &observer{}
	opts := o.options()
	opts.ResyncInterval = time.Hour
	r, logs := e.reconciler(t, e.rm, opts)
	startRun(t, r)
	r.Update(peerList)
	waitFor(t, 2*time.Second, "converge after the first Update", func() bool { return e.converged(t, peerList) })
	logs.take()
	return r, o, logs
}

// logged tells whether a line since the last take has msg.
func (l *testLog) logged(msg string) bool {
	for _, line := range l.take() {
		if strings.Contains(line, msg) {
			return true
		}
	}
	return false
}

func TestRun(t *testing.T) {
	e := newEnv(t)
	// A route and entry of ours from a previous agent run.
	leftover := []peers.Peer{peer("10.244.9.0/24", "198.18.0.19")}
	e.addRoute(t, "10.244.9.0/24", "198.18.0.19", peers.RouteProtocol)
	e.rm.set("10.244.9.0/24", "198.18.0.19", e.ifindex)
	var o observer
	r, _ := e.reconciler(t, e.rm, o.options())
	startRun(t, r)

	// An agent that has not heard from etcd yet leaves routes alone,
	// through two resyncs.
	time.Sleep(2*resync + 100*time.Millisecond)
	if n := o.runs.Load(); n != 0 {
		t.Errorf("%d runs applied before the first Update", n)
	}
	e.assertConverged(t, leftover)

	peerList := threePeers()
	r.Update(peerList)
	took := waitFor(t, 2*time.Second, "converge after Update", func() bool { return e.converged(t, peerList) })
	t.Logf("converged %v after Update", took)
	if o.errs.Load() != 0 {
		t.Errorf("Apply reported errors")
	}

	// A map entry lost (no kernel event for that): the resync restores it.
	if err := e.rm.Delete(peerList[1].Subnet); err != nil {
		t.Fatal(err)
	}
	took = waitFor(t, 3*resync, "map entry restored by resync", func() bool { return e.converged(t, peerList) })
	t.Logf("map entry restored in %v (resync every %v)", took, resync)

	// A peer leaving is our own deletion, not a repair.
	repairsBefore := o.repairs.Load()
	r.Update(peerList[:2])
	waitFor(t, 2*time.Second, "peer removal", func() bool { return e.converged(t, peerList[:2]) })
	time.Sleep(200 * time.Millisecond) // let the deletion event arrive
	if n := o.repairs.Load() - repairsBefore; n != 0 {
		t.Errorf("OnRepair called %d times for a deletion Apply made itself", n)
	}
}

// A route of ours deleted by hand is back within 1 s, from the kernel's
// deletion event alone (the resync is an hour away), written on its own.
func TestRunRepairsDeletedRouteAtOnce(t *testing.T) {
	forFamilies(t, func(t *testing.T, fam peers.Family) {
		e := newEnvFamily(t, fam)
		peerList := e.threePeers()
		_, o, logs := e.running(t, peerList)

		lists := e.rm.listed()
		for i, p := range peerList {
			gone := p.Subnet.String()
			repairsBefore := o.repairs.Load()
			e.delRoute(t, gone)
			took := waitFor(t, 2*time.Second, "repair "+gone, func() bool { return e.converged(t, peerList) })
			t.Logf("route %s deleted by hand was restored in %v", gone, took)
			if took >= time.Second {
				t.Errorf("repair %d took %v, want < 1s", i, took)
			}
			waitFor(t, 2*time.Second, "OnRepair call", func() bool { return o.repairs.Load() > repairsBefore })
		}
		// Each was put back on its own, not by a full comparison.
		if n := e.rm.listed() - lists; n != 0 {
			t.Errorf("the repairs listed the map %d times; want none (the deleted route alone is written)", n)
		}
		// A foreign route coming and going is none of our business.
		repairsBefore, runsBefore := o.repairs.Load(), o.runs.Load()
		e.addRoute(t, "10.10.0.0/16", "198.18.0.1", protoStatic)
		e.delRoute(t, "10.10.0.0/16")
		time.Sleep(200 * time.Millisecond)
		if o.repairs.Load() != repairsBefore || o.runs.Load() != runsBefore {
			t.Errorf("a foreign route's deletion triggered %d repairs, %d runs", o.repairs.Load()-repairsBefore, o.runs.Load()-runsBefore)
		}

		var repaired []string
		for _, l := range logs.take() {
			if strings.Contains(l, `msg="route of ours deleted, repairing"`) {
				repaired = append(repaired, field(l, "subnet"))
			}
		}
		if len(repaired) != len(peerList) {
			t.Errorf("repair warnings for %v, want one per deleted route", repaired)
		}
	})
}

// Many triggers at once cost what they change, not a full comparison
// each: a burst of Updates before a run applies only the newest set, in
// one run, and a flush of every route of ours is repaired route by route,
// each written back once, within a second, without listing a table.
func TestRunCoalescesBursts(t *testing.T) {
	e := newEnv(t)
	var o observer
	opts := o.options()
	opts.ResyncInterval = time.Hour // only the triggers under test run it
	r, logs := e.reconciler(t, e.rm, opts)

	var peerList []peers.Peer
	for i := 2; i < 102; i++ {
		peerList = append(peerList, peer(fmt.Sprintf("10.244.%d.0/24", i), fmt.Sprintf("198.18.0.%d", i)))
	}
	// Updates before Run: all pending, one run.
	for i := 1; i <= len(peerList); i++ {
		r.Update(peerList[:i])
	}
	startRun(t, r)
	waitFor(t, 2*time.Second, "converge", func() bool { return e.converged(t, peerList) })
	time.Sleep(50 * time.Millisecond)
	if n := o.runs.Load(); n != 1 {
		t.Errorf("%d runs for 100 pending Updates, want 1", n)
	}
	logs.take()
	lists := e.rm.listed()

	// Every route of ours deleted at once, by hand.
	before := o.runs.Load()
	start := time.Now()
	for _, p := range peerList {
		e.delRoute(t, p.Subnet.String())
	}
	took := waitFor(t, 2*time.Second, "repair of 100 routes", func() bool { return e.converged(t, peerList) })
	t.Logf("100 routes deleted by hand, restored %v after the first deletion", time.Since(start))
	if took >= time.Second {
		t.Errorf("repair took %v after the deletions, want < 1s", took)
	}
	time.Sleep(100 * time.Millisecond)
	runs := o.runs.Load() - before
	t.Logf("%d runs for 100 deletion events", runs)
	if runs > 100 {
		t.Errorf("%d runs for 100 deletions: more than one each", runs)
	}
	if n := e.rm.listed() - lists; n != 0 {
		t.Errorf("the repairs listed the map %d times; want none", n)
	}
	restored := map[string]int{}
	for _, c := range changes(logs.take()) {
		restored[c]++
	}
	if len(restored) != len(peerList) {
		t.Errorf("%d routes logged as restored, want %d: %v", len(restored), len(peerList), restored)
	}
	for c, n := range restored {
		if n != 1 || !strings.HasPrefix(c, "changed ") {
			t.Errorf("%q logged %d times, want once as changed", c, n)
		}
	}
}

// Stopping Run closes the route event socket on purpose: that is no
// failure to warn about.
func TestRunStopsQuietly(t *testing.T) {
	e := newEnv(t)
	r, logs := e.reconciler(t, e.rm, peers.Options{})
	stop := startRun(t, r)
	t.Cleanup(stop)
	peerList := threePeers()
	r.Update(peerList)
	waitFor(t, 2*time.Second, "converge after Update", func() bool { return e.converged(t, peerList) })

	stop()
	time.Sleep(200 * time.Millisecond) // netlink's reader notices the closed socket

	for _, l := range logs.take() {
		if strings.Contains(l, "level=WARN") {
			t.Errorf("warning on a clean stop: %s", l)
		}
	}
}

// Without route events (the subscription cannot be opened) Run still
// applies on Update and on every resync, and says why repairs are slower.
func TestRunWithoutRouteEvents(t *testing.T) {
	e := newEnv(t)
	r, logs := e.reconciler(t, e.rm, peers.Options{})
	peers.WithoutEvents(r)
	startRun(t, r)
	peerList := threePeers()
	r.Update(peerList)
	waitFor(t, 2*time.Second, "converge after Update", func() bool { return e.converged(t, peerList) })

	e.delRoute(t, peerList[0].Subnet.String())
	took := waitFor(t, 3*resync, "repair by resync", func() bool { return e.converged(t, peerList) })
	t.Logf("repaired by resync after %v", took)
	if !logs.logged("cannot watch route deletions") {
		t.Error("no warning that route deletions are not watched")
	}
}

// moved is peerList (threePeers) after .5 joined, .3 moved to another
// host and .4 left.
func (e *env) moved(peerList []peers.Peer) []peers.Peer {
	return []peers.Peer{peerList[0], e.peer("10.244.3.0/24", "198.18.0.23"), e.peer("10.244.5.0/24", "198.18.0.15")}
}

// appliedIncrementally waits for both tables to hold next (moved) after
// how, and checks that it listed the map no more than the lists times
// before it and logged just the three changes.
func (e *env) appliedIncrementally(t *testing.T, how string, next []peers.Peer, lists int, logs *testLog) {
	t.Helper()
	waitFor(t, 2*time.Second, "converge after "+how, func() bool { return e.converged(t, next) })
	if n := e.rm.listed(); n != lists {
		t.Errorf("%s listed the map again (%d times): not incremental", how, n-lists)
	}
	want := e.trSorted([]string{"added 10.244.5.0/24 198.18.0.15", "changed 10.244.3.0/24 198.18.0.23", "removed 10.244.4.0/24 198.18.0.14"})
	time.Sleep(50 * time.Millisecond)
	if got := changes(logs.take()); !reflect.DeepEqual(got, want) {
		t.Errorf("logged changes %v, want %v", got, want)
	}
}

// Update's changes are applied on their own: a new, a moved and a
// departed peer reach both tables without either being listed. The full
// comparison comes with the resync interval and after Resync.
func TestRunAppliesUpdatesIncrementally(t *testing.T) {
	forModes(t, func(t *testing.T, e *env) {
		peerList := e.threePeers()
		r, o, logs := e.running(t, peerList)
		lists := e.rm.listed()
		if lists != 1 {
			t.Errorf("the first run listed the map %d times, want 1 (the full comparison)", lists)
		}

		next := e.moved(peerList)
		r.Update(next)
		e.appliedIncrementally(t, "the second Update", next, lists, logs)
		if got, want := e.routeLines(t), e.wantLines(next); !reflect.DeepEqual(got, want) {
			t.Errorf("ip route:\n got %q\nwant %q", got, want)
		}

		// Drift the incremental runs cannot see: the full comparison finds it.
		if err := e.rm.Delete(next[2].Subnet); err != nil {
			t.Fatal(err)
		}
		r.Update(next) // nothing changed: no run at all
		time.Sleep(100 * time.Millisecond)
		if e.converged(t, next) {
			t.Fatal("the map entry came back without a full run")
		}
		r.Resync()
		r.Update(next)
		waitFor(t, 2*time.Second, "full comparison after Resync", func() bool { return e.converged(t, next) })
		if o.repairs.Load() != 0 {
			t.Errorf("%d repairs for deletions the runs made themselves", o.repairs.Load())
		}
	})
}

// Change's changes are applied on their own, as Update's: a new, a moved
// and a departed peer reach both tables without either being listed.
func TestRunAppliesChanges(t *testing.T) {
	forModes(t, func(t *testing.T, e *env) {
		peerList := e.threePeers()
		r, _, logs := e.running(t, peerList)
		lists := e.rm.listed()
		r.Change([]peers.PeerChange{
			{Peer: e.peer("10.244.5.0/24", "198.18.0.15")},
			{Peer: e.peer("10.244.3.0/24", "198.18.0.23")},
			{Peer: peers.Peer{Subnet: peerList[2].Subnet}, Removed: true},
			{Peer: peers.Peer{Subnet: netip.MustParsePrefix(e.tr("10.244.9.0/24"))}, Removed: true}, // never desired
		})
		next := e.moved(peerList)
		e.appliedIncrementally(t, "the Change", next, lists, logs)
		// The full comparison after Changes compares with the edited set.
		r.Resync()
		r.Update(next)
		time.Sleep(100 * time.Millisecond)
		e.assertConverged(t, next)
		if got := changes(logs.take()); len(got) != 0 {
			t.Errorf("the full comparison after Changes changed %v", got)
		}
	})
}

// On a flat network the underlay's prefix (here 10.0.0.0/8 on eth0) holds
// the pod subnets. A subnet inside a local prefix is routed as any other,
// so a change to it is applied on its own, without a full comparison; only
// a subnet that covers a local prefix goes to the full run, which refuses
// to route it.
func TestRunChangesOnAFlatNetwork(t *testing.T) {
	forModes(t, func(t *testing.T, e *env) {
		addr, err := netlink.ParseAddr(e.tr("10.0.0.11/8"))
		if err != nil {
			t.Fatal(err)
		}
		addr.Flags = unix.IFA_F_NODAD
		if err := e.h.AddrAdd(e.link, addr); err != nil {
			t.Fatalf("address eth0: %v", err)
		}
		peerList := e.threePeers()
		r, _, _ := e.running(t, peerList)
		lists := e.rm.listed()

		joined := e.peer("10.244.5.0/24", "198.18.0.15")
		r.Change([]peers.PeerChange{{Peer: joined}})
		next := append(peerList[:len(peerList):len(peerList)], joined)
		waitFor(t, 2*time.Second, "converge after Change", func() bool { return e.converged(t, next) })
		if n := e.rm.listed(); n != lists {
			t.Errorf("a subnet inside the underlay's prefix went to the full comparison (%d listings)", n-lists)
		}

		// 10.0.0.0/24 covers the node's own 10.0.0.11: never routed.
		covering := e.peer("10.0.0.0/24", "198.18.0.16")
		r.Change([]peers.PeerChange{{Peer: covering}})
		waitFor(t, 2*time.Second, "the full comparison", func() bool { return e.rm.listed() > lists })
		time.Sleep(50 * time.Millisecond)
		e.assertConverged(t, next) // and nothing for the covering subnet
	})
}

// manyPeers is n peers, /24s of 10.0.0.0/8 through 200 underlay hosts.
func (e *env) manyPeers(n int) []peers.Peer {
	var out []peers.Peer
	for i := range n {
		out = append(out, e.peer(fmt.Sprintf("10.%d.%d.0/24", 1+i/256, i%256), fmt.Sprintf("198.18.0.%d", 12+i%200)))
	}
	return out
}

// A change that arrives while a full run compares thousands of peers is
// written at once, between two of its batches, not after it: here during
// the first batch of map entries of a start; the full run then leaves the
// subnets and peers it wrote alone (a stale write would take back the
// moved peer or put back the departed one), and its Result counts them as
// they are.
func TestRunLetsChangesThroughFullRun(t *testing.T) {
	forModes(t, func(t *testing.T, e *env) {
		peerList := e.manyPeers(5000)
		bm := batchMap{e.rm}
		var o observer
		opts := o.options()
		opts.ResyncInterval = time.Hour
		var last atomic.Pointer[peers.Result]
		opts.Observe = func(res peers.Result, _ time.Duration) { o.runs.Add(1); last.Store(&res) }
		r, _ := e.reconciler(t, bm, opts)

		// The last peers are in the full run's last batch: it would
		// write them after the change.
		moved, gone := peerList[len(peerList)-1], peerList[len(peerList)-2]
		joined := e.peer("10.250.0.0/24", "198.18.0.240")
		moved.NextHop = peerList[0].NextHop // an object the full run writes later too
		var once sync.Once
		e.rm.beforeBatch = func([]datapath.Route) {
			once.Do(func() {
				r.Change([]peers.PeerChange{{Peer: joined}, {Peer: moved}, {Peer: peers.Peer{Subnet: gone.Subnet}, Removed: true}})
			})
		}
		r.Update(peerList)
		startRun(t, r)
		final := append(slices.Clone(peerList[:len(peerList)-2]), moved, joined)
		waitFor(t, 10*time.Second, "converge", func() bool { return o.runs.Load() > 0 && e.converged(t, final) })

		// The changes were written before the full run's second batch.
		ops := e.rm.take()
		batches := 0
		for _, op := range ops {
			switch {
			case strings.HasPrefix(op, "batch "):
				batches++
			case op == "put "+joined.Subnet.String():
				if batches != 1 {
					t.Errorf("the joined peer's entry written after batch %d of the full run, want after the first", batches)
				}
			case op == "put "+gone.Subnet.String():
				t.Errorf("%s: the departed peer written by the full run (a stale write)", op)
			}
		}
		if n := slices.Index(ops, "put "+moved.Subnet.String()); n < 0 || slices.Contains(ops[n+1:], "put "+moved.Subnet.String()) {
			t.Errorf("the moved peer's entry written at %d of %d ops; want once (by the change)", n, len(ops))
		}
		if n := o.runs.Load(); n != 1 {
			t.Errorf("%d runs, want the one full run (the changes went through it)", n)
		}
		if res := last.Load(); res.KernelRoutes != len(final) || res.MapEntries != len(final) || len(res.Errors) != 0 {
			t.Errorf("the full run counts %d routes and %d entries (errors %v), want %d", res.KernelRoutes, res.MapEntries, res.Errors, len(final))
		}
	})
}

// A full run that lists a stale entry of ours leaves it alone once a
// change made it desired meanwhile: its listing is older than the change.
func TestRunFullRunKeepsWhatAChangeWrote(t *testing.T) {
	forModes(t, func(t *testing.T, e *env) {
		peerList := e.threePeers()
		r, o, _ := e.running(t, peerList)
		// An entry no peer wants (drift): the next full run removes it,
		// unless a change wants it first.
		e.setMap("10.244.7.0/24", "198.18.0.17", e.ifindex)
		joined := e.peer("10.244.7.0/24", "198.18.0.17")
		var once sync.Once
		e.rm.onList = func() { once.Do(func() { r.Change([]peers.PeerChange{{Peer: joined}}) }) }
		runs := o.runs.Load()
		e.rm.take()
		r.Resync()
		r.Update(peerList)
		final := append(slices.Clone(peerList), joined)
		waitFor(t, 2*time.Second, "converge", func() bool { return o.runs.Load() > runs && e.converged(t, final) })
		if ops := e.rm.take(); slices.Contains(ops, "delete "+joined.Subnet.String()) {
			t.Errorf("map ops %v: the full run deleted the entry the change wanted", ops)
		}
	})
}

// A new peer's map entry is written before its kernel route (the fast
// path does not wait for the kernel), and taken out again when the
// kernel refuses the route: here a route of another program that
// appeared at its destination after the last full run. The full run that
// follows then leaves that destination alone.
func TestRunChangeNewPeerMapFirst(t *testing.T) {
	forModes(t, func(t *testing.T, e *env) {
		peerList := e.threePeers()
		r, _, logs := e.running(t, peerList)
		joined := e.peer("10.244.5.0/24", "198.18.0.15")
		kernelAtPut := -1
		e.rm.afterWrite = func(op string) {
			if op == "put "+joined.Subnet.String() && kernelAtPut < 0 {
				kernelAtPut = len(e.routesTo(t, "10.244.5.0/24"))
			}
		}
		r.Change([]peers.PeerChange{{Peer: joined}})
		next := append(slices.Clone(peerList), joined)
		waitFor(t, 2*time.Second, "converge after Change", func() bool { return e.converged(t, next) })
		if kernelAtPut != 0 {
			t.Errorf("%d kernel routes to the new peer's subnet when its map entry was put; want 0 (map first)", kernelAtPut)
		}

		e.addRoute(t, "10.244.6.0/24", "198.18.0.16", protoStatic)
		refused := e.peer("10.244.6.0/24", "198.18.0.16")
		// Taken out by the change itself, not by the full run after it.
		var deleted, deletedAtList atomic.Bool
		var once sync.Once
		e.rm.afterWrite = func(op string) {
			if op == "delete "+refused.Subnet.String() {
				deleted.Store(true)
			}
		}
		e.rm.onList = func() { once.Do(func() { deletedAtList.Store(deleted.Load()) }) }
		e.rm.take()
		logs.take()
		r.Change([]peers.PeerChange{{Peer: refused}})
		waitFor(t, 2*time.Second, "the refused peer reported", func() bool { return logs.logged("peer not routed") })
		if ops := e.rm.take(); !slices.Contains(ops, "put "+refused.Subnet.String()) || !deletedAtList.Load() {
			t.Errorf("map ops %v (taken out before the full run listed the map: %v); want the refused peer's entry put, then taken out",
				ops, deletedAtList.Load())
		}
		e.assertConverged(t, next)
		if got := e.routesTo(t, "10.244.6.0/24"); len(got) != 1 || got[0].protocol != protoStatic {
			t.Errorf("routes to the refused subnet %v; want the other program's alone", got)
		}
	})
}
