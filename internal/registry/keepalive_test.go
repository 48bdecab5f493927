package registry_test

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/hgw-ebpf/hgw-ebpf/internal/registry"
	"github.com/hgw-ebpf/hgw-ebpf/internal/testutil"
)

// keeper runs KeepAlive for the rest of the test (or until stop) and
// queues every lease it reports.
type keeper struct {
	changes chan registry.Lease
	stop    func()
}

// acquireAndKeep acquires a lease for 198.18.0.11 with ttl and keeps it
// alive.
func (c *cluster) acquireAndKeep(t *testing.T, ttl time.Duration) (registry.Lease, registry.AcquireOptions, *keeper) {
	t.Helper()
	o := opts("198.18.0.11", ttl)
	l, err := c.reg.Acquire(testCtx(t), o)
	if err != nil {
		t.Fatal(err)
	}
	return l, o, startKeepAlive(t, c.reg, l, o)
}

func startKeepAlive(t *testing.T, reg *registry.Registry, l registry.Lease, o registry.AcquireOptions) *keeper {
	t.Helper()
	k := &keeper{changes: make(chan registry.Lease, 100)}
	k.stop = testutil.Run(t, "KeepAlive", func(ctx context.Context) error {
		return reg.KeepAlive(ctx, l, o, func(l registry.Lease) { k.changes <- l })
	})
	return k
}

// expectHeld checks that l's key is still bound to l's etcd lease and
// that the lease has time left.
func (c *cluster) expectHeld(t *testing.T, l registry.Lease, after string) {
	t.Helper()
	kv := c.get(t, l.Key)
	if kv == nil || int64(kv.Lease) != l.LeaseID {
		t.Fatalf("after %s: key %+v, want it still on etcd lease %x", after, kv, l.LeaseID)
	}
	if _, left := c.ttl(t, kv.Lease); left <= 0 {
		t.Errorf("after %s: etcd lease has %ds left", after, left)
	}
}

func (k *keeper) change(t *testing.T) registry.Lease {
	t.Helper()
	return testutil.Recv(t, k.changes, 15*time.Second, "new lease from KeepAlive")
}

func (k *keeper) noChange(t *testing.T) {
	t.Helper()
	select {
	case l := <-k.changes:
		t.Fatalf("unexpected new lease %+v", l)
	default:
	}
}

