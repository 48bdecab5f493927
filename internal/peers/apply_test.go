package peers_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hgw-ebpf/hgw-ebpf/internal/peers"
	"github.com/hgw-ebpf/hgw-ebpf/internal/testutil"
)

// changes is the "peer added/changed/removed" lines of a log, as
// "<verb> <subnet> <nexthop>", sorted.
func changes(lines []string) []string {
	var out []string
	for _, l := range lines {
		for _, verb := range []string{"added", "changed", "removed"} {
			if !strings.Contains(l, `msg="peer `+verb+`"`) {
				continue
			}
			if !strings.Contains(l, " dev=eth0") {
				out = append(out, "NO DEV: "+l)
			}
			out = append(out, verb+" "+field(l, "subnet")+" "+field(l, "nexthop"))
		}
	}
	slices.Sort(out)
	return out
}

func field(line, name string) string {
	for _, f := range strings.Fields(line) {
		if v, ok := strings.CutPrefix(f, name+"="); ok {
			return v
		}
	}
	return "<no " + name + ">"
}

func apply(t *testing.T, r *peers.Reconciler, peerList []peers.Peer) peers.Result {
	t.Helper()
	res, err := r.Apply(context.Background(), peerList)
	if (err != nil) != (len(res.Errors) > 0) {
		t.Errorf("Apply returned %v with Result.Errors %v", err, res.Errors)
	}
	return res
}

func TestApplyConvergesFromEmpty(t *testing.T) {
	forModes(t, func(t *testing.T, e *env) {
		r, logs := e.reconciler(t, e.rm, peers.Options{})
		// Two subnets of one peer node share its nexthop object.
		peerList := append(e.threePeers(), e.peer("10.244.12.0/24", "198.18.0.12"))

		res := apply(t, r, peerList)

		if len(res.Errors) != 0 {
			t.Fatalf("errors: %v", res.Errors)
		}
		assertCounts(t, res, 4, 0, 0, 4, 4)
		e.assertConverged(t, peerList)
		want := e.trSorted([]string{"added 10.244.12.0/24 198.18.0.12", "added 10.244.2.0/24 198.18.0.12", "added 10.244.3.0/24 198.18.0.13", "added 10.244.4.0/24 198.18.0.14"})
		if got := changes(logs.take()); !reflect.DeepEqual(got, want) {
			t.Errorf("logged changes %v, want one line per peer %v", got, want)
		}
		if got, want := e.routeLines(t), e.wantLines(peerList); !reflect.DeepEqual(got, want) {
			t.Errorf("ip route:\n got %q\nwant %q", got, want)
		}
		var wantNH []string
		switch {
		case e.plain:
		case e.fam == peers.IPv4:
			// The peer's address as a number: 198.18.0.12 is 0xc612000c.
			wantNH = []string{"3323068428 198.18.0.12", "3323068429 198.18.0.13", "3323068430 198.18.0.14"}
		default:
			// A hash of the address in 224.0.0.0/3, never an IPv4 peer's.
			for _, p := range e.threePeers() {
				id := peers.NexthopID(p.NextHop)
				if id>>29 != 7 {
					t.Errorf("IPv6 nexthop ID %#x of %s is outside 224.0.0.0/3", id, p.NextHop)
				}
				wantNH = append(wantNH, fmt.Sprintf("%d %s", id, p.NextHop))
			}
			slices.Sort(wantNH)
		}
		if got := e.nexthops(t); !reflect.DeepEqual(got, wantNH) {
			t.Errorf("ip nexthop: %q, want %q (one per peer node)", got, wantNH)
		}
	})
}

