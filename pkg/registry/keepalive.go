package registry

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// KeepAlive keeps our lease alive until ctx is done. If the key vanishes
// or its etcd lease is lost (deleted by hand, expired while etcd was out of
// reach), it acquires again — the same subnet if still free — and reports
// the new lease to onChange. flanneld exits in that case; an agent that
// re-acquires keeps the node routable without a restart.
//
// Renewal is etcd's own keepalive: every TTL/3 (8h for flanneld's 24h,
// where flanneld renews 1h before expiry), so an etcd outage shorter than
// two thirds of the TTL costs nothing. While etcd is unreachable it keeps
// trying with backoff; returns nil when ctx is done.
func (r *Registry) KeepAlive(ctx context.Context, lease Lease, opts AcquireOptions, onChange func(Lease)) error {
	backoff := newBackoff(200*time.Millisecond, 10*time.Second)
	for {
		err := r.holdLease(ctx, lease)
		if ctx.Err() != nil {
			return nil
		}
		r.log.Warn("own lease lost, acquiring again", "subnet", lease.Subnet, "key", lease.Key, "err", err)
		for {
			if !backoff.sleep(ctx) {
				return nil
			}
			opts.Previous = lease.Subnet
			actx, cancel := context.WithTimeout(ctx, 10*time.Second)
			next, err := r.Acquire(actx, opts)
			cancel()
			if err == nil {
				lease = next
				backoff.reset()
				onChange(lease)
				break
			}
			if ctx.Err() != nil {
				return nil
			}
			r.log.Error("re-acquire lease", "err", err)
		}
	}
}

// holdLease renews lease's etcd lease and watches its key; it returns when
// either is lost, or ctx is done.
func (r *Registry) holdLease(ctx context.Context, lease Lease) error {
	hctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var kaCh <-chan *clientv3.LeaseKeepAliveResponse
	if !lease.Reservation {
		var err error
		if kaCh, err = r.cli.KeepAlive(hctx, clientv3.LeaseID(lease.LeaseID)); err != nil {
			return fmt.Errorf("keep etcd lease %x alive: %w", lease.LeaseID, err)
		}
	}
	wch := r.cli.Watch(hctx, lease.Key, clientv3.WithRev(lease.ModRevision+1))
	for {
		select {
		case <-ctx.Done():
			return nil
		case _, ok := <-kaCh:
			if !ok {
				return fmt.Errorf("etcd lease %x expired or revoked", lease.LeaseID)
			}
		case wr, ok := <-wch:
			if !ok {
				return fmt.Errorf("watch of %s closed", lease.Key)
			}
			if err := wr.Err(); err != nil {
				// Compacted past our revision: read the key directly.
				gctx, gcancel := context.WithTimeout(ctx, 5*time.Second)
				resp, gerr := r.cli.Get(gctx, lease.Key)
				gcancel()
				if gerr == nil && len(resp.Kvs) == 0 {
					return fmt.Errorf("%s deleted", lease.Key)
				}
				wch = r.cli.Watch(hctx, lease.Key)
				continue
			}
			for _, ev := range wr.Events {
				if ev.Type == clientv3.EventTypeDelete {
					return fmt.Errorf("%s deleted", lease.Key)
				}
				// Overwritten by another node: the subnet is no longer ours.
				var attrs LeaseAttrs
				if err := json.Unmarshal(ev.Kv.Value, &attrs); err != nil || attrs.PublicIP != lease.PublicIP.String() {
					return fmt.Errorf("%s taken over by %q", lease.Key, attrs.PublicIP)
				}
			}
		}
	}
}
