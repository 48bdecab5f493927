package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Release deletes our lease of subnet — its key "10.244.1.0-24", or
// "10.244.1.0-24&<IPv6 subnet>" on a dual-stack node — if it still names
// publicIP, and revokes its etcd lease: other nodes remove their routes at
// once. An absent key is already released; a lease of subnet that names
// another node is left alone, and is an error.
func (r *Registry) Release(ctx context.Context, subnet netip.Prefix, publicIP netip.Addr) error {
	key := r.LeaseKey(subnet)
	// One read for both key forms; a prefix also matches other keys
	// ("-24" is a prefix of "-240"), which the parse below drops.
	resp, err := r.cli.Get(ctx, key, clientv3.WithPrefix())
	if err != nil {
		return fmt.Errorf("read %s: %w", key, err)
	}
	var mine, others []*mvccpb.KeyValue
	for _, kv := range resp.Kvs {
		if v4, _, err := ParseSubnetKey(string(kv.Key[len(r.subnetsDir()):])); err != nil || v4 != subnet {
			continue
		}
		var attrs LeaseAttrs
		if err := json.Unmarshal(kv.Value, &attrs); err != nil || attrs.PublicIP != publicIP.String() {
			others = append(others, kv)
			continue
		}
		mine = append(mine, kv)
	}
	if len(mine) == 0 && len(others) > 0 {
		var attrs LeaseAttrs
		json.Unmarshal(others[0].Value, &attrs)
		return fmt.Errorf("release %s: it belongs to %q, not to %s", others[0].Key, attrs.PublicIP, publicIP)
	}
	if len(mine) == 0 {
		r.log.Info("no lease to release", "subnet", subnet, "key", key)
		return nil
	}
	var errs []error
	for _, kv := range mine {
		errs = append(errs, r.release(ctx, kv, publicIP))
	}
	return errors.Join(errs...)
}

// release deletes kv's key if unchanged since read and revokes its lease.
func (r *Registry) release(ctx context.Context, kv *mvccpb.KeyValue, publicIP netip.Addr) error {
	key := string(kv.Key)
	txn, err := r.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(key), "=", kv.ModRevision)).
		Then(clientv3.OpDelete(key)).Commit()
	if err != nil {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	if !txn.Succeeded {
		return fmt.Errorf("release %s: changed by someone else meanwhile", key)
	}
	if kv.Lease != 0 {
		if _, err := r.cli.Revoke(ctx, clientv3.LeaseID(kv.Lease)); err != nil {
			// The key is gone already; the lease would only expire later.
			r.log.Warn("revoke released lease", "key", key, "err", err)
		}
	}
	r.log.Info("lease released", "key", key, "public_ip", publicIP)
	return nil
}
