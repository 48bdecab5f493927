package registry

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// WatchHooks lets the caller count what the watch does (metrics) and
// tune it.
type WatchHooks struct {
	Event  func() // one lease change received
	Relist func() // a full re-read after a broken or compacted watch
	// HistoryCheck is how often a quiet watch reads etcd's revision to
	// notice an etcd recreated or restored from a backup behind the same
	// endpoint (default 30s; negative: never). The client resumes the
	// watch at our revision, which such an etcd may not reach for a long
	// time, and etcd sends no progress to a watch ahead of it.
	HistoryCheck time.Duration
}

// DefaultHistoryCheck is WatchHooks.HistoryCheck's default.
const DefaultHistoryCheck = 30 * time.Second

// Watch lists the leases, then watches them from the listed revision, and
// calls fn with the complete table after the initial list (Full) and with
// the changed keys after every change. A compacted or broken watch, a lost
// leader or an unreachable etcd leads to a fresh list once etcd answers
// again (Full again); meanwhile fn is not called, so consumers keep the
// last good state. The events of one watch response (one etcd
// transaction, or several revisions read at once) are applied together
// before fn is called: a consumer never sees half a transaction. fn runs
// on Watch's goroutine. Returns nil when ctx is done.
func (r *Registry) Watch(ctx context.Context, fn func(Change), hooks WatchHooks) error {
	backoff := NewBackoff(100*time.Millisecond, 5*time.Second)
	for first := true; ; first = false {
		if !first && hooks.Relist != nil {
			hooks.Relist()
		}
		err := r.watchOnce(ctx, fn, hooks, backoff)
		if ctx.Err() != nil {
			return nil
		}
		r.log.Warn("lease watch broken, reading all leases again", "err", err)
		if !backoff.Sleep(ctx) {
			return nil
		}
	}
}

func (r *Registry) watchOnce(ctx context.Context, fn func(Change), hooks WatchHooks, backoff *Backoff) error {
	// Bounded so that an etcd that accepts connections but does not answer
	// is retried; generous because list asks each etcd lease its TTL.
	lctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	ls, err := r.list(lctx)
	cancel()
	if err != nil {
		return err
	}
	t := ls.table
	fn(Change{Full: true, Leases: t})
	backoff.Reset() // etcd answers again: the next break re-lists quickly
	cfg, err := r.config()
	if err != nil {
		return err
	}

	wctx, wcancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer wcancel()
	wch := r.cli.Watch(wctx, r.subnetsDir(), clientv3.WithPrefix(), clientv3.WithRev(t.rev+1))
	last := t.rev
	tick, stopTick := historyTicker(hooks.HistoryCheck)
	defer stopTick()
	var keys []string
	for {
		var wr clientv3.WatchResponse
		select {
		case <-tick:
			if err := r.sameHistory(ctx, ls.cluster, last); err != nil {
				return fmt.Errorf("watch %s: %w", r.subnetsDir(), err)
			}
			continue
		case resp, ok := <-wch:
			if !ok {
				return fmt.Errorf("watch %s closed", r.subnetsDir())
			}
			wr = resp
		}
		if err := wr.Err(); err != nil {
			return fmt.Errorf("watch %s: %w", r.subnetsDir(), err)
		}
		last = wr.Header.Revision
		keys, err = r.applyEvents(ctx, t, cfg, wr.Events, hooks, keys[:0])
		if err != nil {
			return err
		}
		if len(wr.Events) > 0 {
			t.rev = wr.Header.Revision
			slices.Sort(keys) // each once
			fn(Change{Keys: slices.Compact(keys), Leases: t})
		}
	}
}

// historyTicker fires every HistoryCheck (DefaultHistoryCheck when 0;
// never when negative).
func historyTicker(every time.Duration) (<-chan time.Time, func()) {
	if every == 0 {
		every = DefaultHistoryCheck
	}
	if every < 0 {
		return nil, func() {}
	}
	t := time.NewTicker(every)
	return t.C, t.Stop
}

// applyEvents applies one watch response's events to t, appending the
// keys they touched to keys.
func (r *Registry) applyEvents(ctx context.Context, t *Table, cfg Config, events []*clientv3.Event, hooks WatchHooks, keys []string) ([]string, error) {
	for _, ev := range events {
		key := string(ev.Kv.Key)
		switch {
		case ev.Type != clientv3.EventTypePut:
			t.Remove(key)
			r.forgetSkipped(key)
		default:
			l, sk := r.parse(cfg, key, ev.Kv.Value, ev.Kv.Lease, ev.Kv.ModRevision)
			if sk != nil {
				r.logSkipped(*sk, ev.Kv.ModRevision)
				t.PutSkipped(*sk)
				break
			}
			r.forgetSkipped(key)
			tctx, tcancel := context.WithTimeout(ctx, 5*time.Second)
			var err error
			l.Expiration, err = r.expiration(tctx, ev.Kv.Lease, nil)
			tcancel()
			if err != nil {
				// Half-applied events are dropped with this table: the
				// next pass starts from a fresh list.
				return nil, fmt.Errorf("watch %s: %s: %w", r.subnetsDir(), key, err)
			}
			t.Put(l)
		}
		keys = append(keys, key)
		if hooks.Event != nil {
			hooks.Event()
		}
	}
	return keys, nil
}

// sameHistory checks that etcd is still the cluster we listed, at least
// at the revision we have seen. An etcd that does not answer is no news:
// the client reconnects on its own.
func (r *Registry) sameHistory(ctx context.Context, cluster uint64, seen int64) error {
	gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := r.cli.Get(gctx, r.configKey(), clientv3.WithCountOnly())
	if err != nil {
		return nil
	}
	if resp.Header.ClusterId != cluster || resp.Header.Revision < seen {
		return fmt.Errorf("etcd's history changed: cluster %x at revision %d, we watched %x at %d",
			resp.Header.ClusterId, resp.Header.Revision, cluster, seen)
	}
	return nil
}

// byKey is m's values in key order (nil if m is empty).
func byKey[V any](m map[string]V) []V {
	if len(m) == 0 {
		return nil
	}
	out := make([]V, 0, len(m))
	for _, k := range slices.Sorted(maps.Keys(m)) {
		out = append(out, m[k])
	}
	return out
}
