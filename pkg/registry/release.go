package registry

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Release deletes our lease key (only if it still names publicIP) and
// revokes its etcd lease: other nodes remove their routes at once. An
// absent key is already released.
func (r *Registry) Release(ctx context.Context, subnet netip.Prefix, publicIP netip.Addr) error {
	key := r.LeaseKey(subnet)
	resp, err := r.cli.Get(ctx, key)
	if err != nil {
		return fmt.Errorf("read %s: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		r.log.Info("no lease to release", "subnet", subnet, "key", key)
		return nil
	}
	kv := resp.Kvs[0]
	var attrs LeaseAttrs
	if err := json.Unmarshal(kv.Value, &attrs); err != nil || attrs.PublicIP != publicIP.String() {
		return fmt.Errorf("release %s: it belongs to %q, not to %s", key, attrs.PublicIP, publicIP)
	}
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
	r.log.Info("lease released", "subnet", subnet, "key", key, "public_ip", publicIP)
	return nil
}
