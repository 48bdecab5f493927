package registry

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// AcquireOptions says who we are and what we had before.
type AcquireOptions struct {
	PublicIP netip.Addr
	// PublicIPv6 is the next hop of the node's IPv6 subnet: required when
	// the network config enables IPv6, not written otherwise (flanneld
	// then writes "PublicIPv6":null).
	PublicIPv6   netip.Addr
	Previous     netip.Prefix  // IPv4 subnet from the subnet file; zero if none
	PreviousIPv6 netip.Prefix  // IPv6 subnet from the subnet file; zero if none
	TTL          time.Duration // of the etcd lease; 0 means DefaultLeaseTTL
}

// DefaultLeaseTTL is flanneld's subnet lease TTL.
const DefaultLeaseTTL = 24 * time.Hour

// attrs is the lease value we write: flanneld's host-gw attributes.
func (o AcquireOptions) attrs(cfg Config) LeaseAttrs {
	a := LeaseAttrs{PublicIP: o.PublicIP.String(), BackendType: "host-gw"}
	if cfg.EnableIPv6 {
		a.PublicIPv6 = o.PublicIPv6.String()
	}
	return a
}

// Check says what is wrong with o for cfg, with its TTL defaulted.
func (o *AcquireOptions) Check(cfg Config) error {
	if !o.PublicIP.Is4() {
		return fmt.Errorf("acquire: public IP %s is not IPv4", o.PublicIP)
	}
	if cfg.EnableIPv6 && !o.PublicIPv6.IsValid() {
		return errors.New("acquire: the network config enables IPv6, and this node has no public IPv6 address")
	}
	if cfg.EnableIPv6 && !PlainIPv6(o.PublicIPv6) {
		return fmt.Errorf("acquire: public IPv6 %s is not a plain IPv6 address (IPv4-mapped or with a zone)", o.PublicIPv6)
	}
	if o.TTL == 0 {
		o.TTL = DefaultLeaseTTL
	}
	if o.TTL < time.Second {
		return fmt.Errorf("acquire: lease TTL %s is under etcd's one second", o.TTL)
	}
	return nil
}

// ErrNoFreeSubnet means every subnet of the network is leased.
var ErrNoFreeSubnet = errors.New("no free subnet left in the network")

// acquireAttempts bounds how often Acquire starts over after another node
// changed the subnets between our read and our write.
const acquireAttempts = 16

// Acquire takes this node's lease: the lease it already holds (same
// PublicIP), else the previous subnets if free, else random free ones.
// With EnableIPv6 one lease holds both subnets, under flanneld's key
// "10.244.1.0-24&fd00:10:244:1::-64". Creation is a transaction that fails
// if another lease of either subnet appeared meanwhile, so two nodes never
// both win a subnet; the loser reads again and tries another.
func (r *Registry) Acquire(ctx context.Context, opts AcquireOptions) (Lease, error) {
	cfg, err := r.config()
	if err != nil {
		return Lease{}, err
	}
	if err := opts.Check(cfg); err != nil {
		return Lease{}, err
	}
	for range acquireAttempts {
		ls, err := r.list(ctx)
		if err != nil {
			return Lease{}, err
		}
		if l, done, err := r.reuseOwn(ctx, cfg, ls.table, &opts); done || err != nil {
			return l, err
		}
		taken4, taken6 := r.occupied(ls.table)
		sn, err := pickSubnet(cfg.ipv4(), taken4, opts.Previous)
		if err != nil {
			return Lease{}, err
		}
		var sn6 netip.Prefix
		if cfg.EnableIPv6 {
			if sn6, err = pickSubnet(cfg.ipv6(), taken6, opts.PreviousIPv6); err != nil {
				return Lease{}, err
			}
		}
		l, won, err := r.create(ctx, cfg, sn, sn6, ls.table.rev, opts)
		if err != nil {
			return Lease{}, err
		}
		if won {
			return l, nil
		}
		r.log.Info("subnet taken by another node meanwhile, trying another", "subnet", sn, "ipv6_subnet", sn6)
	}
	return Lease{}, fmt.Errorf("acquire: the subnets changed under us %d times in a row", acquireAttempts)
}

