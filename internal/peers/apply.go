package peers

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
)

// entry is one subnet's state in one table.
type entry struct {
	nexthop netip.Addr
	ifindex int
}

// Apply makes the kernel routes, nexthop objects and map entries of ours
// equal to peers (the full comparison: both tables are listed),
// idempotently: what is right is not written again. One failing item
// does not stop the others; all failures are in Result.Errors and, joined,
// in the returned error. ctx stops the run between batches of writes.
//
// Order. A peer new to the kernel (no route at all for its subnet) gets
// its map entry first, in one batch with every other new peer, and its
// kernel route after: a start with tens of thousands of peers has its fast
// path complete long before the kernel's routes are. That does not let
// the map send a packet where the kernel would not: the program forwards
// by itself (bpf_redirect_neigh to the peer resolves the neighbour, not a
// route), and a packet it leaves to the kernel would find no route for
// that subnet with or without the entry. If the kernel route then fails,
// the entry is taken out again. A peer whose subnet already has a kernel
// route (ours, or flanneld's being taken over) is written kernel first:
// the map never points elsewhere than a route that exists. A changed next
// hop is overwritten in place in both (never deleted first). Departed
// peers leave the map before their kernel route goes, and our nexthop
// objects go last, once no route of ours needs them. Nexthop objects
// come before the routes that use them.
func (r *Reconciler) Apply(ctx context.Context, peers []Peer) (Result, error) {
	r.applyMu.Lock()
	defer r.applyMu.Unlock()
	want := newPrefixMap[desiredPeer](len(peers))
	var errs []error
	for _, p := range peers {
		p.Subnet = p.Subnet.Masked() // the kernel and the map list masked prefixes
		if err := r.checkFamily(p); err != nil {
			errs = append(errs, &ItemError{Subnet: p.Subnet, Table: "kernel", Op: "replace", Err: err})
			continue
		}
		if _, dup := want.get(p.Subnet); !dup { // Desired never yields duplicates; the first wins
			want.set(p.Subnet, desiredPeer{nexthop: p.NextHop, key: p.Key})
		}
	}
	a := r.plan(ctx, want, false)
	a.res.Errors = append(errs, a.res.Errors...)
	a.execute(ctx)
	return a.finish(ctx)
}

// fullLive is Run's full comparison, of the desired peers Run holds. It
// lets the incremental runs through between its steps (yield): a lease
// that arrives meanwhile is written at once, not after tens of thousands
// of peers are compared, and the full run leaves what such a run wrote
// alone (its listing is older). applyMu is held.
func (r *Reconciler) fullLive(ctx context.Context) Result {
	a := r.plan(ctx, r.last, true)
	a.execute(ctx)
	a.yield(ctx)
	res, _ := a.finish(ctx)
	r.active, r.c.idle = nil, nil
	return res
}

// fullRun is one full comparison: the desired and the listed state, and
// the result.
type fullRun struct {
	r   *Reconciler
	res Result
	// want is the desired peers: Run's own set during Run (which changes
	// as incremental runs go through: see touched).
	want prefixMap[desiredPeer]

	ks       *kernelState
	kernelOK bool // kernel listed: without it nothing is written blind
	inMap    prefixMap[entry]
	mapOK    bool                    // map present and listed
	blocked  map[netip.Prefix]string // wanted, not ours to route: reason
	nhid     addrMap[uint32]         // usable nexthop object per peer
	nhErr    map[netip.Addr]error    // peers whose nexthop object could not be written

	wrote   prefixMap[tables] // tables written per subnet (log)
	removed prefixMap[tables]

	// What incremental runs wrote during this run (Run's only): subnets
	// and peers this run no longer touches, with the state they left
	// (for the counts), and their results.
	live      bool
	touched   prefixMap[touch]
	touchedNH addrMap[bool]
	deltas    Result
}

// touch is what incremental runs left of a subnet in each table during a
// full run: 1 present, -1 absent, 0 not known.
type touch struct{ kernel, inMap int8 }

// kernelState is one listing of what the kernel holds that Apply needs.
type kernelState struct {
	ours     prefixMap[kernelEntry]  // our routes where Apply puts them (main, TOS 0, metric 0)
	odd      []kroute                // other routes of ours: removed
	others   map[netip.Prefix]kroute // other programs' routes where Apply would write
	local    []netip.Prefix
	nexthops map[uint32]knexthop // every nexthop object (nil: the kernel has none)
}