func TestApplyConvergesFromDrift(t *testing.T) {
	forModes(t, func(t *testing.T, e *env) {
		// Kernel: .2 right, .3 wrong next hop, .9 a departed peer, .5 has a
		// route of ours with a metric Apply never installs; .4 and .5 missing.
		e.addRoute(t, "10.244.2.0/24", "198.18.0.12", peers.RouteProtocol)
		e.addRoute(t, "10.244.3.0/24", "198.18.0.99", peers.RouteProtocol)
		e.addRoute(t, "10.244.9.0/24", "198.18.0.19", peers.RouteProtocol)
		e.addRouteMetric(t, "10.244.5.0/24", "198.18.0.55", peers.RouteProtocol, 50)
		// Map: .2 right, .3 wrong next hop, .4 wrong ifindex, .10 departed; .5 missing.
		e.setMap("10.244.2.0/24", "198.18.0.12", e.ifindex)
		e.setMap("10.244.3.0/24", "198.18.0.99", e.ifindex)
		e.setMap("10.244.4.0/24", "198.18.0.14", e.ifindex+100)
		e.setMap("10.244.10.0/24", "198.18.0.20", e.ifindex)
		r, logs := e.reconciler(t, e.rm, peers.Options{})
		peerList := append(e.threePeers(), e.peer("10.244.5.0/24", "198.18.0.15"))

		res := apply(t, r, peerList)

		if len(res.Errors) != 0 {
			t.Fatalf("errors: %v", res.Errors)
		}
		// Per peer: .5 added; .3 changed (both tables), .4 changed (kernel
		// missing, map wrong); .9 and .10 removed. Through nexthop objects,
		// .2's plain route is changed into one.
		changed := 2
		if !e.plain {
			changed = 3
		}
		assertCounts(t, res, 1, changed, 2, 4, 4)
		ops := e.rm.take()
		if count(ops, "put") != 3 || count(ops, "delete") != 1 || slices.Contains(ops, e.tr("put 10.244.2.0/24")) {
			t.Errorf("map writes %v; want 3 puts (.3 .4 .5), 1 delete (.10), none for the right .2", ops)
		}
		e.assertConverged(t, peerList)
		for _, k := range e.kernel(t) {
			if k.protocol == peers.RouteProtocol && k.metric != e.metric() {
				t.Errorf("route of ours with another metric left: %v", k)
			}
		}
		want := []string{
			"added 10.244.5.0/24 198.18.0.15",
			"changed 10.244.3.0/24 198.18.0.13", "changed 10.244.4.0/24 198.18.0.14",
			"removed 10.244.10.0/24 198.18.0.20", "removed 10.244.9.0/24 198.18.0.19",
		}
		if !e.plain {
			want = slices.Insert(want, 1, "changed 10.244.2.0/24 198.18.0.12")
		}
		want = e.trSorted(want)
		if got := changes(logs.take()); !reflect.DeepEqual(got, want) {
			t.Errorf("logged changes %v, want %v", got, want)
		}
	})
}

func TestApplyLeavesForeignRoutesAndTakesOverFlannels(t *testing.T) {
	forModes(t, func(t *testing.T, e *env) {
		e.addRoute(t, "10.10.0.0/16", "198.18.0.1", protoStatic)  // the admin's
		e.addRoute(t, "10.244.50.0/24", "198.18.0.50", protoBoot) // flanneld's, for no peer of ours
		e.addRoute(t, "10.244.2.0/24", "198.18.0.12", protoBoot)  // flanneld's, for a peer: same next hop
		e.addRoute(t, "10.244.3.0/24", "198.18.0.77", protoBoot)  // flanneld's, for a peer: stale next hop
		r, _ := e.reconciler(t, e.rm, peers.Options{})
		peerList := e.threePeers()

		res := apply(t, r, peerList)

		if len(res.Errors) != 0 {
			t.Fatalf("errors: %v", res.Errors)
		}
		assertCounts(t, res, 3, 0, 0, 3, 3)
		e.assertConverged(t, peerList)
		// Migration: a peer's flanneld route became ours, not a second route.
		for _, p := range []string{"10.244.2.0/24", "10.244.3.0/24"} {
			if got := e.routesTo(t, p); len(got) != 1 || got[0].protocol != peers.RouteProtocol {
				t.Errorf("routes to %s: %v; want only ours", p, got)
			}
		}
		assertForeign := func() {
			t.Helper()
			for _, want := range []kroute{
				{netip.MustParsePrefix(e.tr("10.10.0.0/16")), netip.MustParseAddr(e.tr("198.18.0.1")), e.ifindex, protoStatic, e.metric()},
				{netip.MustParsePrefix(e.tr("10.244.50.0/24")), netip.MustParseAddr(e.tr("198.18.0.50")), e.ifindex, protoBoot, e.metric()},
			} {
				if got := e.routesTo(t, want.subnet.String()); len(got) != 1 || got[0] != want {
					t.Errorf("foreign route touched: %v; want %v", got, want)
				}
			}
		}
		assertForeign()

		// Nor when every peer leaves.
		apply(t, r, nil)
		e.assertConverged(t, nil)
		assertForeign()
	})
}

