package peers

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
)

// Update hands Run a complete set of desired peers, to replace the
// previous, and wakes it. Run compares it with the set it had (one map
// lookup per peer) and applies only what changed: a new lease costs its
// own writes, not a listing of every table. The first Update is applied
// with the full comparison; nothing is applied before it.
func (r *Reconciler) Update(peers []Peer) {
	r.mu.Lock()
	if !r.known {
		r.known, r.full = true, true
	}
	r.inbox.replace, r.inbox.replaced, r.inbox.changes = peers, true, nil
	r.waiting.Store(true)
	r.mu.Unlock()
	r.trigger()
}

// Change hands Run changes to the desired peers (Update's set, edited),
// and wakes it: a subnet routed through another peer, or no longer.
// Bursts coalesce: Run applies the changes of all pending calls at once.
func (r *Reconciler) Change(changes []PeerChange) {
	if len(changes) == 0 {
		return
	}
	r.mu.Lock()
	r.inbox.changes = append(r.inbox.changes, changes...)
	r.waiting.Store(true)
	r.mu.Unlock()
	r.trigger()
}

// absorb takes what the inbox holds into the desired peers, and queues
// what changed for the next incremental run; applyMu is held.
func (r *Reconciler) absorb() {
	r.mu.Lock()
	in := r.inbox
	r.inbox = inbox{}
	r.waiting.Store(false)
	r.mu.Unlock()
	if in.replaced {
		r.replaceDesired(in.replace)
	}
	for _, c := range in.changes {
		r.changeDesired(c)
	}
	for _, ev := range in.repairs {
		r.queueRepair(ev)
	}
}

// replaceDesired makes peers the desired set, queuing each difference.
func (r *Reconciler) replaceDesired(peers []Peer) {
	next := newPrefixMap[desiredPeer](len(peers))
	for i := range peers {
		p := peers[i]
		p.Subnet = p.Subnet.Masked()
		if _, dup := next.get(p.Subnet); dup || !r.wantable(p) {
			continue // Desired never yields duplicates; the first wins
		}
		next.set(p.Subnet, desiredPeer{nexthop: p.NextHop, key: p.Key})
		if old, had := r.last.get(p.Subnet); !had || old.nexthop != p.NextHop {
			r.queue(p.Subnet, &p, old.nexthop)
		}
	}
	r.last.each(func(subnet netip.Prefix, old desiredPeer) bool {
		if _, still := next.get(subnet); !still {
			r.queue(subnet, nil, old.nexthop)
		}
		return true
	})
	r.last = next
}

// changeDesired applies one change to the desired set, queuing it if it
// changes a route.
func (r *Reconciler) changeDesired(c PeerChange) {
	p := c.Peer
	p.Subnet = p.Subnet.Masked()
	old, had := r.last.get(p.Subnet)
	if c.Removed {
		if had {
			r.last.delete(p.Subnet)
			r.queue(p.Subnet, nil, old.nexthop)
		}
		return
	}
	if !r.wantable(p) {
		return
	}
	r.last.set(p.Subnet, desiredPeer{nexthop: p.NextHop, key: p.Key})
	if !had || old.nexthop != p.NextHop {
		r.queue(p.Subnet, &p, old.nexthop)
	}
}

// wantable tells a peer of r's family; another is logged, never desired.
func (r *Reconciler) wantable(p Peer) bool {
	if err := r.checkFamily(p); err != nil {
		r.opts.Log.Error("reconcile", "err", &ItemError{Subnet: p.Subnet, Table: "kernel", Op: "replace", Err: err})
		return false
	}
	return true
}

// queue records a change for the next incremental run; was is the
// subnet's next hop before the first change queued for it (invalid: it
// was not desired).
func (r *Reconciler) queue(subnet netip.Prefix, p *Peer, was netip.Addr) {
	if q, ok := r.delta[subnet]; ok {
		was = q.was
	}
	r.delta[subnet] = pending{peer: p, was: was}
}

