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
	Previous netip.Prefix  // from the subnet file; zero if none
	TTL      time.Duration // of the etcd lease; 0 means DefaultLeaseTTL
}

// DefaultLeaseTTL is flanneld's subnet lease TTL.
const DefaultLeaseTTL = 24 * time.Hour

// attrs is the lease value we write: flanneld's JSON for host-gw.
func (o AcquireOptions) attrs() LeaseAttrs {
	return LeaseAttrs{PublicIP: o.PublicIP.String(), BackendType: "host-gw"}
}

// ErrNoFreeSubnet means every subnet of the network is leased.
var ErrNoFreeSubnet = errors.New("no free subnet left in the network")

// acquireAttempts bounds how often Acquire starts over after another node
// changed the subnets between our read and our write.
const acquireAttempts = 16

// Acquire takes this node's lease: the lease it already holds (same
// PublicIP), else the previous subnet if free, else a random free one.
// Creation is a transaction that fails if the key exists, so two nodes
// never both win a subnet; the loser reads again and tries another.
func (r *Registry) Acquire(ctx context.Context, opts AcquireOptions) (Lease, error) {
	cfg, err := r.config()
	if err != nil {
		return Lease{}, err
	}
	if !opts.PublicIP.Is4() {
		return Lease{}, fmt.Errorf("acquire: public IP %s is not IPv4", opts.PublicIP)
	}
	if opts.TTL == 0 {
		opts.TTL = DefaultLeaseTTL
	}
	if opts.TTL < time.Second {
		return Lease{}, fmt.Errorf("acquire: lease TTL %s is under etcd's one second", opts.TTL)
	}
	for range acquireAttempts {
		ls, err := r.list(ctx)
		if err != nil {
			return Lease{}, err
		}
		if l, done, err := r.reuseOwn(ctx, cfg, ls.leases, opts); done || err != nil {
			return l, err
		}
		candidate, err := pickSubnet(cfg, r.occupied(ls.leases, ls.skipped), opts.Previous)
		if err != nil {
			return Lease{}, err
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
	return Lease{}, fmt.Errorf("acquire: the subnets changed under us %d times in a row", acquireAttempts)
}

// reuseOwn takes over a lease that names our PublicIP. done is false when
// there is none left to take (or it changed meanwhile: read again).
func (r *Registry) reuseOwn(ctx context.Context, cfg Config, leases map[string]Lease, opts AcquireOptions) (Lease, bool, error) {
	var own []Lease
	for _, l := range leases {
		if l.PublicIP == opts.PublicIP {
			own = append(own, l)
		}
	}
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
		// SubnetLen, outside SubnetMin..SubnetMax) is deleted, as
		// flanneld does, and its subnet is free again.
		if l.Reservation || cfg.InRange(l.Subnet) {
			return r.renew(ctx, l, opts)
		}
		r.log.Warn("own lease does not fit the network config, deleting it", "subnet", l.Subnet, "key", l.Key)
		if err := r.deleteIfUnchanged(ctx, l.Key, l.ModRevision, l.LeaseID); err != nil {
			return Lease{}, false, err
		}
		delete(leases, l.Key)
	}
	return Lease{}, false, nil
}

func boolOrder(first bool) int {
	if first {
		return -1
	}
	return 1
}

// occupied lists the subnets that leases and bad entries hold: a bad
// value still occupies its key.
func (r *Registry) occupied(leases map[string]Lease, skipped map[string]Skipped) []netip.Prefix {
	var taken []netip.Prefix
	for _, l := range leases {
		taken = append(taken, l.Subnet)
	}
	for _, s := range skipped {
		if v4, _, err := ParseSubnetKey(strings.TrimPrefix(s.Key, r.subnetsDir())); err == nil {
			taken = append(taken, v4)
		}
	}
	return taken
}

// freeCandidates is how many free subnets pickSubnet picks among.
const freeCandidates = 100

// pickSubnet returns previous if it is in range and free, else one of the
// first 100 free subnets from SubnetMin up, at random: flanneld's
// allocateSubnet, so that both fill a network alike, and a pick costs the
// same in a /8 as in a /16. A taken prefix of another length (an
// operator's /22, an older SubnetLen) blocks every subnet it overlaps, as
// in flanneld, and is stepped over as a whole.
func pickSubnet(cfg Config, taken []netip.Prefix, previous netip.Prefix) (netip.Prefix, error) {
	exact := map[netip.Prefix]bool{}
	var odd []netip.Prefix
	for _, p := range taken {
		if p.Bits() == cfg.SubnetLen {
			exact[p] = true
		} else {
			odd = append(odd, p.Masked())
		}
	}
	if previous.IsValid() && cfg.InRange(previous) && !exact[previous] && !slices.ContainsFunc(odd, previous.Overlaps) {
		return previous, nil
	}
	// Each step finds a free subnet or passes a taken prefix for good:
	// at most 100 + len(taken) steps. uint64, so the walk can pass
	// 255.255.255.255 without wrapping.
	size := uint64(1) << (32 - cfg.SubnetLen)
	var free []netip.Prefix
	for a, hi := uint64(addrToU32(cfg.SubnetMin)), uint64(addrToU32(cfg.SubnetMax)); a <= hi && len(free) < freeCandidates; {
		p := netip.PrefixFrom(u32ToAddr(uint32(a)), cfg.SubnetLen)
		next := a + size
		if i := slices.IndexFunc(odd, p.Overlaps); i >= 0 {
			next = max(next, uint64(addrToU32(odd[i].Addr()))+uint64(1)<<(32-odd[i].Bits()))
		} else if !exact[p] {
			free = append(free, p)
		}
		a = next
	}
	if len(free) == 0 {
		return netip.Prefix{}, fmt.Errorf("acquire in %s (%s..%s): %w", cfg.Network, cfg.SubnetMin, cfg.SubnetMax, ErrNoFreeSubnet)
	}
	return free[rand.IntN(len(free))], nil
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
// our previous process), unless someone changed it meanwhile (done false:
// read again).
func (r *Registry) renew(ctx context.Context, l Lease, opts AcquireOptions) (Lease, bool, error) {
	if l.Reservation {
		r.log.Info("using reserved subnet", "subnet", l.Subnet, "key", l.Key)
		return l, true, nil
	}
	value, err := json.Marshal(mergeAttrs(l.Attrs, opts.attrs()))
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
	l.Attrs = mergeAttrs(l.Attrs, opts.attrs())
	l.LeaseID = int64(grant.ID)
	l.Expiration = time.Now().Add(time.Duration(grant.TTL) * time.Second)
	l.ModRevision = resp.Header.Revision
	r.log.Info("reusing own lease", "subnet", l.Subnet, "key", l.Key)
	return l, true, nil
}

// mergeAttrs keeps fields a flanneld wrote that we do not manage.
func mergeAttrs(old, ours LeaseAttrs) LeaseAttrs {
	old.PublicIP, old.BackendType = ours.PublicIP, ours.BackendType
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