// kernelEntry is a route of ours: where it sends, and through which
// nexthop object (0: a plain route).
type kernelEntry struct {
	entry
	nhid uint32
}

// plan lists both tables for want. live: want is Run's desired set, and
// incremental runs may go through from here on.
func (r *Reconciler) plan(ctx context.Context, want prefixMap[desiredPeer], live bool) *fullRun {
	n := want.len()
	a := &fullRun{r: r, want: want, blocked: map[netip.Prefix]string{}, nhid: newAddrMap[uint32](n), nhErr: map[netip.Addr]error{},
		wrote: newPrefixMap[tables](0), removed: newPrefixMap[tables](0), inMap: newPrefixMap[entry](0)}
	if live {
		a.live, a.touched, a.touchedNH = true, newPrefixMap[touch](0), newAddrMap[bool](0)
		r.active = a
		r.c.idle = func() { a.yield(ctx) }
	}
	var err error
	if a.ks, err = r.listKernel(); err != nil {
		a.res.Errors = append(a.res.Errors, err)
	}
	a.kernelOK = err == nil
	a.yield(ctx)
	if r.opts.RouteMap != nil {
		if a.inMap, err = r.listMap(); err != nil {
			a.res.Errors = append(a.res.Errors, err)
		}
		a.mapOK = err == nil
	}
	if a.kernelOK {
		r.setLocal(a.ks.local)
		a.block(ctx)
	}
	return a
}

// yield applies what arrived for Run since the run started (or last
// yielded), as an incremental run, and takes its subnets and peers out
// of this run. Called between the steps of a live run (between the
// datagrams of a dump, the windows of writes, the batches of map
// entries) and at each subnet of its walks over every peer: a walk over
// tens of thousands takes tens of milliseconds, longer than a new lease
// should wait. With nothing waiting it costs one atomic load. What a
// walk decided for a subnet before an incremental run took it is
// dropped where it would be acted on (mine).
func (a *fullRun) yield(ctx context.Context) {
	r := a.r
	if !a.live || !r.waiting.Load() || r.nh == nhUnknown || ctx.Err() != nil {
		return // the first dump probes for nexthop objects: changes wait for it
	}
	r.absorb()
	if len(r.delta) == 0 {
		return
	}
	res, needFull := r.applyDelta(ctx)
	a.deltas.Added += res.Added
	a.deltas.Changed += res.Changed
	a.deltas.Removed += res.Removed
	a.deltas.Errors = append(a.deltas.Errors, res.Errors...)
	if needFull {
		r.Resync() // what it could not settle: after this run
		r.trigger()
	}
}

// touch takes subnet out of this run, noting what an incremental run
// left of it (0: no news).
func (a *fullRun) touch(subnet netip.Prefix, kernel, inMap int8) {
	t, _ := a.touched.get(subnet)
	if kernel != 0 {
		t.kernel = kernel
	}
	if inMap != 0 {
		t.inMap = inMap
	}
	a.touched.set(subnet, t)
}

// touchNexthop takes peer's nexthop object out of this run: an
// incremental run wrote or used it.
func (a *fullRun) touchNexthop(peer netip.Addr) { a.touchedNH.set(peer, true) }

// mine tells a subnet this run may still write: no incremental run took
// it over.
func (a *fullRun) mine(p netip.Prefix) bool {
	if !a.live {
		return true
	}
	_, t := a.touched.get(p)
	return !t
}

// wantEntry is a wanted subnet's entry.
func (a *fullRun) wantEntry(p netip.Prefix) (entry, bool) {
	w, ok := a.want.get(p)
	return entry{nexthop: w.nexthop, ifindex: a.r.ifindex()}, ok
}