// fits reports whether flanneld would keep l under cfg: both subnets in
// range, an IPv6 subnet exactly when the config enables IPv6.
func (c Config) fits(l Lease) bool {
	if c.EnableIPv6 {
		return c.InRange(l.Subnet) && c.InRange(l.IPv6Subnet)
	}
	return c.InRange(l.Subnet) && !l.IPv6Subnet.IsValid()
}

// reuseOwn takes over a lease that names our PublicIP. done is false when
// there is none left to take (or it changed meanwhile: read again). An
// own lease that no longer fits is deleted, and a subnet of it that still
// fits becomes opts.Previous or opts.PreviousIPv6: when IPv6 is enabled
// or disabled, the node keeps its IPv4 pod addresses (flanneld would draw
// a new subnet).
func (r *Registry) reuseOwn(ctx context.Context, cfg Config, leases *Table, opts *AcquireOptions) (Lease, bool, error) {
	var own []Lease
	leases.Each(func(l Lease) bool {
		if l.PublicIP == opts.PublicIP {
			own = append(own, l)
		}
		return true
	})
	// Several (an operator's reservation next to an old lease): prefer
	// the reservation, then the subnet file's, then the lowest key.
	slices.SortFunc(own, func(a, b Lease) int {
		if a.Reservation != b.Reservation {
			return boolOrder(a.Reservation)
		}
		if (a.Subnet == opts.Previous) != (b.Subnet == opts.Previous) {
			return boolOrder(a.Subnet == opts.Previous)
		}
		return cmp.Compare(a.Key, b.Key)
	})
	for _, l := range own {
		// A reservation is the operator's word, wherever it lies in the
		// network; a lease that no longer fits the config (another
		// SubnetLen, outside SubnetMin..SubnetMax, IPv6 enabled or
		// disabled) is deleted, as flanneld does, and its subnets are
		// free again.
		if l.Reservation || cfg.fits(l) {
			if l.Reservation && cfg.EnableIPv6 && !l.IPv6Subnet.IsValid() {
				r.log.Warn("reserved lease has no IPv6 subnet: this node gets no IPv6 pod subnet (reserve a dual-stack key to give it one)",
					"subnet", l.Subnet, "key", l.Key)
			}
			return r.renew(ctx, cfg, l, *opts)
		}
		r.log.Warn("own lease does not fit the network config, deleting it", "subnet", l.Subnet, "ipv6_subnet", l.IPv6Subnet, "key", l.Key)
		if err := r.deleteIfUnchanged(ctx, l.Key, l.ModRevision, l.LeaseID); err != nil {
			return Lease{}, false, err
		}
		leases.Remove(l.Key)
		if cfg.InRange(l.Subnet) {
			opts.Previous = l.Subnet
		}
		if l.IPv6Subnet.IsValid() && cfg.InRange(l.IPv6Subnet) {
			opts.PreviousIPv6 = l.IPv6Subnet
		}
	}
	return Lease{}, false, nil
}

func boolOrder(first bool) int {
	if first {
		return -1
	}
	return 1
}

// keySubnets reads what it can of a lease key's subnets: a key that is
// bad only in one part still names the other.
func (r *Registry) keySubnets(key string) (v4, v6 netip.Prefix) {
	v4s, v6s, _ := strings.Cut(strings.TrimPrefix(key, r.subnetsDir()), "&")
	v4, _ = parseKeyPrefix(v4s, true)
	v6, _ = parseKeyPrefix(v6s, false)
	return v4, v6
}

// occupied lists the subnets, per family, that leases and bad entries
// hold: a bad value still occupies its key.
func (r *Registry) occupied(t *Table) (v4, v6 []netip.Prefix) {
	add := func(p4, p6 netip.Prefix) {
		if p4.IsValid() {
			v4 = append(v4, p4)
		}
		if p6.IsValid() {
			v6 = append(v6, p6)
		}
	}
	t.Each(func(l Lease) bool {
		add(l.Subnet, l.IPv6Subnet)
		return true
	})
	for k := range t.skipped {
		add(r.keySubnets(k))
	}
	return v4, v6
}

// freeCandidates is how many free subnets pickSubnet picks among.
const freeCandidates = 100

