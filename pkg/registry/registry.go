package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Registry reads and writes leases under one etcd prefix.
type Registry struct {
	cli    *clientv3.Client
	prefix string
	log    *slog.Logger

	mu     sync.Mutex
	cfg    *Config             // set by Config
	logged map[string]struct{} // bad entries already logged, by key@revision
}

// New returns a registry over cli for prefix (DefaultPrefix if empty).
func New(cli *clientv3.Client, prefix string, log *slog.Logger) *Registry {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	return &Registry{cli: cli, prefix: strings.TrimSuffix(prefix, "/"), log: log, logged: map[string]struct{}{}}
}

func (r *Registry) configKey() string  { return r.prefix + "/config" }
func (r *Registry) subnetsDir() string { return r.prefix + "/subnets/" }

// LeaseKey is the etcd key of subnet's lease.
func (r *Registry) LeaseKey(subnet netip.Prefix) string { return r.subnetsDir() + SubnetKey(subnet) }

// Config reads and checks the network config. Every later call parses
// leases against it.
func (r *Registry) Config(ctx context.Context) (Config, error) {
	key := r.configKey()
	resp, err := r.cli.Get(ctx, key)
	if err != nil {
		return Config{}, fmt.Errorf("read network config %s: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		return Config{}, fmt.Errorf("network config %s is missing: write it first, e.g. {\"Network\":\"10.244.0.0/16\",\"Backend\":{\"Type\":\"host-gw\"}}", key)
	}
	cfg, err := ParseConfig(resp.Kvs[0].Value)
	if err != nil {
		return Config{}, fmt.Errorf("network config %s: %w", key, err)
	}
	r.mu.Lock()
	r.cfg = &cfg
	r.mu.Unlock()
	return cfg, nil
}

func (r *Registry) config() (Config, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cfg == nil {
		return Config{}, errors.New("registry: Config must be read first")
	}
	return *r.cfg, nil
}

// parse turns one etcd entry into a lease, or says why it is not one.
func (r *Registry) parse(cfg Config, key string, value []byte, leaseID, modRev int64) (Lease, *Skipped) {
	skip := func(reason string, err error) (Lease, *Skipped) {
		return Lease{}, &Skipped{Key: key, Reason: reason, Err: err}
	}
	v4, v6, err := ParseSubnetKey(strings.TrimPrefix(key, r.subnetsDir()))
	if err != nil {
		return skip("bad_key", err)
	}
	var attrs LeaseAttrs
	if err := json.Unmarshal(value, &attrs); err != nil {
		return skip("bad_json", fmt.Errorf("value is not a lease: %w", err))
	}
	ip, err := netip.ParseAddr(attrs.PublicIP)
	if err != nil || !ip.Is4() {
		return skip("bad_public_ip", fmt.Errorf("PublicIP %q is not an IPv4 address", attrs.PublicIP))
	}
	if !cfg.Network.Contains(v4.Addr()) || v4.Bits() < cfg.Network.Bits() {
		return skip("outside_network", fmt.Errorf("subnet %s is outside the network %s", v4, cfg.Network))
	}
	if cfg.BackendType != "" && attrs.BackendType != "" && attrs.BackendType != cfg.BackendType {
		return skip("backend", fmt.Errorf("backend %q, the network uses %q", attrs.BackendType, cfg.BackendType))
	}
	return Lease{
		Key: key, Subnet: v4, IPv6Subnet: v6, PublicIP: ip, Attrs: attrs,
		Reservation: leaseID == 0, LeaseID: leaseID, ModRevision: modRev,
	}, nil
}

// logSkipped logs a bad entry once per revision of its key.
func (r *Registry) logSkipped(s Skipped, modRev int64) {
	id := fmt.Sprintf("%s@%d", s.Key, modRev)
	r.mu.Lock()
	_, seen := r.logged[id]
	r.logged[id] = struct{}{}
	r.mu.Unlock()
	if !seen {
		r.log.Warn("skipping etcd entry", "key", s.Key, "reason", s.Reason, "err", s.Err)
	}
}

// list reads every lease.
func (r *Registry) list(ctx context.Context) (map[string]Lease, map[string]Skipped, int64, error) {
	cfg, err := r.config()
	if err != nil {
		return nil, nil, 0, err
	}
	resp, err := r.cli.Get(ctx, r.subnetsDir(), clientv3.WithPrefix())
	if err != nil {
		return nil, nil, 0, fmt.Errorf("list %s: %w", r.subnetsDir(), err)
	}
	leases, skipped := map[string]Lease{}, map[string]Skipped{}
	for _, kv := range resp.Kvs {
		l, sk := r.parse(cfg, string(kv.Key), kv.Value, kv.Lease, kv.ModRevision)
		if sk != nil {
			r.logSkipped(*sk, kv.ModRevision)
			skipped[sk.Key] = *sk
			continue
		}
		leases[l.Key] = l
	}
	return leases, skipped, resp.Header.Revision, nil
}

// AcquireOptions says who we are and what we had before.
type AcquireOptions struct {
	PublicIP netip.Addr
	Previous netip.Prefix // from the subnet file; zero if none
	TTL      time.Duration
}

// attrs is the lease value we write: flanneld's JSON for host-gw.
func (o AcquireOptions) attrs() LeaseAttrs {
	return LeaseAttrs{PublicIP: o.PublicIP.String(), BackendType: "host-gw"}
}

// ErrNoFreeSubnet means every subnet of the network is leased.
var ErrNoFreeSubnet = errors.New("no free subnet left in the network")

// Acquire takes this node's lease: the lease it already holds (same
// PublicIP), else the previous subnet if free, else a random free one.
// Creation is a transaction that fails if the key exists, so two nodes
// never both win a subnet.
func (r *Registry) Acquire(ctx context.Context, opts AcquireOptions) (Lease, error) {
	cfg, err := r.config()
	if err != nil {
		return Lease{}, err
	}
	if !opts.PublicIP.Is4() {
		return Lease{}, fmt.Errorf("acquire: public IP %s is not IPv4", opts.PublicIP)
	}
	for attempt := 0; attempt < 16; attempt++ {
		leases, skipped, _, err := r.list(ctx)
		if err != nil {
			return Lease{}, err
		}
		taken := map[netip.Prefix]bool{}
		var odd []netip.Prefix // other lengths block every subnet they overlap
		mark := func(p netip.Prefix) {
			if p.Bits() == cfg.SubnetLen {
				taken[p] = true
			} else {
				odd = append(odd, p)
			}
		}
		isFree := func(p netip.Prefix) bool {
			return !taken[p] && !slices.ContainsFunc(odd, p.Overlaps)
		}
		for _, l := range leases {
			if l.PublicIP == opts.PublicIP {
				return r.renew(ctx, l, opts)
			}
			mark(l.Subnet)
		}
		for _, s := range skipped { // a bad value still occupies its key
			if v4, _, err := ParseSubnetKey(strings.TrimPrefix(s.Key, r.subnetsDir())); err == nil {
				mark(v4)
			}
		}
		var candidate netip.Prefix
		if p := opts.Previous; p.IsValid() && cfg.InRange(p) && isFree(p) {
			candidate = p
		} else {
			n, nth := cfg.Subnets()
			var free []netip.Prefix
			for i := 0; i < n; i++ {
				if p := nth(i); isFree(p) {
					free = append(free, p)
				}
			}
			if len(free) == 0 {
				return Lease{}, fmt.Errorf("acquire in %s (%s..%s): %w", cfg.Network, cfg.SubnetMin, cfg.SubnetMax, ErrNoFreeSubnet)
			}
			candidate = free[rand.IntN(len(free))]
		}
		l, won, err := r.create(ctx, candidate, opts)
		if err != nil {
			return Lease{}, err
		}
		if won {
			return l, nil
		}
		r.log.Info("subnet taken by another node meanwhile, trying another", "subnet", candidate)
	}
	return Lease{}, errors.New("acquire: lost the race for a subnet 16 times")
}

// create writes a new lease for subnet if its key does not exist.
func (r *Registry) create(ctx context.Context, subnet netip.Prefix, opts AcquireOptions) (Lease, bool, error) {
	key := r.LeaseKey(subnet)
	value, err := json.Marshal(opts.attrs())
	if err != nil {
		return Lease{}, false, err
	}
	grant, err := r.cli.Grant(ctx, int64(opts.TTL.Seconds()))
	if err != nil {
		return Lease{}, false, fmt.Errorf("grant etcd lease for %s: %w", key, err)
	}
	resp, err := r.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(value), clientv3.WithLease(grant.ID))).
		Commit()
	if err != nil || !resp.Succeeded {
		r.revoke(ctx, grant.ID)
		if err != nil {
			return Lease{}, false, fmt.Errorf("create %s: %w", key, err)
		}
		return Lease{}, false, nil
	}
	return Lease{
		Key: key, Subnet: subnet, PublicIP: opts.PublicIP, Attrs: opts.attrs(), LeaseID: int64(grant.ID),
		Expiration: time.Now().Add(time.Duration(grant.TTL) * time.Second), ModRevision: resp.Header.Revision,
	}, true, nil
}