// block sets aside the wanted subnets that are not ours to route: another
// program's route sits exactly where ours would (the kernel's replace
// would silently take it over, whatever its protocol), or the subnet
// covers a local route or address of this node. flanneld's own routes are
// the exception: taking them over is how a node moves from flanneld.
func (a *fullRun) block(ctx context.Context) {
	r := a.r
	a.want.each(func(subnet netip.Prefix, _ desiredPeer) bool {
		a.yield(ctx)
		if k, ok := a.ks.others[subnet]; ok && !k.flanneld(r.ifindex()) {
			a.blocked[subnet] = fmt.Sprintf("route of protocol %d holds it: %s", k.protocol, k)
			return true
		}
		if l := coveredLocal(a.ks.local, subnet); l.IsValid() {
			a.blocked[subnet] = "covers the local prefix " + l.String()
		}
		return true
	})
	r.logBlocked(a.blocked, a.keysOf(sortedKeys(a.blocked, func(p netip.Prefix) bool { return r.blockLogged[p] != a.blocked[p] })))
	r.blockedSet = a.blocked
	a.res.Blocked = len(a.blocked)
}

// logBlocked logs each blocked subnet once per reason.
func (r *Reconciler) logBlocked(blocked map[netip.Prefix]string, keys map[netip.Prefix]string) {
	for subnet, why := range blocked {
		if r.blockLogged[subnet] == why {
			continue
		}
		r.blockLogged[subnet] = why
		r.opts.Log.Warn("peer not routed: its destination is not ours to replace", "subnet", subnet,
			"key", keys[subnet], "dev", r.dev(), "reason", why)
	}
	for subnet := range r.blockLogged {
		if _, still := blocked[subnet]; !still {
			delete(r.blockLogged, subnet)
		}
	}
}

// listKernel lists routes, addresses and (once the kernel is known to
// have them) nexthop objects, its maps sized for what the last run left
// (a start finds none: tens of thousands of empty slots would be most of
// the agent's memory then). The first listing probes for nexthop objects
// and says which kind of route the agent installs.
func (r *Reconciler) listKernel() (*kernelState, error) {
	ks := &kernelState{}
	var err error
	if r.nh != nhNone { // first: routes of ours are resolved through them
		ks.nexthops, err = r.c.listNexthops(r.nexthops.len())
		switch {
		case err != nil && nexthopsUnsupported(err):
			r.opts.Log.Info("the kernel has no nexthop objects: plain kernel routes", "family", r.fam, "dev", r.dev(), "reason", err)
			r.nh = nhNone
		case err != nil:
			return nil, err
		case r.nh == nhUnknown:
			r.opts.Log.Info("kernel routes through nexthop objects, one per peer node", "family", r.fam, "dev", r.dev())
			r.nh = nhOn
		}
	}
	var local []kroute
	start := func() {
		ks.ours, ks.others, ks.odd, local = newPrefixMap[kernelEntry](r.kernelN), map[netip.Prefix]kroute{}, nil, nil
	}
	start()
	err = r.c.eachRoute(r.fam, start, func(k kroute) {
		switch {
		case k.ours() && k.keyed() && k.typ == unix.RTN_UNICAST && k.dst.Bits() > 0:
			ks.ours.set(k.dst, kernelEntry{entry: resolve(k, ks.nexthops), nhid: k.nhid})
		case k.ours():
			ks.odd = append(ks.odd, k) // a metric, TOS or type Apply never installs
		default:
			if k.keyed() {
				if _, seen := ks.others[k.dst]; !seen || !k.flanneld(r.ifindex()) {
					ks.others[k.dst] = k
				}
			}
			if k.local() {
				local = append(local, k)
			}
		}
	})
	if err != nil {
		return nil, err
	}
	addrs, err := r.c.listAddrs(r.fam)
	if err != nil {
		return nil, err
	}
	ks.local = localPrefixes(local, addrs)
	return ks, nil
}

func (r *Reconciler) listMap() (prefixMap[entry], error) {
	list, err := r.opts.RouteMap.List()
	if err != nil {
		return newPrefixMap[entry](0), fmt.Errorf("list routes map: %w", err)
	}
	out := newPrefixMap[entry](len(list))
	for _, e := range list {
		out.set(e.Subnet, entry{nexthop: e.NextHop, ifindex: int(e.Ifindex)})
	}
	return out, nil
}

// routable tells a wanted subnet Apply writes.
func (a *fullRun) routable(subnet netip.Prefix) bool {
	_, blocked := a.blocked[subnet]
	return !blocked
}

