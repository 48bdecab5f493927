package reconcile

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

const (
	// ownDeletionTTL is how long a deletion Apply made waits for its
	// kernel event before it is forgotten.
	ownDeletionTTL = 10 * time.Second
	// resubscribe backoff after the route event socket failed (e.g.
	// ENOBUFS when events came faster than Run read them).
	minResubscribe = 100 * time.Millisecond
	maxResubscribe = 30 * time.Second
	eventBuffer    = 256
)

// Update stores the latest desired peers and wakes Run. Bursts coalesce:
// Run applies only the newest set.
func (r *Reconciler) Update(peers []Peer) {
	r.mu.Lock()
	r.desired, r.known = peers, true
	r.mu.Unlock()
	r.trigger()
}

func (r *Reconciler) trigger() {
	select {
	case r.poke <- struct{}{}:
	default: // a run is already pending; it will read the latest set
	}
}

// Run applies the desired peers on every Update, every resync interval,
// and at once when the kernel reports one of our routes deleted, until
// ctx is done. Triggers that arrive while a run is pending or under way
// coalesce into one run. Nothing is applied before the first Update: an
// agent that has not heard from etcd yet leaves existing routes alone.
// Run always returns nil once ctx is done.
func (r *Reconciler) Run(ctx context.Context) error {
	sub, err := r.subscribe()
	defer func() { sub.close() }()
	var retry <-chan time.Time
	backoff := minResubscribe
	if err != nil {
		r.opts.Log.Warn("cannot watch route deletions, relying on resync until it works", "err", err)
		retry = time.After(backoff)
	}
	tick := time.NewTicker(r.opts.ResyncInterval)
	defer tick.Stop()

	for {
		select {
		case <-ctx.Done():
			return nil
		case <-r.poke:
		case <-tick.C:
		case <-retry:
			retry = nil
			if sub, err = r.subscribe(); err != nil {
				r.opts.Log.Debug("route deletions still not watched", "err", err)
				backoff = min(2*backoff, maxResubscribe)
				retry = time.After(backoff)
				continue
			}
			r.opts.Log.Info("watching route deletions again")
			backoff = minResubscribe
			// Deletions may have been missed meanwhile: apply now.
		case ev, ok := <-sub.events:
			if !ok { // the socket failed (ErrorCallback said why)
				sub.close()
				sub = subscription{}
				retry = time.After(backoff)
				continue // the retry applies once it is back
			}
			if !r.repairNeeded(ev) {
				continue
			}
		}
		r.drain(&sub)
		r.runOnce(ctx)
	}
}

// drain takes every trigger already queued, so a burst (a flush of many
// routes, several Updates) costs one run, not one per event.
func (r *Reconciler) drain(sub *subscription) {
	for {
		select {
		case <-r.poke:
		case ev, ok := <-sub.events:
			if !ok {
				return // noticed by Run's select next time round
			}
			r.repairNeeded(ev)
		default:
			return
		}
	}
}

func (r *Reconciler) runOnce(ctx context.Context) {
	r.mu.Lock()
	peers, known := r.desired, r.known
	r.mu.Unlock()
	if !known {
		return
	}
	start := time.Now()
	res, _ := r.Apply(ctx, peers) // Apply logs each failure
	if r.opts.Observe != nil && ctx.Err() == nil {
		r.opts.Observe(res, time.Since(start))
	}
}

// repairNeeded tells whether ev is one of our main-table routes deleted
// by someone else, and reports it.
func (r *Reconciler) repairNeeded(ev netlink.RouteUpdate) bool {
	if ev.Type != unix.RTM_DELROUTE || ev.Protocol != RouteProtocol || ev.Table != unix.RT_TABLE_MAIN {
		return false
	}
	if r.ownDeletion(ev.Dst) {
		return false
	}
	r.opts.Log.Warn("route of ours deleted, repairing", "subnet", routeString(ev.Dst), "dev", r.dev())
	if r.opts.OnRepair != nil {
		r.opts.OnRepair()
	}
	return true
}

// subscription is one route event socket; the zero value is none (its nil
// channel never delivers).
type subscription struct {
	events chan netlink.RouteUpdate
	done   chan struct{}
}

// subscribe opens a route event socket in the reconciler's namespace.
func (r *Reconciler) subscribe() (subscription, error) {
	s := subscription{events: make(chan netlink.RouteUpdate, eventBuffer), done: make(chan struct{})}
	opts := netlink.RouteSubscribeOptions{
		Namespace: r.opts.Netns,
		ErrorCallback: func(err error) {
			select {
			case <-s.done: // closed on purpose: not a failure
				return
			default:
			}
			r.opts.Log.Warn("route event subscription", "err", err)
		},
	}
	if err := netlink.RouteSubscribeWithOptions(s.events, s.done, opts); err != nil {
		close(s.done)
		return subscription{}, fmt.Errorf("subscribe to route events: %w", err)
	}
	return s, nil
}

// close stops the socket. netlink's reader may be blocked handing us an
// event; keep reading until it closes the channel, so it can exit.
func (s subscription) close() {
	if s.done == nil {
		return
	}
	close(s.done)
	go func() {
		for range s.events {
		}
	}()
}

// ownDeletion tells a deletion event that Apply caused (a peer left) from
// one made behind our back, and forgets it.
func (r *Reconciler) ownDeletion(dst *net.IPNet) bool {
	p, ok := prefixOf(dst)
	if !ok {
		return false
	}
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