func TestApplyIsIdempotent(t *testing.T) {
	forModes(t, func(t *testing.T, e *env) {
		r, logs := e.reconciler(t, e.rm, peers.Options{})
		peerList := e.threePeers()
		if res := apply(t, r, peerList); len(res.Errors) != 0 || res.Added != 3 {
			t.Fatalf("first Apply: %+v", res)
		}
		e.rm.take()
		logs.take()
		before := e.notKernels(t)

		// Watch the kernel: an idempotent run sends it no change at all.
		events := e.routeEvents(t)

		res := apply(t, r, peerList)

		if len(res.Errors) != 0 {
			t.Fatalf("errors: %v", res.Errors)
		}
		assertCounts(t, res, 0, 0, 0, 3, 3)
		if ops := e.rm.take(); len(ops) != 0 {
			t.Errorf("second Apply wrote the map: %v", ops)
		}
		if after := e.notKernels(t); !reflect.DeepEqual(after, before) {
			t.Errorf("second Apply changed the kernel routes:\nbefore %v\n after %v", before, after)
		}
		if got := changes(logs.take()); len(got) != 0 {
			t.Errorf("second Apply logged changes: %v", got)
		}
		deadline := time.After(200 * time.Millisecond)
		for {
			select {
			case ev := <-events:
				// eth0 just came up: the kernel's own routes (local table,
				// link-local) still come and go.
				if ev.Family == int(e.fam) && ev.Table == unix.RT_TABLE_MAIN && ev.Protocol == peers.RouteProtocol {
					t.Errorf("second Apply made the kernel send %v", ev)
				}
				continue
			case <-deadline:
			}
			break
		}
	})
}

// A changed next hop must never leave a gap: in the map it is one Put (no
// Delete), in the kernel one replace (no RTM_DELROUTE); deletions of
// departed peers come after every add and change. At every map write,
// each map entry agrees with its kernel route, or its subnet has no route
// at all yet: a new peer's entry comes first (the program forwards on its
// own; what it leaves to the kernel finds no route either way), while a
// changed one never points where the kernel routes elsewhere.
func TestApplyOrderNeverOpensAGap(t *testing.T) {
	forModes(t, func(t *testing.T, e *env) {
		r, _ := e.reconciler(t, e.rm, peers.Options{})
		if res := apply(t, r, e.threePeers()); len(res.Errors) != 0 {
			t.Fatalf("first Apply: %v", res.Errors)
		}
		e.rm.take()

		var violations []string
		e.rm.afterWrite = func(op string) {
			kernel := e.ours(t)
			// A departed peer leaves the map before its kernel route goes.
			if gone, ok := strings.CutPrefix(op, "delete "); ok {
				if _, still := kernel[netip.MustParsePrefix(gone)]; !still {
					violations = append(violations, fmt.Sprintf("kernel route %s deleted before its map entry", gone))
				}
			}
			for subnet, entry := range e.rm.snapshot() {
				if kernel[subnet] != entry && len(e.routesTo(t, subnet.String())) != 0 {
					violations = append(violations, fmt.Sprintf("map ahead of the kernel after %q: map %v, kernel %v", op, entry, e.routesTo(t, subnet.String())))
				}
			}
		}
		events := e.routeEvents(t)

		// .3 moves to another host, .4 leaves, .5 joins.
		peerList := []peers.Peer{
			e.peer("10.244.2.0/24", "198.18.0.12"),
			e.peer("10.244.3.0/24", "198.18.0.23"),
			e.peer("10.244.5.0/24", "198.18.0.15"),
		}
		res := apply(t, r, peerList)

		if len(res.Errors) != 0 {
			t.Fatalf("errors: %v", res.Errors)
		}
		assertCounts(t, res, 1, 1, 1, 3, 3)
		e.assertConverged(t, peerList)
		for _, v := range violations {
			t.Errorf("order: %s", v)
		}

		ops := e.rm.take()
		if want := e.trAll([]string{"put 10.244.5.0/24", "put 10.244.3.0/24", "delete 10.244.4.0/24"}); !reflect.DeepEqual(ops, want) {
			t.Errorf("map writes %v; want %v (the new peer first, the changed next hop as a put after its route, no delete of it, deletions last)", ops, want)
		}

		// The kernel's own account, in order: "new <subnet>" / "del <subnet>".
		var seen []string
		deadline := time.After(300 * time.Millisecond)
	collect:
		for {
			select {
			case ev := <-events:
				if ev.Dst == nil || ev.Family != int(e.fam) {
					continue
				}
				ones, _ := ev.Dst.Mask.Size()
				dst, _ := netip.AddrFromSlice(ev.Dst.IP)
				verb := map[uint16]string{unix.RTM_NEWROUTE: "new", unix.RTM_DELROUTE: "del"}[ev.Type]
				seen = append(seen, verb+" "+netip.PrefixFrom(dst.Unmap(), ones).String())
			case <-deadline:
				break collect
			}
		}
		at := func(op string) int { return slices.Index(seen, e.tr(op)) }
		if at("new 10.244.3.0/24") < 0 || at("new 10.244.5.0/24") < 0 || at("del 10.244.4.0/24") < 0 {
			t.Fatalf("route events %v; want new .3, new .5, del .4 (else the checks below prove nothing)", seen)
		}
		if at("del 10.244.3.0/24") >= 0 {
			t.Errorf("route events %v: 10.244.3.0/24 was deleted while its next hop changed", seen)
		}
		if del := at("del 10.244.4.0/24"); del < at("new 10.244.3.0/24") || del < at("new 10.244.5.0/24") {
			t.Errorf("route events %v: a deletion came before the adds and changes", seen)
		}
	})
}

