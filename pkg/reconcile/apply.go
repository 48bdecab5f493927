package reconcile

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/hgw-ebpf/hgw-ebpf/pkg/datapath"
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
	a := r.plan(peers)
	a.execute(ctx)
	return a.finish(ctx)
}

// fullRun is one Apply: the desired and the listed state, and the result.
type fullRun struct {
	r     *Reconciler
	res   Result
	want  map[netip.Prefix]entry
	peers []Peer // as given: their etcd keys, for the log

	ks       *kernelState
	kernelOK bool // kernel listed: without it nothing is written blind
	inMap    map[netip.Prefix]entry
	mapOK    bool                    // map present and listed
	blocked  map[netip.Prefix]string // wanted, not ours to route: reason
	nhid     map[netip.Addr]uint32   // usable nexthop object per peer
	nhErr    map[netip.Addr]error    // peers whose nexthop object could not be written

	wrote   map[netip.Prefix]tables // tables written per subnet (log)
	removed map[netip.Prefix]tables
}

// kernelState is one listing of what the kernel holds that Apply needs.
type kernelState struct {
	ours     map[netip.Prefix]kernelEntry // our routes where Apply puts them (main, TOS 0, metric 0)
	odd      []kroute                     // other routes of ours: removed
	others   map[netip.Prefix]kroute      // other programs' routes where Apply would write
	local    []netip.Prefix
	nexthops map[uint32]knexthop // every nexthop object (nil: the kernel has none)
}

// kernelEntry is a route of ours: where it sends, and through which
// nexthop object (0: a plain route).
type kernelEntry struct {
	entry
	nhid uint32
}

func (r *Reconciler) plan(peers []Peer) *fullRun {
	a := &fullRun{r: r, peers: peers, want: make(map[netip.Prefix]entry, len(peers)),
		blocked: map[netip.Prefix]string{}, nhid: make(map[netip.Addr]uint32, len(peers)), nhErr: map[netip.Addr]error{},
		wrote: map[netip.Prefix]tables{}, removed: map[netip.Prefix]tables{}}
	for _, p := range peers {
		p.Subnet = p.Subnet.Masked() // the kernel and the map list masked prefixes
		if err := r.checkFamily(p); err != nil {
			a.res.Errors = append(a.res.Errors, &ItemError{Subnet: p.Subnet, Table: "kernel", Op: "replace", Err: err})
			continue
		}
		if _, dup := a.want[p.Subnet]; dup {
			continue // Desired never yields duplicates; the first wins
		}
		a.want[p.Subnet] = entry{nexthop: p.NextHop, ifindex: r.ifindex()}
	}
	var err error
	if a.ks, err = r.listKernel(len(a.want)); err != nil {
		a.res.Errors = append(a.res.Errors, err)
	}
	a.kernelOK = err == nil
	if r.opts.RouteMap != nil {
		if a.inMap, err = r.listMap(); err != nil {
			a.res.Errors = append(a.res.Errors, err)
		}
		a.mapOK = err == nil
	}
	if a.kernelOK {
		r.setLocal(a.ks.local)
		a.block()
	}
	return a
}