// execute makes the writes, in the order Apply documents. A live run
// yields between its steps too: each of them walks every peer.
func (a *fullRun) execute(ctx context.Context) {
	if !a.kernelOK {
		return // nothing is written blind: not even the map
	}
	// 1. Map entries of peers the kernel has no route for at all.
	if a.mapOK {
		a.putMap(ctx, a.want.keys(func(p netip.Prefix, _ desiredPeer) bool {
			a.yield(ctx)
			e, ok := a.inMap.get(p)
			w, _ := a.wantEntry(p)
			return a.fresh(p) && (!ok || e != w)
		}))
	}
	if ctx.Err() != nil {
		return
	}
	// 2. Nexthop objects, 3. routes.
	a.yield(ctx)
	a.writeNexthops(ctx)
	a.yield(ctx)
	a.writeRoutes(ctx)
	a.yield(ctx)
	// 4. The other map entries, once their route is right; entries put
	// early whose route failed come out again.
	if a.mapOK {
		a.putMap(ctx, a.want.keys(func(p netip.Prefix, _ desiredPeer) bool {
			a.yield(ctx)
			e, _ := a.inMap.get(p)
			w, _ := a.wantEntry(p)
			return !a.fresh(p) && a.routed(p) && e != w
		}))
		for _, p := range a.wrote.keys(func(p netip.Prefix, t tables) bool {
			a.yield(ctx)
			return t&tabMap != 0 && a.fresh(p) && !a.routed(p)
		}) {
			if !a.mine(p) {
				continue
			}
			if a.deleteMap(p, "rollback") {
				if t, _ := a.wrote.get(p); t&^tabMap == 0 {
					a.wrote.delete(p)
				} else {
					a.wrote.set(p, t&^tabMap)
				}
			}
		}
		a.yield(ctx)
	}
	a.removeStale(ctx)
}

// fresh tells a wanted subnet the kernel had no route for at all.
func (a *fullRun) fresh(p netip.Prefix) bool {
	_, ours := a.ks.ours.get(p)
	_, other := a.ks.others[p]
	return a.routable(p) && !ours && !other
}

// right tells a wanted subnet whose route of ours was right before the run.
func (a *fullRun) right(p netip.Prefix) bool {
	w, _ := a.wantEntry(p)
	cur, had := a.ks.ours.get(p)
	id, _ := a.nhid.get(w.nexthop)
	return had && cur.entry == w && cur.nhid == id
}

// routed tells a wanted subnet whose route is right now: it was, or the
// run wrote it.
func (a *fullRun) routed(p netip.Prefix) bool {
	t, _ := a.wrote.get(p)
	return a.routable(p) && (a.right(p) || t&tabKernel != 0)
}

func (a *fullRun) noteWrote(p netip.Prefix, t tables) {
	old, _ := a.wrote.get(p)
	a.wrote.set(p, old|t)
}

// mapBatch is how many map entries one batch writes: a live run lets
// incremental runs through between batches.
const mapBatch = 2048

// putMap writes the wanted entries of subnets, in batches where the map
// can.
func (a *fullRun) putMap(ctx context.Context, subnets []netip.Prefix) {
	rts := make([]datapath.Route, 0, min(len(subnets), mapBatch))
	todo := make([]netip.Prefix, 0, cap(rts))
	for start := 0; start < len(subnets); start += mapBatch {
		a.yield(ctx)
		rts, todo = rts[:0], todo[:0]
		for _, p := range subnets[start:min(start+mapBatch, len(subnets))] {
			if !a.mine(p) {
				continue
			}
			w, _ := a.wantEntry(p)
			rts = append(rts, datapath.Route{Subnet: p, NextHop: w.nexthop, Ifindex: uint32(w.ifindex)})
			todo = append(todo, p)
		}
		done := 0
		if bm, ok := a.r.opts.RouteMap.(BatchRouteMap); ok && len(rts) > 1 {
			done, _ = bm.PutBatch(rts) // the rest one by one below, to name the failure
		}
		for i, p := range todo {
			if i >= done {
				if err := a.r.opts.RouteMap.Put(rts[i]); err != nil {
					a.fail(p, "map", "put", err)
					continue
				}
			}
			if _, had := a.inMap.get(p); !had {
				a.res.MapEntries++
			}
			a.noteWrote(p, tabMap)
		}
	}
}

func (a *fullRun) deleteMap(p netip.Prefix, why string) bool {
	if err := a.r.opts.RouteMap.Delete(p); err != nil {
		a.fail(p, "map", "delete", fmt.Errorf("%s: %w", why, err))
		return false
	}
	a.res.MapEntries--
	return true
}