// renew takes over our own existing lease: a reservation stays as it is;
// a leased key is re-bound to a fresh etcd lease (the old one belonged to
// our previous process), unless someone changed it meanwhile.
func (r *Registry) renew(ctx context.Context, l Lease, opts AcquireOptions) (Lease, error) {
	if l.Reservation {
		r.log.Info("using reserved subnet", "subnet", l.Subnet, "key", l.Key)
		return l, nil
	}
	value, err := json.Marshal(mergeAttrs(l.Attrs, opts.attrs()))
	if err != nil {
		return Lease{}, err
	}
	grant, err := r.cli.Grant(ctx, int64(opts.TTL.Seconds()))
	if err != nil {
		return Lease{}, fmt.Errorf("grant etcd lease for %s: %w", l.Key, err)
	}
	resp, err := r.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(l.Key), "=", l.ModRevision)).
		Then(clientv3.OpPut(l.Key, string(value), clientv3.WithLease(grant.ID))).
		Commit()
	if err != nil {
		return Lease{}, fmt.Errorf("renew %s: %w", l.Key, err)
	}
	if !resp.Succeeded {
		r.revoke(ctx, grant.ID)
		return Lease{}, fmt.Errorf("renew %s: changed by someone else meanwhile", l.Key)
	}
	r.revoke(ctx, clientv3.LeaseID(l.LeaseID)) // the old process's lease, now unused
	l.LeaseID = int64(grant.ID)
	l.Expiration = time.Now().Add(time.Duration(grant.TTL) * time.Second)
	l.ModRevision = resp.Header.Revision
	r.log.Info("reusing own lease", "subnet", l.Subnet, "key", l.Key)
	return l, nil
}

// mergeAttrs keeps fields a flanneld wrote that we do not manage.
func mergeAttrs(old, ours LeaseAttrs) LeaseAttrs {
	old.PublicIP, old.BackendType = ours.PublicIP, ours.BackendType
	return old
}

// Release deletes our lease key (only if it still names publicIP) and
// revokes its etcd lease: other nodes remove their routes at once.
func (r *Registry) Release(ctx context.Context, subnet netip.Prefix, publicIP netip.Addr) error {
	key := r.LeaseKey(subnet)
	resp, err := r.cli.Get(ctx, key)
	if err != nil {
		return fmt.Errorf("read %s: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
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
		r.cli.Revoke(ctx, clientv3.LeaseID(kv.Lease))
	}
	r.log.Info("lease released", "subnet", subnet, "key", key)
	return nil
}

// revoke frees an etcd lease we no longer use. It outlives a cancelled ctx
// (cleanup) but not etcd being gone: the client would wait for it forever.
func (r *Registry) revoke(ctx context.Context, id clientv3.LeaseID) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	r.cli.Revoke(ctx, id)
}
