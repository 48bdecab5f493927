package lab

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/hgw-ebpf/hgw-ebpf/internal/registry"
)

// leaseKey is the registry's key for a subnet (and an IPv6 one, if
// valid): <prefix>/subnets/10.244.1.0-24 or
// 10.244.1.0-24&fd00:10:244:1::-64, as flannel writes it.
func leaseKey(prefix string, subnet, subnet6 netip.Prefix) string {
	return registry.New(nil, prefix, nil).DualStackLeaseKey(subnet.Masked(), subnet6.Masked())
}

// PutLease writes the lease of subnet with a raw value (any JSON, valid or
// not: tests feed the agents bad input too), bound to an etcd lease of ttl,
// or a reservation when ttl is 0.
func (l *Lab) PutLease(ctx context.Context, subnet netip.Prefix, value string, ttl time.Duration) error {
	return l.putLease(ctx, subnet, netip.Prefix{}, value, ttl)
}

// PutDualStackLease is PutLease for a dual-stack lease of subnet and
// subnet6, under flanneld's key for both.
func (l *Lab) PutDualStackLease(ctx context.Context, subnet, subnet6 netip.Prefix, value string, ttl time.Duration) error {
	return l.putLease(ctx, subnet, subnet6, value, ttl)
}

func (l *Lab) putLease(ctx context.Context, subnet, subnet6 netip.Prefix, value string, ttl time.Duration) error {
	key := leaseKey(l.cfg.EtcdPrefix, subnet, subnet6)
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var opts []clientv3.OpOption
	if ttl > 0 {
		grant, err := l.client.Grant(ctx, int64(ttl/time.Second))
		if err != nil {
			return fmt.Errorf("grant etcd lease for %s: %w", key, err)
		}
		opts = append(opts, clientv3.WithLease(grant.ID))
	}
	if _, err := l.client.Put(ctx, key, value, opts...); err != nil {
		return fmt.Errorf("put lease %s: %w", key, err)
	}
	return nil
}

// DeleteLease removes the lease of a subnet, IPv4-only or dual-stack.
func (l *Lab) DeleteLease(ctx context.Context, subnet netip.Prefix) error {
	key := leaseKey(l.cfg.EtcdPrefix, subnet, netip.Prefix{})
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for _, del := range []struct {
		key  string
		opts []clientv3.OpOption
	}{{key, nil}, {key + "&", []clientv3.OpOption{clientv3.WithPrefix()}}} {
		if _, err := l.client.Delete(ctx, del.key, del.opts...); err != nil {
			return fmt.Errorf("delete lease %s: %w", key, err)
		}
	}
	return nil
}

// Leases lists the subnet leases in the lab's etcd.
func (l *Lab) Leases(ctx context.Context) ([]LeaseEntry, error) {
	return listLeases(ctx, l.client, l.cfg.EtcdPrefix)
}

// LeaseEntry is one key under <prefix>/subnets/ as stored in etcd.
type LeaseEntry struct {
	Key   string
	Value string
	TTL   int64 // seconds left; 0 for a reservation (no etcd lease)
}

// listLeases reads every subnet lease with its remaining TTL.
func listLeases(ctx context.Context, cli *clientv3.Client, prefix string) ([]LeaseEntry, error) {
	dir := registry.SubnetsDir(prefix)
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, dir, clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", dir, err)
	}
	out := make([]LeaseEntry, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		le := LeaseEntry{Key: string(kv.Key), Value: string(kv.Value)}
		if kv.Lease != 0 {
			if ttl, err := cli.TimeToLive(ctx, clientv3.LeaseID(kv.Lease)); err == nil {
				le.TTL = ttl.TTL
			}
		}
		out = append(out, le)
	}
	return out, nil
}

// Leases lists the subnet leases of the lab described by s, from any
// process: the keys in its etcd, or in a kube lab its Nodes.
func (s State) Leases(ctx context.Context) ([]LeaseEntry, error) {
	if s.Registry == RegistryKube {
		return s.kubeLeases(ctx)
	}
	cli, err := newEtcdClient(s.Underlay)
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	return listLeases(ctx, cli, s.EtcdKeys)
}