// writeNexthops creates (or corrects) the nexthop object of every peer
// whose subnets are routed, and records which peers can use one.
func (a *fullRun) writeNexthops(ctx context.Context) {
	r := a.r
	if r.nh != nhOn {
		return
	}
	type write struct {
		peer  netip.Addr
		id    uint32
		flags uint16
	}
	var writes []write
	seen := newAddrMap[bool](a.want.len())
	ids := a.idPicker()
	a.want.each(func(p netip.Prefix, w desiredPeer) bool {
		a.yield(ctx)
		if done, _ := seen.get(w.nexthop); done || !a.routable(p) || !a.mine(p) {
			return true
		}
		seen.set(w.nexthop, true)
		if a.live {
			if _, t := a.touchedNH.get(w.nexthop); t {
				if id, ok := r.nexthops.get(w.nexthop); ok {
					a.nhid.set(w.nexthop, id) // written by an incremental run meanwhile
				}
				return true
			}
		}
		id := ids.pick(w.nexthop)
		n, exists := a.ks.nexthops[id]
		e := entry{nexthop: w.nexthop, ifindex: r.ifindex()}
		switch {
		case !exists:
			writes = append(writes, write{w.nexthop, id, unix.NLM_F_CREATE | unix.NLM_F_EXCL})
		case n.serves(e):
			a.nhid.set(w.nexthop, id)
		case n.oursIn(r.fam):
			writes = append(writes, write{w.nexthop, id, unix.NLM_F_CREATE | unix.NLM_F_REPLACE})
		default:
			if !r.nhLogged[id] {
				r.nhLogged[id] = true
				r.opts.Log.Warn("nexthop ID taken by another program: plain routes to this peer", "nexthop", w.nexthop,
					"id", id, "protocol", n.protocol, "dev", r.dev())
			}
		}
		return true
	})
	slices.SortFunc(writes, func(x, y write) int { return x.peer.Compare(y.peer) })
	r.c.execEach(context.Background(), len(writes), func(i int) (request, bool) {
		w := writes[i]
		if a.live {
			if _, t := a.touchedNH.get(w.peer); t {
				return request{}, false // an incremental run wrote it meanwhile
			}
		}
		return nexthopRequest(unix.RTM_NEWNEXTHOP, w.flags, w.id, entry{nexthop: w.peer, ifindex: r.ifindex()}), true
	}, func(i int, err error) {
		w := writes[i]
		switch {
		case errors.Is(err, errSkipped):
			if id, ok := r.nexthops.get(w.peer); ok {
				a.nhid.set(w.peer, id)
			}
		case err != nil:
			// Its subnets' routes fail with it (writeRoutes); the next run
			// retries.
			a.nhErr[w.peer] = fmt.Errorf("nexthop %d via %s dev %s: %w", w.id, w.peer, r.dev(), err)
		default:
			a.nhid.set(w.peer, w.id)
		}
	})
	a.nhid.each(func(gw netip.Addr, id uint32) bool {
		if _, t := a.touchedNH.get(gw); !a.live || !t {
			r.nexthops.set(gw, id)
		}
		return true
	})
}

// nexthopIDs picks the ID of each peer's nexthop object in one run.
type nexthopIDs struct {
	fam     Family
	listed  map[uint32]knexthop   // every object the kernel has
	serving map[netip.Addr]uint32 // IPv6: peer -> an object of ours serving it
	picked  map[uint32]bool       // IDs picked in this run
}

// idPicker indexes the listed objects of ours that serve a peer.
func (a *fullRun) idPicker() *nexthopIDs {
	ids := &nexthopIDs{fam: a.r.fam, listed: a.ks.nexthops, picked: map[uint32]bool{}}
	if ids.fam != IPv6 {
		return ids
	}
	ids.serving = map[netip.Addr]uint32{}
	for id, n := range a.ks.nexthops {
		if n.serves(entry{nexthop: n.gw, ifindex: a.r.ifindex()}) {
			if old, dup := ids.serving[n.gw]; !dup || id < old {
				ids.serving[n.gw] = id // duplicates: the smallest stays, removeNexthops takes the rest
			}
		}
	}
	return ids
}