// pending is one queued change: the peer now wanted (nil: none), and the
// next hop the subnet was routed through before (invalid: none). A repair
// puts back what someone deleted: the route (its map entry is still
// there), and with nhGone the peer's nexthop object too.
type pending struct {
	peer   *Peer
	was    netip.Addr
	repair bool
	nhGone bool
}

// Resync makes the next run Run makes the full comparison: after the
// registry read every lease again, say.
func (r *Reconciler) Resync() {
	r.mu.Lock()
	r.full = true
	r.mu.Unlock()
}

// applyDelta applies the changes Update queued, without listing either
// table: for each new peer its map entry, then its nexthop object (if
// new) and its route; for each moved one its nexthop object and route,
// then its map entry; for each departed one its map entry and then its
// route. The kernel's writes are one batch, one round trip. A new peer's
// entry goes first for the reason Apply writes a fresh peer's first: the
// fast path is there at once, while the kernel can take milliseconds (an
// insertion that resizes a node of its routing trie, at tens of
// thousands of routes); it is taken out again if the route fails. A
// subnet routed before keeps its map entry behind its route, as in
// Apply. Anything this cannot settle by itself
// (the kernel already has a route for a new subnet, or an object with a
// new peer's nexthop ID) asks for a full run, which lists and decides.
//
// applyMu is held. During a full run (r.active) each subnet and peer
// written is the full run's no more: it was listed before, and the
// change is newer.
func (r *Reconciler) applyDelta(ctx context.Context) (Result, bool) {
	delta := r.delta
	r.delta = map[netip.Prefix]pending{}
	d := &deltaRun{r: r, ifindex: r.ifindex(), newNH: map[netip.Addr]bool{}, failedNH: map[netip.Addr]bool{}}
	for _, subnet := range sortedKeys(delta, nil) {
		d.plan(subnet, delta[subnet])
	}
	if ctx.Err() != nil {
		for _, it := range d.items {
			if it.mapFirst {
				r.rollbackEntry(it.subnet, &d.res)
			}
		}
		return d.res, false
	}
	errs := r.dc.exec(d.reqs)
	for i, it := range d.items {
		switch it.op {
		case "nexthop":
			d.nexthopDone(it, errs[i])
		case "delete":
			d.deleteDone(it, errs[i])
		default: // create, replace
			d.routeDone(it, errs[i])
		}
	}
	r.logChanges(d.changes, nil)
	for _, err := range d.res.Errors {
		r.opts.Log.Error("reconcile", "err", err)
	}
	d.res.KernelRoutes, d.res.MapEntries = r.kernelN, r.mapN
	return d.res, d.needFull
}

// deltaRun is one incremental run: the kernel requests it sends in one
// batch, what each is for, and what came of them.
type deltaRun struct {
	r        *Reconciler
	res      Result
	needFull bool // something only a full run can decide
	reqs     []request
	items    []deltaItem // one per request
	ifindex  int
	newNH    map[netip.Addr]bool // nexthop objects this run creates
	ourIDs   map[uint32]bool     // IDs of our objects, once a new IPv6 peer needs one
	failedNH map[netip.Addr]bool // nexthop objects the kernel refused
	changes  []change
}

func (d *deltaRun) add(req request, it deltaItem) {
	d.reqs, d.items = append(d.reqs, req), append(d.items, it)
}

func (d *deltaRun) fail(subnet netip.Prefix, table, op string, err error) {
	d.res.Errors = append(d.res.Errors, &ItemError{Subnet: subnet, Table: table, Op: op, Err: err})
}

