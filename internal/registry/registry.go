package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
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

	page int // keys per request of a listing (listPage)

	mu     sync.Mutex
	cfg    *Config          // set by Config
	logged map[string]int64 // bad entries already logged: key -> its ModRevision then
}

// New returns a registry over cli for prefix (DefaultPrefix if empty).
func New(cli *clientv3.Client, prefix string, log *slog.Logger) *Registry {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	return &Registry{cli: cli, prefix: prefix, log: log, logged: map[string]int64{}, page: listPage}
}

// ConfigKey is the key of the network config under prefix.
func ConfigKey(prefix string) string { return strings.TrimSuffix(prefix, "/") + "/config" }

// SubnetsDir is the directory of the lease keys under prefix.
func SubnetsDir(prefix string) string { return strings.TrimSuffix(prefix, "/") + "/subnets/" }

func (r *Registry) configKey() string  { return ConfigKey(r.prefix) }
func (r *Registry) subnetsDir() string { return SubnetsDir(r.prefix) }

// LeaseKey is the etcd key of an IPv4-only lease of subnet.
func (r *Registry) LeaseKey(subnet netip.Prefix) string { return r.subnetsDir() + SubnetKey(subnet) }

// DualStackLeaseKey is the etcd key of a lease of v4 and v6 (v6 zero:
// IPv4 only).
func (r *Registry) DualStackLeaseKey(v4, v6 netip.Prefix) string {
	return r.subnetsDir() + DualStackKey(v4, v6)
}

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
// Expiration is left to the caller: it costs a round trip to etcd.
func (r *Registry) parse(cfg Config, key string, value []byte, leaseID, modRev int64) (Lease, *Skipped) {
	skip := func(reason string, err error) (Lease, *Skipped) {
		return Lease{}, &Skipped{Key: key, Reason: reason, Err: err}
	}
	v4, v6, err := ParseSubnetKey(strings.TrimPrefix(key, r.subnetsDir()))
	if err != nil {
		return skip(ReasonBadKey, err)
	}
	var attrs LeaseAttrs
	if err := json.Unmarshal(value, &attrs); err != nil {
		return skip(ReasonBadJSON, fmt.Errorf("value is not a lease: %w", err))
	}
	ip, ok := ParsePublicIP(attrs.PublicIP)
	if !ok {
		return skip(ReasonBadPublicIP, fmt.Errorf("PublicIP %q is not an IPv4 address", attrs.PublicIP))
	}
	// An IPv4-only lease (flanneld writes "PublicIPv6":null) is fine next
	// to dual-stack ones; a malformed PublicIPv6 makes the value suspect.
	var ip6 netip.Addr
	if attrs.PublicIPv6 != "" {
		if ip6, ok = ParsePublicIPv6(attrs.PublicIPv6); !ok {
			return skip(ReasonBadPublicIP, fmt.Errorf("PublicIPv6 %q is not an IPv6 address", attrs.PublicIPv6))
		}
	}
	if !InNetwork(cfg.Network, v4) {
		return skip(ReasonOutsideNetwork, fmt.Errorf("subnet %s is outside the network %s", v4, cfg.Network))
	}
	// Without EnableIPv6 an IPv6 subnet is not ours to judge (nor to
	// route); with it, one outside IPv6Network is as suspect as an IPv4
	// subnet outside Network.
	if cfg.EnableIPv6 && v6.IsValid() && !InNetwork(cfg.IPv6Network, v6) {
		return skip(ReasonOutsideNetwork, fmt.Errorf("IPv6 subnet %s is outside the IPv6 network %s", v6, cfg.IPv6Network))
	}
	if cfg.OtherBackend(attrs.BackendType) {
		return skip(ReasonBackend, fmt.Errorf("backend %q, the network uses %q", attrs.BackendType, cfg.BackendType))
	}
	return Lease{
		Key: key, Subnet: v4, IPv6Subnet: v6, PublicIP: ip, PublicIPv6: ip6, Attrs: attrs,
		Reservation: leaseID == 0, LeaseID: leaseID, ModRevision: modRev,
	}, nil
}

