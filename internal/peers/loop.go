package peers

import (
	"context"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hgw-ebpf/hgw-ebpf/internal/kernelwatch"
)

// ownDeletionTTL is how long a deletion a run made waits for its kernel
// event before it is forgotten.
const ownDeletionTTL = 10 * time.Second

func (r *Reconciler) trigger() {
	select {
	case r.poke <- struct{}{}:
	default: // a run is already pending; it will read the latest changes
	}
}

// Run applies the desired peers until ctx is done: the changes of every
// Update and Change on their own, and the full comparison (Apply) after
// the first Update, after Resync and every resync interval. When the
// kernel reports one of our routes or nexthop objects deleted by someone
// else, what it took is written again at once, on its own. A full
// comparison of tens of thousands of peers takes most of a second: the
// changes and repairs that arrive meanwhile are written between its
// steps (between the parts of a dump, the windows of writes, the batches
// of map entries), and it leaves alone what they wrote. Triggers that
// arrive while a run is pending coalesce into one run. Nothing is applied
// before the first Update: an agent that has not heard from etcd yet
// leaves existing routes alone. Run always returns nil once ctx is done.
func (r *Reconciler) Run(ctx context.Context) error {
	return kernelwatch.Loop{
		What: "route deletions",
		Subscribe: func() (kernelwatch.Subscription, error) {
			s, err := r.subscribe()
			if err != nil {
				return nil, err
			}
			return s, nil
		},
		Triggers: r.poke,
		Resync:   r.opts.ResyncInterval,
		Missed:   r.Resync,
		Run:      r.runOnce,
		Log:      r.opts.Log,
	}.Serve(ctx)
}

func (r *Reconciler) runOnce(ctx context.Context) {
	r.applyMu.Lock()
	defer r.applyMu.Unlock()
	r.mu.Lock()
	known, full := r.known, r.full
	if known {
		r.full = false
	}
	r.mu.Unlock()
	if !known {
		return
	}
	r.absorb()
	if !full && len(r.delta) == 0 {
		return
	}
	start := time.Now()
	var res Result
	if full {
		r.delta = map[netip.Prefix]pending{} // the full comparison covers them
		res = r.fullLive(ctx)
	} else {
		var needFull bool
		res, needFull = r.applyDelta(ctx)
		if needFull {
			r.Resync()
			r.trigger()
		}
	}
	if r.opts.Observe != nil && ctx.Err() == nil {
		r.opts.Observe(res, time.Since(start))
	}
}

// noteRepair hands a deletion to repair to Run.
func (r *Reconciler) noteRepair(ev event) {
	r.mu.Lock()
	r.inbox.repairs = append(r.inbox.repairs, ev)
	r.waiting.Store(true)
	r.mu.Unlock()
}

// queueRepair queues what a deletion took for the next run: the deleted
// route's subnet, or every subnet of the deleted nexthop object's peer
// (the kernel removed their routes with it, without events of their own).
// A subnet not desired any more needs nothing. applyMu is held.
func (r *Reconciler) queueRepair(ev event) {
	restore := func(subnet netip.Prefix, nexthop netip.Addr, nhGone bool) {
		if _, queued := r.delta[subnet]; !queued {
			r.delta[subnet] = pending{peer: &Peer{Subnet: subnet, NextHop: nexthop}, repair: true, nhGone: nhGone}
		}
	}
	switch ev.typ {
	case unix.RTM_DELROUTE:
		if lp, ok := r.last.get(ev.route.dst); ok {
			restore(ev.route.dst, lp.nexthop, false)
		}
	case unix.RTM_DELNEXTHOP:
		// The kernel's deletion event names the object's gateway: the
		// peer (an IPv6 peer's ID is not derived from it alone).
		r.last.each(func(subnet netip.Prefix, lp desiredPeer) bool {
			if lp.nexthop == ev.nexthop.gw || (!ev.nexthop.gw.IsValid() && nexthopID(lp.nexthop) == ev.nexthop.id) {
				restore(subnet, lp.nexthop, true)
			}
			return true
		})
	}
}