// One failing item (a route the kernel refuses, a map write that fails)
// is reported and the others are applied; the next run retries it.
func TestApplyOneBadItemDoesNotStopOthers(t *testing.T) {
	forModes(t, func(t *testing.T, e *env) {
		e.rm.failPut = netip.MustParsePrefix(e.tr("10.244.3.0/24"))
		r, _ := e.reconciler(t, e.rm, peers.Options{})
		offLink := e.peer("10.244.66.0/24", "192.0.2.1") // RouteReplace: network unreachable
		peerList := append(e.threePeers(), offLink)

		res, err := r.Apply(context.Background(), peerList)

		if len(res.Errors) != 2 || err == nil {
			t.Fatalf("errors %v (returned %v); want 2: the off-link route and the injected map failure", res.Errors, err)
		}
		var items []string
		for _, err := range res.Errors {
			var ie *peers.ItemError
			if !errors.As(err, &ie) {
				t.Errorf("error %v is no ItemError", err)
				continue
			}
			items = append(items, ie.Table+" "+ie.Op+" "+ie.Subnet.String())
		}
		slices.Sort(items)
		if want := e.trSorted([]string{"kernel replace 10.244.66.0/24", "map put 10.244.3.0/24"}); !reflect.DeepEqual(items, want) {
			t.Errorf("failed items %v, want %v", items, want)
		}
		unreachable := unix.ENETUNREACH
		if e.fam == peers.IPv6 {
			unreachable = unix.EHOSTUNREACH // IPv6's word for an off-link gateway
		}
		if !errors.Is(err, unreachable) {
			t.Errorf("returned error %v does not wrap the kernel's %v", err, unreachable)
		}
		good := e.threePeers()
		ours := e.ours(t)
		for _, p := range good {
			if got, want := ours[p.Subnet], e.want(good)[p.Subnet]; got != want {
				t.Errorf("kernel route for %s: %v, want %v", p.Subnet, got, want)
			}
		}
		if _, ok := ours[offLink.Subnet]; ok {
			t.Errorf("route for the off-link peer exists")
		}
		entries := e.rm.snapshot()
		for _, p := range []peers.Peer{good[0], good[2]} {
			if _, ok := entries[p.Subnet]; !ok {
				t.Errorf("map entry for %s missing", p.Subnet)
			}
		}
		if _, ok := entries[good[1].Subnet]; ok {
			t.Errorf("map entry for %s exists though its put failed", good[1].Subnet)
		}
		if _, ok := entries[offLink.Subnet]; ok {
			t.Errorf("map entry for %s although the kernel refused its route", offLink.Subnet)
		}
		assertCounts(t, res, 3, 0, 0, 3, 2)

		e.rm.failPut = netip.Prefix{}
		if res := apply(t, r, good); len(res.Errors) != 0 {
			t.Fatalf("retry: %v", res.Errors)
		}
		e.assertConverged(t, good)
	})
}

// A map that cannot be listed stops no kernel work, and no map write is
// made blind.
func TestApplyMapListFailure(t *testing.T) {
	e := newEnv(t)
	e.rm.failList = true
	r, _ := e.reconciler(t, e.rm, peers.Options{})

	res := apply(t, r, threePeers())

	if len(res.Errors) != 1 {
		t.Fatalf("errors %v, want the list failure only", res.Errors)
	}
	if got := e.ours(t); !reflect.DeepEqual(got, e.want(threePeers())) {
		t.Errorf("kernel routes %v, want all three peers", got)
	}
	if ops := e.rm.take(); len(ops) != 0 {
		t.Errorf("map written without knowing its content: %v", ops)
	}
}

