package endpoints

import (
	"context"
	"fmt"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/hgw-ebpf/hgw-ebpf/internal/kernelwatch"
)

// settle coalesces a burst of link and neighbour events (a pod start brings
// several) into one Apply.
const settle = 50 * time.Millisecond

// Run applies at once, then on every link or neighbour change in this
// namespace and every ResyncInterval, until ctx ends. It must be called on
// the thread whose namespace the reconciler was made in (the agent's only
// namespace).
func (r *Reconciler) Run(ctx context.Context) error {
	r.apply()
	return kernelwatch.Loop{
		What:      "link and neighbour events",
		Subscribe: r.subscribe,
		Resync:    r.opts.ResyncInterval,
		Settle:    settle,
		Run:       func(context.Context) { r.apply() },
		Log:       r.opts.Log,
	}.Serve(ctx)
}

// events is a subscription to link and neighbour changes: every change
// asks for a run.
type events struct {
	fire chan struct{}
	done chan struct{}
}

func (e *events) Events() <-chan struct{} { return e.fire }
func (e *events) Close()                  { close(e.done) }

func (r *Reconciler) subscribe() (kernelwatch.Subscription, error) {
	e := &events{fire: make(chan struct{}, 1), done: make(chan struct{})}
	links := make(chan netlink.LinkUpdate, 64)
	neighs := make(chan netlink.NeighUpdate, 256)
	failed := make(chan error, 2)
	onErr := func(err error) {
		select {
		case failed <- err:
		default:
		}
	}
	if err := netlink.LinkSubscribeWithOptions(links, e.done, netlink.LinkSubscribeOptions{ErrorCallback: onErr}); err != nil {
		close(e.done)
		return nil, fmt.Errorf("subscribe to link events: %w", err)
	}
	if err := netlink.NeighSubscribeWithOptions(neighs, e.done, netlink.NeighSubscribeOptions{ErrorCallback: onErr}); err != nil {
		close(e.done)
		return nil, fmt.Errorf("subscribe to neighbour events: %w", err)
	}
	go func() {
		defer close(e.fire)
		for {
			var ok bool
			select {
			case <-e.done:
				return
			case err := <-failed:
				// Events may have been lost (buffer overrun): the loop
				// subscribes again and runs.
				r.opts.Log.Warn("endpoint event subscription", "err", err)
				return
			case _, ok = <-links:
			case _, ok = <-neighs:
			}
			if !ok {
				return // the subscription ended
			}
			select {
			case e.fire <- struct{}{}:
			default: // a run is pending already
			}
		}
	}()
	return e, nil
}

func (r *Reconciler) apply() {
	res := r.Apply()
	for _, err := range res.Errors {
		r.opts.Log.Error("endpoint reconcile", "err", err)
	}
	if res.Added+res.Updated+res.Removed+res.Attached+res.Detached > 0 {
		r.opts.Log.Info("endpoints reconciled", "entries", res.Entries, "added", res.Added, "updated", res.Updated,
			"removed", res.Removed, "attached", res.Attached, "detached", res.Detached)
	}
}