// expiration asks etcd when an etcd lease ends (zero for 0: a
// reservation). cache, if not nil, saves asking twice for a lease that
// several keys share.
func (r *Registry) expiration(ctx context.Context, id int64, cache map[int64]time.Time) (time.Time, error) {
	if id == 0 {
		return time.Time{}, nil
	}
	if t, ok := cache[id]; ok {
		return t, nil
	}
	resp, err := r.cli.TimeToLive(ctx, clientv3.LeaseID(id))
	if err != nil {
		return time.Time{}, fmt.Errorf("read TTL of etcd lease %x: %w", id, err)
	}
	// TTL -1: expired since the key was read; its deletion is on its way.
	t := time.Now().Add(time.Duration(max(resp.TTL, 0)) * time.Second)
	if cache != nil {
		cache[id] = t
	}
	return t, nil
}

// logSkipped logs a bad entry once per revision of its key, so a
// snapshot per change does not repeat every bad key.
func (r *Registry) logSkipped(s Skipped, modRev int64) {
	r.mu.Lock()
	last, seen := r.logged[s.Key]
	r.logged[s.Key] = modRev
	r.mu.Unlock()
	if !seen || last != modRev {
		r.log.Warn("skipping etcd entry", "key", s.Key, "reason", s.Reason, "err", s.Err)
	}
}

// forgetSkipped drops what logSkipped remembers of key: it is deleted or
// fixed, and if it turns bad again that is news.
func (r *Registry) forgetSkipped(key string) {
	r.mu.Lock()
	delete(r.logged, key)
	r.mu.Unlock()
}

// keepSkipped forgets every key that is not bad any more.
func (r *Registry) keepSkipped(bad map[string]bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for k := range r.logged {
		if _, still := bad[k]; !still {
			delete(r.logged, k)
		}
	}
}

// listing is every entry under subnets/ at one revision of one etcd.
type listing struct {
	table   *Table
	cluster uint64 // etcd's cluster ID: a new one is a new history
}

// listPage is how many keys one request of a listing reads: tens of
// thousands of leases in one response would be tens of megabytes held
// at once, in etcd's client and in ours.
const listPage = 4096

// list reads every lease at one revision, a page at a time (each page at
// the revision of the first). It fails as a whole, never returning a
// partial set.
func (r *Registry) list(ctx context.Context) (listing, error) {
	cfg, err := r.config()
	if err != nil {
		return listing{}, err
	}
	dir := r.subnetsDir()
	ls := listing{table: NewTable()}
	bad := map[string]bool{}
	exps := map[int64]time.Time{}
	opts := []clientv3.OpOption{clientv3.WithRange(clientv3.GetPrefixRangeEnd(dir)), clientv3.WithLimit(int64(r.page))}
	for from := dir; ; {
		resp, err := r.cli.Get(ctx, from, opts...)
		if err != nil {
			return listing{}, fmt.Errorf("list %s: %w", dir, err)
		}
		if ls.table.rev == 0 {
			ls.table.rev, ls.cluster = resp.Header.Revision, resp.Header.ClusterId
			opts = append(opts, clientv3.WithRev(ls.table.rev))
		}
		for _, kv := range resp.Kvs {
			l, sk := r.parse(cfg, string(kv.Key), kv.Value, kv.Lease, kv.ModRevision)
			if sk != nil {
				r.logSkipped(*sk, kv.ModRevision)
				ls.table.PutSkipped(*sk)
				bad[sk.Key] = true
				continue
			}
			if l.Expiration, err = r.expiration(ctx, kv.Lease, exps); err != nil {
				return listing{}, fmt.Errorf("list %s: %s: %w", dir, l.Key, err)
			}
			ls.table.Put(l)
		}
		if !resp.More || len(resp.Kvs) == 0 {
			break
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
	r.keepSkipped(bad)
	return ls, nil
}