// block sets aside the wanted subnets that are not ours to route: another
// program's route sits exactly where ours would (the kernel's replace
// would silently take it over, whatever its protocol), or the subnet
// covers a local route or address of this node. flanneld's own routes are
// the exception: taking them over is how a node moves from flanneld.
func (a *fullRun) block() {
	r := a.r
	for subnet := range a.want {
		if k, ok := a.ks.others[subnet]; ok && !k.flanneld(r.ifindex()) {
			a.blocked[subnet] = fmt.Sprintf("route of protocol %d holds it: %s", k.protocol, k)
			continue
		}
		if l := coveredLocal(a.ks.local, subnet); l.IsValid() {
			a.blocked[subnet] = "covers the local prefix " + l.String()
		}
	}
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
// have them) nexthop objects; hint is how many routes of ours to expect. The first listing probes for nexthop
// objects and says which kind of route the agent installs.
func (r *Reconciler) listKernel(hint int) (*kernelState, error) {
	ks := &kernelState{}
	var err error
	if r.nh != nhNone { // first: routes of ours are resolved through them
		ks.nexthops, err = r.c.listNexthops(hint)
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
		ks.ours, ks.others, ks.odd, local = make(map[netip.Prefix]kernelEntry, hint), map[netip.Prefix]kroute{}, nil, nil
	}
	start()
	err = r.c.eachRoute(r.fam, start, func(k kroute) {
		switch {
		case k.ours() && k.keyed() && k.typ == unix.RTN_UNICAST && k.dst.Bits() > 0:
			ks.ours[k.dst] = kernelEntry{entry: resolve(k, ks.nexthops), nhid: k.nhid}
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

func (r *Reconciler) listMap() (map[netip.Prefix]entry, error) {
	list, err := r.opts.RouteMap.List()
	if err != nil {
		return nil, fmt.Errorf("list routes map: %w", err)
	}
	out := make(map[netip.Prefix]entry, len(list))
	for _, e := range list {
		out[e.Subnet] = entry{nexthop: e.NextHop, ifindex: int(e.Ifindex)}
	}
	return out, nil
}

// routable tells a wanted subnet Apply writes.
func (a *fullRun) routable(subnet netip.Prefix) bool {
	_, blocked := a.blocked[subnet]
	return !blocked
}

// execute makes the writes, in the order Apply documents.
func (a *fullRun) execute(ctx context.Context) {
	if !a.kernelOK {
		return // nothing is written blind: not even the map
	}
	// 1. Map entries of peers the kernel has no route for at all.
	if a.mapOK {
		a.putMap(sortedKeys(a.want, func(p netip.Prefix) bool {
			e, ok := a.inMap[p]
			return a.fresh(p) && (!ok || e != a.want[p])
		}))
	}
	if ctx.Err() != nil {
		return
	}
	// 2. Nexthop objects, 3. routes.
	a.writeNexthops()
	a.writeRoutes(ctx)
	// 4. The other map entries, once their route is right; entries put
	// early whose route failed come out again.
	if a.mapOK {
		a.putMap(sortedKeys(a.want, func(p netip.Prefix) bool {
			return !a.fresh(p) && a.routed(p) && a.inMap[p] != a.want[p]
		}))
		for _, p := range sortedKeys(a.wrote, func(p netip.Prefix) bool { return a.fresh(p) && !a.routed(p) }) {
			if a.wrote[p]&tabMap != 0 && a.deleteMap(p, "rollback") {
				if a.wrote[p] &^= tabMap; a.wrote[p] == 0 {
					delete(a.wrote, p)
				}
			}
		}
	}
	a.removeStale(ctx)
}

// fresh tells a wanted subnet the kernel had no route for at all.
func (a *fullRun) fresh(p netip.Prefix) bool {
	_, ours := a.ks.ours[p]
	_, other := a.ks.others[p]
	return a.routable(p) && !ours && !other
}

// right tells a wanted subnet whose route of ours was right before the run.
func (a *fullRun) right(p netip.Prefix) bool {
	w := a.want[p]
	cur, had := a.ks.ours[p]
	return had && cur.entry == w && cur.nhid == a.nhid[w.nexthop]
}

// routed tells a wanted subnet whose route is right now: it was, or the
// run wrote it.
func (a *fullRun) routed(p netip.Prefix) bool {
	return a.routable(p) && (a.right(p) || a.wrote[p]&tabKernel != 0)
}

// putMap writes the wanted entries of subnets, in one batch where the map
// can.
func (a *fullRun) putMap(subnets []netip.Prefix) {
	if len(subnets) == 0 {
		return
	}
	rts := make([]datapath.Route, len(subnets))
	for i, p := range subnets {
		w := a.want[p]
		rts[i] = datapath.Route{Subnet: p, NextHop: w.nexthop, Ifindex: uint32(w.ifindex)}
	}
	done := 0
	if bm, ok := a.r.opts.RouteMap.(BatchRouteMap); ok && len(rts) > 1 {
		done, _ = bm.PutBatch(rts) // the rest one by one below, to name the failure
	}
	for i, p := range subnets {
		if i >= done {
			if err := a.r.opts.RouteMap.Put(rts[i]); err != nil {
				a.fail(p, "map", "put", err)
				continue
			}
		}
		if _, had := a.inMap[p]; !had {
			a.res.MapEntries++
		}
		a.wrote[p] |= tabMap
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
func (a *fullRun) writeNexthops() {
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
	seen := make(map[netip.Addr]bool, len(a.want))
	ids := a.idPicker()
	for p, w := range a.want {
		if seen[w.nexthop] || !a.routable(p) {
			continue
		}
		seen[w.nexthop] = true
		id := ids.pick(w.nexthop)
		n, exists := a.ks.nexthops[id]
		switch {
		case !exists:
			writes = append(writes, write{w.nexthop, id, unix.NLM_F_CREATE | unix.NLM_F_EXCL})
		case n.serves(w):
			a.nhid[w.nexthop] = id
		case n.oursIn(r.fam):
			writes = append(writes, write{w.nexthop, id, unix.NLM_F_CREATE | unix.NLM_F_REPLACE})
		default:
			if !r.nhLogged[id] {
				r.nhLogged[id] = true
				r.opts.Log.Warn("nexthop ID taken by another program: plain routes to this peer", "nexthop", w.nexthop,
					"id", id, "protocol", n.protocol, "dev", r.dev())
			}
		}
	}
	slices.SortFunc(writes, func(x, y write) int { return x.peer.Compare(y.peer) })
	r.c.execEach(context.Background(), len(writes), func(i int) request {
		w := writes[i]
		return nexthopRequest(unix.RTM_NEWNEXTHOP, w.flags, w.id, entry{nexthop: w.peer, ifindex: r.ifindex()})
	}, func(i int, err error) {
		w := writes[i]
		if err != nil {
			// Its subnets' routes fail with it (writeRoutes); the next run
			// retries.
			a.nhErr[w.peer] = fmt.Errorf("nexthop %d via %s dev %s: %w", w.id, w.peer, r.dev(), err)
			return
		}
		a.nhid[w.peer] = w.id
	})
	for gw, id := range a.nhid {
		r.nexthops[gw] = id
	}
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
	for _, p := range sortedKeys(a.want, func(p netip.Prefix) bool { return a.routable(p) && !a.right(p) }) {
		if err := a.nhErr[a.want[p].nexthop]; err != nil {
			a.fail(p, "kernel", "replace", err)
			continue
		}
		subnets = append(subnets, p)
	}
	r.c.execEach(ctx, len(subnets), func(i int) request {
		p := subnets[i]
		w := a.want[p]
		return routeRequest(unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_REPLACE, peerRoute(p, w, a.nhid[w.nexthop]))
	}, func(i int, err error) {
		p := subnets[i]
		if err != nil {
			a.fail(p, "kernel", "replace", fmt.Errorf("%s via %s dev %s: %w", p, a.want[p].nexthop, r.dev(), err))
			return
		}
		if _, had := a.ks.ours[p]; !had {
			a.res.KernelRoutes++
		}
		a.wrote[p] |= tabKernel
	})
}

// removeStale takes out what is not wanted: map entries first, then the
// kernel routes under them, routes of ours Apply never installs, and last
// the nexthop objects of ours no wanted route uses.
func (a *fullRun) removeStale(ctx context.Context) {
	r := a.r
	gone := func(p netip.Prefix) bool { return !a.wanted(p) }
	if a.mapOK {
		for _, p := range sortedKeys(a.inMap, gone) {
			if ctx.Err() != nil {
				return
			}
			if a.deleteMap(p, "stale") {
				a.removed[p] |= tabMap
			}
		}
	}
	stale := sortedKeys(a.ks.ours, gone)
	what := make([]kroute, 0, len(stale)+len(a.ks.odd))
	for _, p := range stale {
		k := a.ks.ours[p]
		what = append(what, peerRoute(p, k.entry, k.nhid))
	}
	what = append(what, a.ks.odd...)
	r.deleteRoutes(ctx, what, func(i int, err error) {
		k := what[i]
		switch {
		case err != nil:
			a.fail(k.dst, "kernel", "delete", err)
		case i < len(stale):
			a.res.KernelRoutes--
			a.removed[k.dst] |= tabKernel
		default:
			r.opts.Log.Info("odd route of ours removed", "subnet", k.dst, "metric", k.priority, "dev", r.dev())
		}
	})
	a.removeNexthops()
}

// wanted tells a subnet Apply routes (wanted and not blocked).
func (a *fullRun) wanted(p netip.Prefix) bool {
	_, ok := a.want[p]
	return ok && a.routable(p)
}

// removeNexthops deletes our nexthop objects that no routed peer uses
// (all of them with plain routes). Deleting one takes any route still
// using it along; every route of ours that did is gone by now.
func (a *fullRun) removeNexthops() {
	r := a.r
	var ids []uint32
	for id, n := range a.ks.nexthops {
		if n.oursIn(r.fam) && a.nhid[n.gw] != id {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	reqs := make([]request, len(ids))
	for i, id := range ids {
		reqs[i] = nexthopRequest(unix.RTM_DELNEXTHOP, 0, id, entry{})
		r.noteNexthopDeletion(id)
	}
	for i, err := range r.c.exec(reqs) {
		n := a.ks.nexthops[ids[i]]
		if err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ESRCH) {
			r.forgetNexthopDeletion(ids[i])
			a.fail(netip.PrefixFrom(n.gw, n.gw.BitLen()), "kernel", "nexthop", fmt.Errorf("delete nexthop %d: %w", ids[i], err))
			continue
		}
		if r.nexthops[n.gw] == ids[i] {
			delete(r.nexthops, n.gw)
		}
		r.opts.Log.Info("nexthop of ours removed", "nexthop", n.gw, "id", ids[i], "dev", r.dev())
	}
}

// deleteRoutes deletes routes of ours exactly as listed, remembering them
// so that Run does not take the kernel's deletion events for repairs. A
// route already gone is no error.
func (r *Reconciler) deleteRoutes(ctx context.Context, what []kroute, done func(i int, err error)) {
	for _, k := range what {
		r.noteDeletion(k.dst)
	}
	r.c.execEach(ctx, len(what), func(i int) request {
		return routeRequest(unix.RTM_DELROUTE, 0, what[i])
	}, func(i int, err error) {
		if err != nil && !errors.Is(err, unix.ESRCH) {
			r.forgetDeletion(what[i].dst)
			err = fmt.Errorf("delete route %s: %w", what[i], err)
		} else {
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
		a.res.KernelRoutes += len(a.ks.ours)
	}
	a.res.MapEntries += len(a.inMap)
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
	for _, p := range sortedKeys(a.wrote, nil) {
		c := change{subnet: p, nexthop: a.want[p].nexthop, tables: a.wrote[p], verb: "added"}
		if old, had := a.before(p); had {
			c.verb, c.was, a.res.Changed = "changed", old.nexthop, a.res.Changed+1
		} else {
			a.res.Added++
		}
		log(c)
	}
	for _, p := range sortedKeys(a.removed, nil) {
		old, _ := a.before(p)
		a.res.Removed++
		log(change{verb: "removed", subnet: p, nexthop: old.nexthop, tables: a.removed[p]})
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
	if a.kernelOK {
		r.kernelN = a.res.KernelRoutes
	}
	r.mapN = a.res.MapEntries
	return a.res, errors.Join(a.res.Errors...)
}

// keysOf is the etcd key of each of subnets, from the peers: one pass for
// the few that are logged, rather than a map of every peer's key.
func (a *fullRun) keysOf(subnets []netip.Prefix) map[netip.Prefix]string {
	out := make(map[netip.Prefix]string, len(subnets))
	if len(subnets) == 0 {
		return out
	}
	for _, p := range subnets {
		out[p] = ""
	}
	for _, p := range a.peers {
		if k, ok := out[p.Subnet.Masked()]; ok && k == "" {
			out[p.Subnet.Masked()] = p.Key
		}
	}
	return out
}

// before is a subnet's entry before the run, from either table.
func (a *fullRun) before(p netip.Prefix) (entry, bool) {
	if a.ks != nil {
		if e, ok := a.ks.ours[p]; ok {
			return e.entry, true
		}
	}
	e, ok := a.inMap[p]
	return e, ok
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

// sortTogether orders peers by address, and reqs with them.
func sortTogether(peers []netip.Addr, reqs []request) {
	idx := make([]int, len(peers))
	for i := range idx {
		idx[i] = i
	}
	slices.SortFunc(idx, func(i, j int) int { return peers[i].Compare(peers[j]) })
	p2, r2 := make([]netip.Addr, len(peers)), make([]request, len(reqs))
	for to, from := range idx {
		p2[to], r2[to] = peers[from], reqs[from]
	}
	copy(peers, p2)
	copy(reqs, r2)
}