// plan queues what one subnet's change takes.
func (d *deltaRun) plan(subnet netip.Prefix, q pending) {
	r := d.r
	p, was := q.peer, q.was
	had := was.IsValid()
	if p == nil && !had {
		return // came and went between two runs
	}
	if r.active != nil {
		r.active.touch(subnet, 0, 0)
	}
	if r.blockedSet[subnet] != "" || r.coversLocal(subnet) {
		d.needFull = true // not ours to route, or no longer: the full run decides
		return
	}
	if p == nil {
		d.planRemoval(subnet, was)
		return
	}
	if err := r.checkFamily(Peer{Subnet: subnet, NextHop: p.NextHop}); err != nil {
		d.fail(subnet, "kernel", "replace", err)
		return
	}
	w := entry{nexthop: p.NextHop, ifindex: d.ifindex}
	nhid := d.planNexthop(subnet, p, w, q.nhGone)
	op, flags := "replace", uint16(unix.NLM_F_CREATE|unix.NLM_F_REPLACE)
	if !had {
		// New to us: whatever holds the destination is not ours. EXCL
		// makes the kernel refuse rather than take it over.
		op, flags = "create", unix.NLM_F_CREATE|unix.NLM_F_EXCL
	}
	it := deltaItem{subnet: subnet, peer: p, was: was, op: op, repair: q.repair}
	// A repair's entry is in the map already (only the route went).
	if op == "create" && !q.repair && r.opts.RouteMap != nil {
		if err := r.opts.RouteMap.Put(datapath.Route{Subnet: subnet, NextHop: w.nexthop, Ifindex: uint32(d.ifindex)}); err != nil {
			d.fail(subnet, "map", "put", err)
		} else {
			it.mapFirst = true
		}
	}
	d.add(routeRequest(unix.RTM_NEWROUTE, flags, peerRoute(subnet, w, nhid)), it)
}

// planRemoval takes a departed peer's map entry out and queues its route's
// deletion.
func (d *deltaRun) planRemoval(subnet netip.Prefix, was netip.Addr) {
	r := d.r
	if r.opts.RouteMap != nil {
		if err := r.opts.RouteMap.Delete(subnet); err != nil {
			d.fail(subnet, "map", "delete", err)
		} else {
			r.mapN--
			if r.active != nil {
				r.active.touch(subnet, 0, -1)
			}
		}
	}
	r.noteDeletion(subnet)
	d.add(routeRequest(unix.RTM_DELROUTE, 0, peerRoute(subnet, entry{}, 0)), deltaItem{subnet: subnet, was: was, op: "delete"})
}

// planNexthop is the ID of the nexthop object p's route goes through (0:
// plain routes), queueing the object's creation when it is new or gone.
func (d *deltaRun) planNexthop(subnet netip.Prefix, p *Peer, w entry, gone bool) uint32 {
	r := d.r
	if r.nh != nhOn {
		return 0
	}
	nhid, known := r.nexthops.get(w.nexthop)
	if !known {
		// Its first free ID among our objects; if another program's
		// holds it, the kernel says EEXIST and the full run picks
		// another.
		nhid = nexthopID(w.nexthop)
		if r.fam == IPv6 {
			if d.ourIDs == nil {
				d.ourIDs = make(map[uint32]bool, r.nexthops.len())
				r.nexthops.each(func(_ netip.Addr, id uint32) bool {
					d.ourIDs[id] = true
					return true
				})
			}
			for d.ourIDs[nhid] {
				nhid = nextNexthopID(nhid)
			}
			d.ourIDs[nhid] = true
		}
	}
	if (!known || gone) && !d.newNH[w.nexthop] {
		d.newNH[w.nexthop] = true
		d.add(nexthopRequest(unix.RTM_NEWNEXTHOP, unix.NLM_F_CREATE|unix.NLM_F_EXCL, nhid, w),
			deltaItem{subnet: subnet, peer: p, op: "nexthop", nhid: nhid})
	}
	return nhid
}

func (d *deltaRun) nexthopDone(it deltaItem, err error) {
	r := d.r
	switch {
	case errors.Is(err, unix.EEXIST):
		d.needFull = true // ours from before, or another program's ID: a listing tells
		d.failedNH[it.peer.NextHop] = true
	case err != nil:
		d.failedNH[it.peer.NextHop] = true
		d.fail(netip.PrefixFrom(it.peer.NextHop, it.peer.NextHop.BitLen()), "kernel", "nexthop", err)
	default:
		r.nexthops.set(it.peer.NextHop, it.nhid)
		if r.active != nil {
			r.active.touchNexthop(it.peer.NextHop)
		}
	}
}