// pick is peer's nexthop ID: for IPv4 always nexthopID (the object there
// is then used, replaced if ours, or, if another program's, not used);
// for IPv6 the object of ours already serving it, else the first ID from
// nexthopID on that no object holds.
func (ids *nexthopIDs) pick(peer netip.Addr) uint32 {
	if ids.fam != IPv6 {
		return nexthopID(peer)
	}
	if id, ok := ids.serving[peer]; ok {
		return id
	}
	id := nexthopID(peer)
	for {
		if _, held := ids.listed[id]; !held && !ids.picked[id] {
			break
		}
		id = nextNexthopID(id)
	}
	ids.picked[id] = true
	return id
}

// writeRoutes replaces every wanted route that is missing or wrong.
func (a *fullRun) writeRoutes(ctx context.Context) {
	r := a.r
	// Only what needs a write is sorted: a resync over thousands of
	// peers in place sorts nothing.
	var subnets []netip.Prefix
	for _, p := range a.want.keys(func(p netip.Prefix, _ desiredPeer) bool {
		a.yield(ctx)
		return a.routable(p) && !a.right(p)
	}) {
		if !a.mine(p) {
			continue
		}
		w, _ := a.wantEntry(p)
		if err := a.nhErr[w.nexthop]; err != nil {
			a.fail(p, "kernel", "replace", err)
			continue
		}
		subnets = append(subnets, p)
	}
	r.c.execEach(ctx, len(subnets), func(i int) (request, bool) {
		p := subnets[i]
		if !a.mine(p) {
			return request{}, false
		}
		w, _ := a.wantEntry(p)
		id, _ := a.nhid.get(w.nexthop)
		return routeRequest(unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_REPLACE, peerRoute(p, w, id)), true
	}, func(i int, err error) {
		p := subnets[i]
		switch {
		case errors.Is(err, errSkipped):
		case err != nil:
			w, _ := a.wantEntry(p)
			a.fail(p, "kernel", "replace", fmt.Errorf("%s via %s dev %s: %w", p, w.nexthop, r.dev(), err))
		default:
			if _, had := a.ks.ours.get(p); !had {
				a.res.KernelRoutes++
			}
			a.noteWrote(p, tabKernel)
		}
	})
}

// removeStale takes out what is not wanted: map entries first, then the
// kernel routes under them, routes of ours Apply never installs, and last
// the nexthop objects of ours no wanted route uses.
func (a *fullRun) removeStale(ctx context.Context) {
	r := a.r
	gone := func(p netip.Prefix) bool {
		a.yield(ctx)
		return !a.wanted(p)
	}
	if a.mapOK {
		for i, p := range a.inMap.keys(func(p netip.Prefix, _ entry) bool { return gone(p) }) {
			if ctx.Err() != nil {
				return
			}
			if i%mapBatch == 0 {
				a.yield(ctx)
			}
			if a.mine(p) && a.deleteMap(p, "stale") {
				t, _ := a.removed.get(p)
				a.removed.set(p, t|tabMap)
			}
		}
	}
	a.yield(ctx)
	stale := a.ks.ours.keys(func(p netip.Prefix, _ kernelEntry) bool { return gone(p) })
	what := make([]kroute, 0, len(stale)+len(a.ks.odd))
	for _, p := range stale {
		k, _ := a.ks.ours.get(p)
		what = append(what, peerRoute(p, k.entry, k.nhid))
	}
	what = append(what, a.ks.odd...)
	r.deleteRoutes(ctx, what, func(i int) bool { return i >= len(stale) || a.mine(what[i].dst) }, func(i int, err error) {
		k := what[i]
		switch {
		case errors.Is(err, errSkipped):
		case err != nil:
			a.fail(k.dst, "kernel", "delete", err)
		case i < len(stale):
			a.res.KernelRoutes--
			t, _ := a.removed.get(k.dst)
			a.removed.set(k.dst, t|tabKernel)
		default:
			r.opts.Log.Info("odd route of ours removed", "subnet", k.dst, "metric", k.priority, "dev", r.dev())
		}
	})
	a.yield(ctx)
	a.removeNexthops(ctx)
}

// wanted tells a subnet Apply routes (wanted and not blocked).
func (a *fullRun) wanted(p netip.Prefix) bool {
	_, ok := a.want.get(p)
	return ok && a.routable(p)
}