func TestApplyRoutesOnly(t *testing.T) {
	e := newEnv(t)
	e.addRoute(t, "10.244.9.0/24", "198.18.0.19", peers.RouteProtocol)
	r, _ := e.reconciler(t, nil, peers.Options{})
	peerList := threePeers()

	res := apply(t, r, peerList)

	if len(res.Errors) != 0 {
		t.Fatalf("errors: %v", res.Errors)
	}
	assertCounts(t, res, 3, 0, 1, 3, 0)
	if got := e.ours(t); !reflect.DeepEqual(got, e.want(peerList)) {
		t.Errorf("kernel routes %v, want %v", got, e.want(peerList))
	}
}

func TestApplyStopsOnCancelledContext(t *testing.T) {
	e := newEnv(t)
	r, _ := e.reconciler(t, e.rm, peers.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()

	_, err := r.Apply(ctx, threePeers())

	if !errors.Is(err, context.Canceled) {
		t.Errorf("Apply on a cancelled context: %v, want context.Canceled", err)
	}
	if got := e.ours(t); len(got) != 0 {
		t.Errorf("routes written after cancel: %v", got)
	}
}

func TestRemoveAllKeepsForeignRoutes(t *testing.T) {
	forModes(t, func(t *testing.T, e *env) {
		e.addRoute(t, "10.10.0.0/16", "198.18.0.1", protoStatic)
		e.addRoute(t, "10.244.50.0/24", "198.18.0.50", protoBoot)
		r, _ := e.reconciler(t, e.rm, peers.Options{})
		if res := apply(t, r, e.threePeers()); len(res.Errors) != 0 {
			t.Fatalf("Apply: %v", res.Errors)
		}
		// The kernel's own routes left out: IPv6 adds some as eth0 comes up.
		before := len(e.notKernels(t))

		if err := r.RemoveAll(); err != nil {
			t.Fatalf("RemoveAll: %v", err)
		}

		e.assertConverged(t, nil)
		if got := e.notKernels(t); len(got) != before-3 {
			t.Errorf("routes left %v; want all but our 3", got)
		}
		for _, p := range []string{"10.10.0.0/16", "10.244.50.0/24"} {
			if len(e.routesTo(t, p)) != 1 {
				t.Errorf("foreign route %s removed", p)
			}
		}
	})
}

func TestKernelRoutesAndRemoveKernelRoutes(t *testing.T) {
	forModes(t, func(t *testing.T, e *env) {
		e.addRoute(t, "10.10.0.0/16", "198.18.0.1", protoStatic)
		r, _ := e.reconciler(t, nil, peers.Options{})
		peerList := e.threePeers()
		apply(t, r, peerList)

		got, err := peers.KernelRoutes(&e.ns)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 3 {
			t.Fatalf("KernelRoutes = %v, want our 3", got)
		}
		want := e.want(peerList)
		for _, rt := range got {
			if want[rt.Subnet] != rt {
				t.Errorf("KernelRoutes has %v, want %v", rt, want[rt.Subnet])
			}
		}

		n, nhs, err := peers.RemoveKernelRoutes(&e.ns)
		wantNH := 3
		if e.plain {
			wantNH = 0
		}
		if err != nil || n != 3 || nhs != wantNH {
			t.Fatalf("RemoveKernelRoutes = %d routes, %d nexthops, %v; want 3 and %d", n, nhs, err, wantNH)
		}
		if got := e.nexthops(t); len(got) != 0 {
			t.Errorf("nexthops of ours left: %v", got)
		}
		if left := e.kernel(t); len(e.ours(t)) != 0 || len(e.routesTo(t, "10.10.0.0/16")) != 1 {
			t.Errorf("after RemoveKernelRoutes: %v; want only the foreign and connected routes", left)
		}
	})
}

// A namespace with no route at all has no main table yet, and the kernel
// answers a dump of it with ENOENT: that is an empty table, not an error.
func TestKernelRoutesOfAnEmptyNamespace(t *testing.T) {
	testutil.RequireRoot(t)
	_, ns := testutil.NetNS(t, "rcempty")
	got, err := peers.KernelRoutes(&ns)
	if err != nil || len(got) != 0 {
		t.Errorf("KernelRoutes = %v, %v; want none and no error", got, err)
	}
	if n, nhs, err := peers.RemoveKernelRoutes(&ns); err != nil || n != 0 || nhs != 0 {
		t.Errorf("RemoveKernelRoutes = %d, %d, %v; want 0, 0 and no error", n, nhs, err)
	}
}