// repairNeeded tells whether ev is the deletion of one of our main-table
// routes or nexthop objects by someone else, and reports it. A nexthop
// object deleted by hand takes its routes along without an event of
// their own.
func (r *Reconciler) repairNeeded(ev event) bool {
	switch ev.typ {
	case unix.RTM_DELROUTE:
		k := ev.route
		if !k.ours() || k.table != unix.RT_TABLE_MAIN || r.ownDeletion(k.dst) {
			return false
		}
		r.opts.Log.Warn("route of ours deleted, repairing", "subnet", k.dst, "dev", r.dev())
	case unix.RTM_DELNEXTHOP:
		n := ev.nexthop
		if !n.oursIn(r.fam) || r.ownNexthopDeletion(n.id) {
			return false
		}
		r.opts.Log.Warn("nexthop of ours deleted (and the routes using it), repairing", "nexthop", n.gw, "id", n.id, "dev", r.dev())
	default:
		return false
	}
	if r.opts.OnRepair != nil {
		r.opts.OnRepair()
	}
	return true
}

// event is one route or nexthop notification.
type event struct {
	typ     uint16
	route   kroute
	nexthop knexthop
}

// subscription is one event socket and its reader, which takes every
// event as it comes (a start writes tens of thousands of routes: the
// socket must never fill) and signals repair when one needs it. The zero
// value is none (its nil channel never delivers).
type subscription struct {
	repair chan struct{} // closed when the socket fails
	done   chan struct{}
	c      *conn
}

// subscribeEvents opens an event socket for routes of the reconciler's
// family and nexthop objects in the reconciler's namespace.
func (r *Reconciler) subscribeEvents() (subscription, error) {
	c, err := dial(r.opts.Netns, r.fam.routeGroup(), unix.RTNLGRP_NEXTHOP)
	if err != nil {
		return subscription{}, err
	}
	s := subscription{repair: make(chan struct{}, 1), done: make(chan struct{}), c: c}
	go func() {
		defer close(s.repair)
		for {
			b, err := c.recv(time.Time{})
			if err != nil {
				select {
				case <-s.done: // closed on purpose: not a failure
				default:
					r.opts.Log.Warn("route event subscription", "err", err)
				}
				return
			}
			c.msgs = messages(c.msgs, b)
			for _, m := range c.msgs {
				ev := event{typ: m.typ}
				switch m.typ {
				case unix.RTM_DELROUTE:
					var ok bool
					if ev.route, ok = parseRoute(m.body, r.fam); !ok {
						continue
					}
				case unix.RTM_DELNEXTHOP:
					ev.nexthop, _ = parseNexthop(m.body)
				default:
					continue
				}
				if r.repairNeeded(ev) {
					r.noteRepair(ev)
					select {
					case s.repair <- struct{}{}:
					default: // a repair is pending already
					}
				}
			}
		}
	}()
	return s, nil
}

// close stops the socket; its reader sees the closed file and ends.
// Events fires when a deletion needs a repair; closed when the socket
// failed.
func (s subscription) Events() <-chan struct{} { return s.repair }

func (s subscription) Close() {
	if s.done == nil {
		return
	}
	close(s.done)
	s.c.Close()
}

// ownDeletion tells a deletion event that a run caused (a peer left) from
// one made behind our back, and forgets it.
func (r *Reconciler) ownDeletion(p netip.Prefix) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	at, ours := r.deleted[p]
	delete(r.deleted, p)
	return ours && time.Since(at) < ownDeletionTTL
}

func (r *Reconciler) noteDeletion(p netip.Prefix) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	for q, at := range r.deleted { // events that never came: bound the map
		if now.Sub(at) >= ownDeletionTTL {
			delete(r.deleted, q)
		}
	}
	r.deleted[p] = now
}

func (r *Reconciler) forgetDeletion(p netip.Prefix) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.deleted, p)
}

func (r *Reconciler) ownNexthopDeletion(id uint32) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	at, ours := r.deadNH[id]
	delete(r.deadNH, id)
	return ours && time.Since(at) < ownDeletionTTL
}

func (r *Reconciler) noteNexthopDeletion(id uint32) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	for q, at := range r.deadNH {
		if now.Sub(at) >= ownDeletionTTL {
			delete(r.deadNH, q)
		}
	}
	r.deadNH[id] = now
}

func (r *Reconciler) forgetNexthopDeletion(id uint32) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.deadNH, id)
}