func (d *deltaRun) deleteDone(it deltaItem, err error) {
	r := d.r
	if err != nil && !errors.Is(err, unix.ESRCH) {
		r.forgetDeletion(it.subnet)
		d.fail(it.subnet, "kernel", "delete", err)
		return
	}
	if err == nil {
		r.kernelN--
	}
	if r.active != nil {
		r.active.touch(it.subnet, -1, 0)
	}
	d.res.Removed++
	t := tabKernel
	if r.opts.RouteMap != nil {
		t |= tabMap
	}
	d.changes = append(d.changes, change{verb: "removed", subnet: it.subnet, nexthop: it.was, tables: t})
}

// routeDone follows a created or replaced route: its map entry after it
// (unless put first), or, if the kernel refused it, the entry put first
// out again.
func (d *deltaRun) routeDone(it deltaItem, err error) {
	r := d.r
	if d.failedNH[it.peer.NextHop] || err != nil {
		switch {
		case d.failedNH[it.peer.NextHop]:
			d.needFull = true // its route (if the kernel took it) is checked by the full run
		case errors.Is(err, unix.EEXIST):
			d.needFull = true // a route not ours (flanneld's?) holds it: the full run decides
		default:
			d.fail(it.subnet, "kernel", "replace", fmt.Errorf("%s via %s dev %s: %w", it.subnet, it.peer.NextHop, r.dev(), err))
		}
		if it.mapFirst {
			r.rollbackEntry(it.subnet, &d.res)
		}
		return
	}
	t := tabKernel
	var inMap int8
	if it.mapFirst {
		t |= tabMap
		inMap = 1
	} else if r.opts.RouteMap != nil {
		rt := datapath.Route{Subnet: it.subnet, NextHop: it.peer.NextHop, Ifindex: uint32(d.ifindex)}
		if err := r.opts.RouteMap.Put(rt); err != nil {
			d.fail(it.subnet, "map", "put", err)
		} else {
			t |= tabMap
			inMap = 1
		}
	}
	if r.active != nil {
		r.active.touch(it.subnet, 1, inMap)
		r.active.touchNexthop(it.peer.NextHop)
	}
	c := change{verb: "added", subnet: it.subnet, nexthop: it.peer.NextHop, key: it.peer.Key, tables: t}
	if it.op == "replace" || it.repair {
		c.verb, c.was = "changed", it.was
		d.res.Changed++
	} else {
		d.res.Added++
		r.kernelN++
		if t&tabMap != 0 {
			r.mapN++
		}
	}
	d.changes = append(d.changes, c)
}

// deltaItem is one request of an incremental run.
type deltaItem struct {
	subnet netip.Prefix
	peer   *Peer
	was    netip.Addr
	repair bool   // puts back a route counted already
	op     string // "nexthop", "create", "replace", "delete"
	nhid   uint32 // the object an op "nexthop" creates
	// mapFirst: its map entry was put before the route (a new peer).
	mapFirst bool
}

// rollbackEntry takes out the map entry of a new peer whose route failed:
// the map never routes a subnet the kernel does not (Apply's rule). An
// active full run is told the entry is gone.
func (r *Reconciler) rollbackEntry(subnet netip.Prefix, res *Result) {
	if err := r.opts.RouteMap.Delete(subnet); err != nil {
		res.Errors = append(res.Errors, &ItemError{Subnet: subnet, Table: "map", Op: "delete", Err: fmt.Errorf("rollback: %w", err)})
		return
	}
	if r.active != nil {
		r.active.touch(subnet, 0, -1)
	}
}

// coversLocal tells whether subnet covers a local prefix of the last
// listing: the full run's rule (block) for a subnet it does not route.
func (r *Reconciler) coversLocal(subnet netip.Prefix) bool {
	r.localMu.Lock()
	defer r.localMu.Unlock()
	return coveredLocal(r.local, subnet).IsValid()
}
