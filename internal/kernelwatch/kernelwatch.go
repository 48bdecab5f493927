// Package kernelwatch runs a reconciler on kernel events and a resync
// timer. The peer-route and the endpoint reconcilers share it: events and
// triggers that come while a run is pending coalesce into one run, a
// subscription that failed (events came faster than they were read) is
// made again with backoff, and the timer repairs whatever was missed.
package kernelwatch

import (
	"context"
	"log/slog"
	"time"
)

// Subscription is a kernel event subscription as the loop sees it.
type Subscription interface {
	// Events fires when an event asks for a run; it is closed when the
	// subscription failed.
	Events() <-chan struct{}
	Close()
}

// Resubscribe backoff after a subscription failed.
const (
	MinBackoff = 100 * time.Millisecond
	MaxBackoff = 30 * time.Second
)

// Loop is one reconciler's event loop.
type Loop struct {
	What string // the events, for logs ("route deletions")
	// Subscribe makes the event subscription; nil runs on the timer and
	// the triggers alone.
	Subscribe func() (Subscription, error)
	Triggers  <-chan struct{} // other reasons to run (nil: none)
	Resync    time.Duration
	// Settle is how long the loop lets a burst of events go on (a pod's
	// start brings several) before it runs; 0 runs at once.
	Settle time.Duration
	// Missed is called before the run the timer or a new subscription
	// asks for: events may have been missed (nil: nothing to do).
	Missed func()
	Run    func(context.Context) // one run
	Log    *slog.Logger
}

// Serve runs l until ctx is done. It returns nil then: a subscription
// that cannot be made is logged and retried, the timer covering for it.
func (l Loop) Serve(ctx context.Context) error {
	var events <-chan struct{}
	var retry <-chan time.Time
	backoff := MinBackoff
	var sub Subscription
	var err error
	if l.Subscribe != nil {
		if sub, err = l.Subscribe(); err != nil {
			l.Log.Warn("cannot watch "+l.What+", relying on resync until it works", "err", err)
			retry = time.After(backoff)
		} else {
			events = sub.Events()
		}
	}
	defer func() {
		if sub != nil {
			sub.Close()
		}
	}()
	tick := time.NewTicker(l.Resync)
	defer tick.Stop()

	for {
		select {
		case <-ctx.Done():
			return nil
		case <-l.Triggers:
		case <-tick.C:
			l.missed()
		case <-retry:
			retry = nil
			if sub, err = l.Subscribe(); err != nil {
				l.Log.Debug(l.What+" still not watched", "err", err)
				backoff = min(2*backoff, MaxBackoff)
				retry = time.After(backoff)
				continue
			}
			l.Log.Info("watching " + l.What + " again")
			events, backoff = sub.Events(), MinBackoff
			l.missed()
		case _, ok := <-events:
			if !ok { // failed: the subscription logged why
				sub.Close()
				sub, events = nil, nil
				retry = time.After(backoff)
				continue // the run follows once it is back
			}
		}
		if !l.settle(ctx) {
			return nil
		}
		l.drain(events)
		l.Run(ctx)
	}
}

func (l Loop) missed() {
	if l.Missed != nil {
		l.Missed()
	}
}

func (l Loop) settle(ctx context.Context) bool {
	if l.Settle == 0 {
		return true
	}
	t := time.NewTimer(l.Settle)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// drain takes the triggers already queued, so a burst costs one run.
func (l Loop) drain(events <-chan struct{}) {
	for {
		select {
		case <-l.Triggers:
		case _, ok := <-events:
			if !ok {
				return // Serve sees it closed next time round
			}
		default:
			return
		}
	}
}
