package registry

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// KeepAlive keeps our lease alive until ctx is done. If the key vanishes,
// its etcd lease is lost (deleted by hand, expired while etcd was out of
// reach) or the key is no longer ours (another PublicIP, or bound to an
// etcd lease we do not renew; checked on every change, and on the key as
// it is when the watch resumes past a compaction), it acquires again —
// the same subnet if still free — and reports the new lease to onChange.
// flanneld exits in that case; an agent that re-acquires keeps the node
// routable without a restart.
//
// Renewal is etcd's own keepalive: every TTL/3 (8h for flanneld's 24h,
// where flanneld renews 1h before expiry), so an etcd outage shorter than
// two thirds of the TTL costs nothing. While etcd is unreachable it keeps
// trying with backoff; returns nil when ctx is done.
func (r *Registry) KeepAlive(ctx context.Context, lease Lease, opts AcquireOptions, onChange func(Lease)) error {
	backoff := NewBackoff(200*time.Millisecond, 10*time.Second)
	for {
		err := r.holdLease(ctx, lease)
		if ctx.Err() != nil {
			return nil
		}
		r.log.Warn("own lease lost, acquiring again", "subnet", lease.Subnet, "key", lease.Key, "err", err)
		for {
			if !backoff.Sleep(ctx) {
				return nil
			}
			opts.Previous, opts.PreviousIPv6 = lease.Subnet, lease.IPv6Subnet
			actx, cancel := context.WithTimeout(ctx, 10*time.Second)
			next, err := r.Acquire(actx, opts)
			cancel()
			if err == nil {
				lease = next
				backoff.Reset()
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
// either is lost, when the key is no longer ours, or when ctx is done.
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
	var retry <-chan time.Time // while etcd does not answer the read
	resume := func() error {
		var err error
		if wch, err = r.resume(hctx, lease); wch == nil && err == nil {
			retry = time.After(time.Second)
		}
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case _, ok := <-kaCh:
			if !ok {
				return fmt.Errorf("etcd lease %x expired or revoked", lease.LeaseID)
			}
		case <-retry:
			retry = nil
			if err := resume(); err != nil {
				return err
			}
		case wr, ok := <-wch:
			if !ok {
				return fmt.Errorf("watch of %s closed", lease.Key)
			}
			if wr.Err() != nil {
				// Compacted past our revision, or cancelled by etcd: the
				// events meanwhile are lost; the key as it is now tells.
				if err := resume(); err != nil {
					return err
				}
				continue
			}
			for _, ev := range wr.Events {
				if ev.Type == clientv3.EventTypeDelete {
					return fmt.Errorf("%s deleted", lease.Key)
				}
				if err := owned(lease, ev.Kv); err != nil {
					return err
				}
			}
		}
	}
}

// resume reads lease's key as it is now and watches it from the revision
// read. It fails if the key is gone or no longer ours, and returns neither
// a watch nor an error if etcd did not answer (try again later).
func (r *Registry) resume(ctx context.Context, lease Lease) (clientv3.WatchChan, error) {
	gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	resp, err := r.cli.Get(gctx, lease.Key)
	cancel()
	if err != nil {
		r.log.Debug("read own lease key", "key", lease.Key, "err", err)
		return nil, nil
	}
	if len(resp.Kvs) == 0 {
		return nil, fmt.Errorf("%s deleted", lease.Key)
	}
	if err := owned(lease, resp.Kvs[0]); err != nil {
		return nil, err
	}
	return r.cli.Watch(ctx, lease.Key, clientv3.WithRev(resp.Header.Revision+1)), nil
}

// owned checks that kv, lease's key, is still what we hold: our PublicIP,
// bound to our etcd lease (to none for a reservation). Another node's
// value, or ours on an etcd lease we do not renew, is not our lease.
func owned(lease Lease, kv *mvccpb.KeyValue) error {
	var attrs LeaseAttrs
	if err := json.Unmarshal(kv.Value, &attrs); err != nil || attrs.PublicIP != lease.PublicIP.String() {
		return fmt.Errorf("%s taken over by %q", lease.Key, attrs.PublicIP)
	}
	if kv.Lease != lease.LeaseID {
		return fmt.Errorf("%s is bound to etcd lease %x, not to ours (%x)", lease.Key, kv.Lease, lease.LeaseID)
	}
	return nil
}