// removeNexthops deletes our nexthop objects that no routed peer uses
// (all of them with plain routes). Deleting one takes any route still
// using it along; every route of ours that did is gone by now.
func (a *fullRun) removeNexthops(ctx context.Context) {
	r := a.r
	var ids []uint32
	for id, n := range a.ks.nexthops {
		a.yield(ctx)
		if used, _ := a.nhid.get(n.gw); n.oursIn(r.fam) && used != id {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	r.c.execEach(ctx, len(ids), func(i int) (request, bool) {
		if a.live {
			if _, t := a.touchedNH.get(a.ks.nexthops[ids[i]].gw); t {
				return request{}, false // an incremental run routes through it now
			}
		}
		r.noteNexthopDeletion(ids[i])
		return nexthopRequest(unix.RTM_DELNEXTHOP, 0, ids[i], entry{}), true
	}, func(i int, err error) {
		n := a.ks.nexthops[ids[i]]
		switch {
		case errors.Is(err, errSkipped):
			return
		case err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ESRCH):
			r.forgetNexthopDeletion(ids[i])
			a.fail(netip.PrefixFrom(n.gw, n.gw.BitLen()), "kernel", "nexthop", fmt.Errorf("delete nexthop %d: %w", ids[i], err))
			return
		}
		if id, ok := r.nexthops.get(n.gw); ok && id == ids[i] {
			r.nexthops.delete(n.gw)
		}
		r.opts.Log.Info("nexthop of ours removed", "nexthop", n.gw, "id", ids[i], "dev", r.dev())
	})
}

// deleteRoutes deletes routes of ours exactly as listed, those that keep
// accepts at the moment their window is sent, remembering them so that
// Run does not take the kernel's deletion events for repairs. A route
// already gone is no error; one not kept gets errSkipped.
func (r *Reconciler) deleteRoutes(ctx context.Context, what []kroute, keep func(i int) bool, done func(i int, err error)) {
	r.c.execEach(ctx, len(what), func(i int) (request, bool) {
		if !keep(i) {
			return request{}, false
		}
		r.noteDeletion(what[i].dst)
		return routeRequest(unix.RTM_DELROUTE, 0, what[i]), true
	}, func(i int, err error) {
		switch {
		case errors.Is(err, errSkipped):
		case err != nil && !errors.Is(err, unix.ESRCH):
			r.forgetDeletion(what[i].dst)
			err = fmt.Errorf("delete route %s: %w", what[i], err)
		default:
			err = nil
		}
		done(i, err)
	})
}

func (a *fullRun) fail(subnet netip.Prefix, table, op string, err error) {
	a.res.Errors = append(a.res.Errors, &ItemError{Subnet: subnet, Table: table, Op: op, Err: err})
}

// finish logs what changed and completes the Result.
func (a *fullRun) finish(ctx context.Context) (Result, error) {
	r := a.r
	if err := ctx.Err(); err != nil {
		a.res.Errors = append(a.res.Errors, fmt.Errorf("apply interrupted: %w", err))
	}
	if a.kernelOK {
		a.res.KernelRoutes += a.ks.ours.len()
	}
	a.res.MapEntries += a.inMap.len()
	var (
		changes []change
		more    = map[string]int{}
	)
	log := func(c change) {
		if len(changes) < maxChangeLines {
			changes = append(changes, c)
		} else {
			more[c.verb]++
		}
	}
	// What incremental runs took over they logged and counted: here and
	// below, a subnet they took before its turn is theirs, one they took
	// after was counted here (each counts its own writes).
	for _, p := range a.wrote.keys(func(p netip.Prefix, _ tables) bool { return a.mine(p) }) {
		if a.yield(ctx); !a.mine(p) {
			continue
		}
		t, _ := a.wrote.get(p)
		w, _ := a.wantEntry(p)
		c := change{subnet: p, nexthop: w.nexthop, tables: t, verb: "added"}
		if old, had := a.before(p); had {
			c.verb, c.was, a.res.Changed = "changed", old.nexthop, a.res.Changed+1
		} else {
			a.res.Added++
		}
		log(c)
	}
	for _, p := range a.removed.keys(func(p netip.Prefix, _ tables) bool { return a.mine(p) }) {
		if a.yield(ctx); !a.mine(p) {
			continue
		}
		t, _ := a.removed.get(p)
		old, _ := a.before(p)
		a.res.Removed++
		log(change{verb: "removed", subnet: p, nexthop: old.nexthop, tables: t})
	}
	subnets := make([]netip.Prefix, len(changes))
	for i, c := range changes {
		subnets[i] = c.subnet
	}
	keys := a.keysOf(subnets)
	for i := range changes {
		changes[i].key = keys[changes[i].subnet]
	}
	r.logChanges(changes, more)
	for _, err := range a.res.Errors {
		r.opts.Log.Error("reconcile", "err", err)
	}
	a.countTouched()
	if a.kernelOK {
		r.kernelN = a.res.KernelRoutes
	}
	r.mapN = a.res.MapEntries
	return a.res, errors.Join(a.res.Errors...)
}

// countTouched counts the subnets incremental runs took over as they
// left them (the counts so far are the listing's and this run's), and
// adds their results.
func (a *fullRun) countTouched() {
	if !a.live {
		return
	}
	a.touched.each(func(p netip.Prefix, t touch) bool {
		wrote, _ := a.wrote.get(p)
		removed, _ := a.removed.get(p)
		if t.kernel != 0 && a.kernelOK {
			_, listed := a.ks.ours.get(p)
			if (listed || wrote&tabKernel != 0) && removed&tabKernel == 0 {
				a.res.KernelRoutes--
			}
			if t.kernel > 0 {
				a.res.KernelRoutes++
			}
		}
		if t.inMap != 0 {
			_, listed := a.inMap.get(p)
			if (listed || wrote&tabMap != 0) && removed&tabMap == 0 {
				a.res.MapEntries--
			}
			if t.inMap > 0 {
				a.res.MapEntries++
			}
		}
		return true
	})
	a.res.Added += a.deltas.Added
	a.res.Changed += a.deltas.Changed
	a.res.Removed += a.deltas.Removed
	a.res.Errors = append(a.res.Errors, a.deltas.Errors...)
}

// keysOf is the lease key of each of subnets, for the log.
func (a *fullRun) keysOf(subnets []netip.Prefix) map[netip.Prefix]string {
	out := make(map[netip.Prefix]string, len(subnets))
	for _, p := range subnets {
		w, _ := a.want.get(p)
		out[p] = w.key
	}
	return out
}

// before is a subnet's entry before the run, from either table.
func (a *fullRun) before(p netip.Prefix) (entry, bool) {
	if a.ks != nil {
		if e, ok := a.ks.ours.get(p); ok {
			return e.entry, true
		}
	}
	return a.inMap.get(p)
}

// change is one peer's line in the log.
type change struct {
	verb         string
	subnet       netip.Prefix
	nexthop, was netip.Addr
	key          string
	tables       tables
}

// tables is which tables a run wrote for a subnet.
type tables uint8

const (
	tabKernel tables = 1 << iota
	tabMap
)

func (t tables) names() []string {
	var out []string
	if t&tabKernel != 0 {
		out = append(out, "kernel")
	}
	if t&tabMap != 0 {
		out = append(out, "map")
	}
	return out
}

// maxChangeLines bounds the per-peer lines of one run: a start with tens
// of thousands of peers logs the first ones and a count.
const maxChangeLines = 100

// logChanges logs one line per change, and one per verb for more.
func (r *Reconciler) logChanges(changes []change, more map[string]int) {
	for _, c := range changes {
		attrs := []any{"subnet", c.subnet, "nexthop", c.nexthop, "dev", r.dev(), "tables", c.tables.names()}
		if c.key != "" {
			attrs = append(attrs, "key", c.key)
		}
		if c.was.IsValid() {
			attrs = append(attrs, "was", c.was)
		}
		r.opts.Log.Info("peer "+c.verb, attrs...)
	}
	for _, verb := range []string{"added", "changed", "removed"} {
		if n := more[verb]; n > 0 {
			r.opts.Log.Info("more peers "+verb, "count", n, "dev", r.dev())
		}
	}
}

// sortedKeys orders the subnets of m that keep accepts (all if nil) by
// address, then length: a stable order for writes and logs. Filtering
// first keeps the sort to what changes: a run over thousands of peers
// that are all in place sorts nothing.
func sortedKeys[V any](m map[netip.Prefix]V, keep func(netip.Prefix) bool) []netip.Prefix {
	var out []netip.Prefix
	for p := range m {
		if keep == nil || keep(p) {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, comparePrefix)
	return out
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}
