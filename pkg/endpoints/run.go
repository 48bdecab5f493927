package endpoints

import (
	"context"
	"fmt"
	"time"

	"github.com/vishvananda/netlink"
)

// settle coalesces a burst of link and neighbour events (a pod start brings
// several) into one Apply.
const settle = 50 * time.Millisecond

// Run applies at once, then on every link or neighbour change in this
// namespace and every ResyncInterval, until ctx ends. It must be called on
// the thread whose namespace the reconciler was made in (the agent's only
// namespace).
func (r *Reconciler) Run(ctx context.Context) error {
	done := make(chan struct{})
	defer close(done)
	links := make(chan netlink.LinkUpdate, 64)
	neighs := make(chan netlink.NeighUpdate, 256)
	subErr := make(chan error, 2)
	onErr := func(err error) {
		select {
		case subErr <- err:
		default:
		}
	}
	if err := netlink.LinkSubscribeWithOptions(links, done, netlink.LinkSubscribeOptions{ErrorCallback: onErr}); err != nil {
		return fmt.Errorf("subscribe to link events: %w", err)
	}
	if err := netlink.NeighSubscribeWithOptions(neighs, done, netlink.NeighSubscribeOptions{ErrorCallback: onErr}); err != nil {
		return fmt.Errorf("subscribe to neighbour events: %w", err)
	}

	tick := time.NewTicker(r.opts.ResyncInterval)
	defer tick.Stop()
	var pending <-chan time.Time // fires once a burst of events settled
	r.apply()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-subErr:
			// Events may have been lost (buffer overrun): the resync still
			// runs, so log and go on with what we have.
			r.opts.Log.Warn("endpoint event subscription", "err", err)
		case _, ok := <-links:
			if !ok {
				links = nil
			}
			if pending == nil {
				pending = time.After(settle)
			}
		case _, ok := <-neighs:
			if !ok {
				neighs = nil
			}
			if pending == nil {
				pending = time.After(settle)
			}
		case <-pending:
			pending = nil
			r.apply()
		case <-tick.C:
			r.apply()
		}
	}
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