func TestKeepAliveRenews(t *testing.T) {
	t.Parallel()
	c := newCluster(t, hostGW16)
	l, _, k := c.acquireAndKeep(t, 2*time.Second)
	time.Sleep(5 * time.Second) // 2.5 TTLs
	c.expectHeld(t, l, "5s with a 2s TTL")
	k.noChange(t)

	// Without KeepAlive the same key expires: it was KeepAlive that held it.
	k.stop()
	deadline := time.Now().Add(6 * time.Second)
	for c.get(t, l.Key) != nil {
		if time.Now().After(deadline) {
			t.Fatal("key still there 6s after KeepAlive stopped (TTL 2s)")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestKeepAliveReacquires(t *testing.T) {
	t.Parallel()
	c := newCluster(t, hostGW16)
	ctx := testCtx(t)
	l, _, k := c.acquireAndKeep(t, 2*time.Second)

	// Deleted by hand: the same subnet comes back, on a new etcd lease.
	if _, err := c.cli.Delete(ctx, l.Key); err != nil {
		t.Fatal(err)
	}
	l2 := k.change(t)
	if l2.Subnet != l.Subnet || l2.Key != l.Key || l2.LeaseID == 0 || l2.LeaseID == l.LeaseID {
		t.Errorf("re-acquired %+v after deletion, want %s on a new etcd lease (old %x)", l2, l.Subnet, l.LeaseID)
	}
	kv := c.get(t, l.Key)
	if kv == nil || int64(kv.Lease) != l2.LeaseID || kv.Value != `{"PublicIP":"198.18.0.11","PublicIPv6":null,"BackendType":"host-gw"}` {
		t.Fatalf("key after re-acquire %+v", kv)
	}

	// The re-acquired lease is kept alive too.
	time.Sleep(4 * time.Second)
	if kv := c.get(t, l.Key); kv == nil || int64(kv.Lease) != l2.LeaseID {
		t.Fatalf("re-acquired key not kept alive: %+v", kv)
	}

	// Etcd lease revoked by hand (its key goes with it): back again.
	if _, err := c.cli.Revoke(ctx, clientv3.LeaseID(l2.LeaseID)); err != nil {
		t.Fatal(err)
	}
	l3 := k.change(t)
	if l3.Subnet != l.Subnet || l3.LeaseID == l2.LeaseID {
		t.Errorf("re-acquired %+v after revoke, want %s on a new etcd lease", l3, l.Subnet)
	}

	// Deleted, and taken by another node before we come back (KeepAlive
	// waits a backoff step before it acquires again): we move.
	other := `{"PublicIP":"198.18.0.99","BackendType":"host-gw"}`
	if _, err := c.cli.Delete(ctx, l.Key); err != nil {
		t.Fatal(err)
	}
	c.put(t, l.Key, other, 0)
	c.expectMovedAway(t, l, k.change(t), other)
}

// expectMovedAway checks that KeepAlive left old, now held by another node
// (value other, untouched), for a lease of its own on another subnet.
func (c *cluster) expectMovedAway(t *testing.T, old, moved registry.Lease, other string) {
	t.Helper()
	if moved.Subnet == old.Subnet {
		t.Fatalf("still on %s, which 198.18.0.99 now holds", old.Subnet)
	}
	if kv := c.get(t, old.Key); kv == nil || kv.Value != other {
		t.Errorf("other node's key changed: %+v", kv)
	}
	if kv := c.get(t, moved.Key); kv == nil || int64(kv.Lease) != moved.LeaseID || !strings.Contains(kv.Value, `"198.18.0.11"`) {
		t.Errorf("our new key %s: %+v", moved.Key, kv)
	}
}

// Another node overwriting our key (a Put, no delete) takes the subnet
// from us just as surely as a deletion: we must not keep using it.
func TestKeepAliveNoticesKeyTakenOver(t *testing.T) {
	t.Parallel()
	c := newCluster(t, hostGW16)
	l, _, k := c.acquireAndKeep(t, 5*time.Second)
	other := `{"PublicIP":"198.18.0.99","BackendType":"host-gw"}`
	c.put(t, l.Key, other, 60)
	c.expectMovedAway(t, l, k.change(t), other)
}

func TestRelease(t *testing.T) {
	t.Parallel()
	c := newCluster(t, hostGW16)
	ctx := testCtx(t)
	me := netip.MustParseAddr("198.18.0.11")
	l, err := c.reg.Acquire(ctx, opts(me.String(), 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}

	if err := c.reg.Release(ctx, l.Subnet, netip.MustParseAddr("198.18.0.99")); err == nil {
		t.Error("Release of a key that names another PublicIP succeeded")
	}
	if c.get(t, l.Key) == nil {
		t.Fatal("refused Release deleted the key anyway")
	}

	if err := c.reg.Release(ctx, l.Subnet, me); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if kv := c.get(t, l.Key); kv != nil {
		t.Errorf("key still there after Release: %+v", kv)
	}
	if _, left := c.ttl(t, clientv3.LeaseID(l.LeaseID)); left != -1 {
		t.Errorf("etcd lease not revoked: %ds left", left)
	}
	if err := c.reg.Release(ctx, l.Subnet, me); err != nil {
		t.Errorf("Release of an absent key: %v, want nil", err)
	}

	// A value we cannot read is not ours to delete.
	c.put(t, subnetKey("10.244.77.0-24"), `garbage`, 0)
	if err := c.reg.Release(ctx, netip.MustParsePrefix("10.244.77.0/24"), me); err == nil {
		t.Error("Release of a non-JSON value succeeded")
	}
	if c.get(t, subnetKey("10.244.77.0-24")) == nil {
		t.Error("non-JSON key deleted")
	}
}

// etcd down for less than the TTL: the renewals resume on the same etcd
// lease, nothing changes for the node.
func TestKeepAliveRidesOutShortEtcdOutage(t *testing.T) {
	t.Parallel()
	c := newCluster(t, hostGW16)
	l, _, k := c.acquireAndKeep(t, 6*time.Second)
	stop := time.Now()
	c.srv.Stop()
	t.Logf("etcd stopped in %s", time.Since(stop).Round(time.Millisecond))
	time.Sleep(time.Second)
	start := time.Now()
	c.srv.Restart(t)
	t.Logf("etcd restarted in %s", time.Since(start).Round(time.Millisecond))
	time.Sleep(7 * time.Second) // past the TTL: only renewals hold the key now
	c.expectHeld(t, l, "a short outage")
	k.noChange(t)
}

// etcd down for longer than the TTL: KeepAlive gives the lease up, keeps
// trying while etcd is away, and when it is back takes the same subnet
// again (the restarted etcd still holds the key) and keeps it alive.
func TestKeepAliveSurvivesLongEtcdOutage(t *testing.T) {
	t.Parallel()
	c := newCluster(t, hostGW16)
	l, _, k := c.acquireAndKeep(t, 2*time.Second)
	// Renewals flowing: before the first one the client allows
	// DialTimeout+1s, not the TTL.
	time.Sleep(time.Second)
	c.srv.Stop()
	time.Sleep(3500 * time.Millisecond) // the client gives the lease up after 2s
	k.noChange(t)                       // nothing to report while etcd is away
	start := time.Now()
	c.srv.Restart(t)
	t.Logf("etcd restarted in %s", time.Since(start).Round(time.Millisecond))
	l2 := k.change(t)
	t.Logf("lease back %s after the restart", time.Since(start).Round(time.Millisecond))
	if l2.Subnet != l.Subnet || l2.LeaseID == 0 {
		t.Fatalf("after the outage: %+v, want %s again on an etcd lease", l2, l.Subnet)
	}
	time.Sleep(3 * time.Second) // 1.5 TTLs
	kv := c.get(t, l.Key)
	if kv == nil || !strings.Contains(kv.Value, `"198.18.0.11"`) {
		t.Fatalf("after the outage: key %+v, want ours", kv)
	}
	// The key is bound to the lease KeepAlive reported last, and renews it.
	for drained := false; !drained; {
		select {
		case l2 = <-k.changes:
		default:
			drained = true
		}
	}
	if int64(kv.Lease) != l2.LeaseID {
		t.Errorf("key bound to etcd lease %x, KeepAlive reported %x", kv.Lease, l2.LeaseID)
	}
	if _, left := c.ttl(t, kv.Lease); left <= 0 {
		t.Errorf("etcd lease has %ds left", left)
	}
}

// KeepAlive's client loses etcd while our key is replaced and the history
// is compacted: the watch can only resume by reading the key again, and
// what it reads must be checked for ownership, not just for existence.
func TestKeepAliveRechecksOwnerAfterCompaction(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		value string // what replaces our key meanwhile (bound to a fresh etcd lease)
		moves bool   // another node's: we must move to another subnet
	}{
		{"another node", `{"PublicIP":"198.18.0.99","BackendType":"host-gw"}`, true},
		// Our address but another etcd lease (a second process of ours, an
		// operator's rewrite): the key no longer lives by our renewals.
		{"our PublicIP on another etcd lease", `{"PublicIP":"198.18.0.11","PublicIPv6":null,"BackendType":"host-gw"}`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := newCluster(t, hostGW16)
			ctx := testCtx(t)
			p, reg := c.behindProxy(t)
			// A TTL far longer than the cut: our etcd lease stays alive
			// throughout, so only the key tells that it is not ours.
			o := opts("198.18.0.11", 60*time.Second)
			l, err := reg.Acquire(ctx, o)
			if err != nil {
				t.Fatal(err)
			}
			k := startKeepAlive(t, reg, l, o)
			time.Sleep(500 * time.Millisecond) // the watch is established

			p.Cut()
			if _, err := c.cli.Delete(ctx, l.Key); err != nil {
				t.Fatal(err)
			}
			theirs := c.put(t, l.Key, tc.value, 60)
			c.srv.Compact(t, 0)
			p.Heal()

			got := k.change(t)
			if tc.moves {
				c.expectMovedAway(t, l, got, tc.value)
				return
			}
			// Ours again, on an etcd lease of our own that KeepAlive renews.
			kv := c.get(t, l.Key)
			if got.Subnet != l.Subnet || got.LeaseID == int64(theirs) || got.LeaseID == l.LeaseID || kv == nil || int64(kv.Lease) != got.LeaseID {
				t.Errorf("re-acquired %+v, key %+v; want %s bound to a new etcd lease of ours (old %x, theirs %x)",
					got, kv, l.Subnet, l.LeaseID, int64(theirs))
			}
		})
	}
}