// pickSubnet returns previous if it is in rng and free, else one of the
// first 100 free subnets from rng's min up, at random: flanneld's
// allocateSubnet (the same for its IPv6 subnet, drawn independently of
// the IPv4 one), so that both fill a network alike, and a pick costs the
// same in a /8 as in a /16. A taken prefix of another length (an
// operator's /22, an older SubnetLen) blocks every subnet it overlaps, as
// in flanneld, and is stepped over as a whole.
func pickSubnet(rng subnetRange, taken []netip.Prefix, previous netip.Prefix) (netip.Prefix, error) {
	exact := map[netip.Prefix]bool{}
	var odd []netip.Prefix
	for _, p := range taken {
		if p.Bits() == rng.len {
			exact[p] = true
		} else {
			odd = append(odd, p.Masked())
		}
	}
	if previous.IsValid() && rng.contains(previous) && !exact[previous] && !slices.ContainsFunc(odd, previous.Overlaps) {
		return previous, nil
	}
	// Each step finds a free subnet or passes a taken prefix for good:
	// at most 100 + len(taken) steps.
	bits := rng.network.Addr().BitLen()
	size := pow2(bits - rng.len)
	var free []netip.Prefix
	for a, hi := addrNum(rng.min), addrNum(rng.max); a.cmp(hi) <= 0 && len(free) < freeCandidates; {
		p := netip.PrefixFrom(a.addr(rng.min), rng.len)
		next, carry := a.add(size)
		if i := slices.IndexFunc(odd, p.Overlaps); i >= 0 {
			end, c := addrNum(odd[i].Addr()).add(pow2(bits - odd[i].Bits()))
			if end.cmp(next) > 0 || c {
				next, carry = end, c
			}
		} else if !exact[p] {
			free = append(free, p)
		}
		if carry { // past the last address
			break
		}
		a = next
	}
	if len(free) == 0 {
		return netip.Prefix{}, fmt.Errorf("acquire in %s (%s..%s): %w", rng.network, rng.min, rng.max, ErrNoFreeSubnet)
	}
	return free[rand.IntN(len(free))], nil
}

// create writes a new lease of sn and sn6 (zero: IPv4 only) unless
// another lease of either appeared since rev, the revision they were
// picked at. It reports won false when one did.
func (r *Registry) create(ctx context.Context, cfg Config, sn, sn6 netip.Prefix, rev int64, opts AcquireOptions) (Lease, bool, error) {
	key := r.DualStackLeaseKey(sn, sn6)
	attrs := opts.attrs(cfg)
	value, err := json.Marshal(attrs)
	if err != nil {
		return Lease{}, false, err
	}
	grant, err := r.cli.Grant(ctx, int64(opts.TTL.Seconds()))
	if err != nil {
		return Lease{}, false, fmt.Errorf("grant etcd lease for %s: %w", key, err)
	}
	for range acquireAttempts {
		// No lease of sn, in either key form.
		cmps := []clientv3.Cmp{
			clientv3.Compare(clientv3.CreateRevision(r.LeaseKey(sn)), "=", 0),
			clientv3.Compare(clientv3.CreateRevision(r.LeaseKey(sn)+"&"), "=", 0).WithPrefix(),
		}
		// sn6 is in the middle of a key, where no compare can find it:
		// no lease may be new since rev instead, and new ones are looked
		// at below.
		if sn6.IsValid() {
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(r.subnetsDir()), "<", rev+1).WithPrefix())
		}
		resp, err := r.cli.Txn(ctx).If(cmps...).
			Then(clientv3.OpPut(key, string(value), clientv3.WithLease(grant.ID))).
			Commit()
		if err != nil {
			r.revoke(ctx, grant.ID)
			return Lease{}, false, fmt.Errorf("create %s: %w", key, err)
		}
		if resp.Succeeded {
			l := Lease{
				Key: key, Subnet: sn, IPv6Subnet: sn6, PublicIP: opts.PublicIP, Attrs: attrs, LeaseID: int64(grant.ID),
				Expiration: time.Now().Add(time.Duration(grant.TTL) * time.Second), ModRevision: resp.Header.Revision,
			}
			if cfg.EnableIPv6 {
				l.PublicIPv6 = opts.PublicIPv6
			}
			return l, true, nil
		}
		if !sn6.IsValid() {
			break
		}
		// Leases were created since rev: go on if none holds our subnets
		// (nodes join all the time; their leases are no reason to start over).
		clash, now, err := r.clashSince(ctx, rev, sn, sn6)
		if err != nil || clash {
			r.revoke(ctx, grant.ID)
			return Lease{}, false, err
		}
		rev = now
	}
	r.revoke(ctx, grant.ID)
	return Lease{}, false, nil
}

// clashSince reports whether a lease created after rev overlaps sn or
// sn6, and the revision it read at.
func (r *Registry) clashSince(ctx context.Context, rev int64, sn, sn6 netip.Prefix) (bool, int64, error) {
	resp, err := r.cli.Get(ctx, r.subnetsDir(), clientv3.WithPrefix(), clientv3.WithMinCreateRev(rev+1), clientv3.WithKeysOnly())
	if err != nil {
		return false, 0, fmt.Errorf("list new leases under %s: %w", r.subnetsDir(), err)
	}
	for _, kv := range resp.Kvs {
		v4, v6 := r.keySubnets(string(kv.Key))
		if (v4.IsValid() && v4.Overlaps(sn)) || (v6.IsValid() && v6.Overlaps(sn6)) {
			return true, 0, nil
		}
	}
	return false, resp.Header.Revision, nil
}

// renew takes over our own existing lease: a reservation stays as it is;
// a leased key is re-bound to a fresh etcd lease (the old one belonged to
// our previous process), unless someone changed it meanwhile (done false:
// read again).
func (r *Registry) renew(ctx context.Context, cfg Config, l Lease, opts AcquireOptions) (Lease, bool, error) {
	if l.Reservation {
		r.log.Info("using reserved subnet", "subnet", l.Subnet, "ipv6_subnet", l.IPv6Subnet, "key", l.Key)
		return l, true, nil
	}
	attrs := mergeAttrs(l.Attrs, opts.attrs(cfg))
	value, err := json.Marshal(attrs)
	if err != nil {
		return Lease{}, false, err
	}
	grant, err := r.cli.Grant(ctx, int64(opts.TTL.Seconds()))
	if err != nil {
		return Lease{}, false, fmt.Errorf("grant etcd lease for %s: %w", l.Key, err)
	}
	resp, err := r.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(l.Key), "=", l.ModRevision)).
		Then(clientv3.OpPut(l.Key, string(value), clientv3.WithLease(grant.ID))).
		Commit()
	if err != nil || !resp.Succeeded {
		r.revoke(ctx, grant.ID)
		if err != nil {
			return Lease{}, false, fmt.Errorf("renew %s: %w", l.Key, err)
		}
		r.log.Info("own lease changed meanwhile, reading again", "subnet", l.Subnet, "key", l.Key)
		return Lease{}, false, nil
	}
	r.revoke(ctx, clientv3.LeaseID(l.LeaseID)) // the old process's lease, now unused
	l.Attrs = attrs
	l.PublicIPv6 = netip.Addr{}
	if cfg.EnableIPv6 {
		l.PublicIPv6 = opts.PublicIPv6
	}
	l.LeaseID = int64(grant.ID)
	l.Expiration = time.Now().Add(time.Duration(grant.TTL) * time.Second)
	l.ModRevision = resp.Header.Revision
	r.log.Info("reusing own lease", "subnet", l.Subnet, "ipv6_subnet", l.IPv6Subnet, "key", l.Key)
	return l, true, nil
}

// mergeAttrs keeps fields a flanneld wrote that we do not manage.
func mergeAttrs(old, ours LeaseAttrs) LeaseAttrs {
	old.PublicIP, old.PublicIPv6, old.BackendType = ours.PublicIP, ours.PublicIPv6, ours.BackendType
	return old
}

// deleteIfUnchanged deletes key if it is still at modRev, and revokes its
// etcd lease (0: none). A key changed meanwhile is left alone.
func (r *Registry) deleteIfUnchanged(ctx context.Context, key string, modRev, leaseID int64) error {
	txn, err := r.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(key), "=", modRev)).
		Then(clientv3.OpDelete(key)).Commit()
	if err != nil {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	if txn.Succeeded && leaseID != 0 {
		r.revoke(ctx, clientv3.LeaseID(leaseID))
	}
	return nil
}

// revoke frees an etcd lease we no longer use. It outlives a cancelled ctx
// (cleanup) but not etcd being gone: the client would wait for it forever.
func (r *Registry) revoke(ctx context.Context, id clientv3.LeaseID) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if _, err := r.cli.Revoke(ctx, id); err != nil {
		r.log.Debug("revoke etcd lease", "lease", fmt.Sprintf("%x", int64(id)), "err", err)
	}
}
