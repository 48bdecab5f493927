package registry_test

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/hgw-ebpf/hgw-ebpf/internal/registry"
)

const dualStack16 = `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"host-gw"}}`

func dualOpts(publicIP, publicIPv6 string, ttl time.Duration) registry.AcquireOptions {
	o := opts(publicIP, ttl)
	o.PublicIPv6 = netip.MustParseAddr(publicIPv6)
	return o
}

// A dual-stack lease is one key for both subnets and one value naming
// both next hops, byte for byte as flanneld writes them; nodes never share
// a subnet of either family.
func TestAcquireDualStack(t *testing.T) {
	t.Parallel()
	c := newCluster(t, `{"Network":"10.244.0.0/16","SubnetMin":"10.244.10.0","SubnetMax":"10.244.19.0",`+
		`"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","IPv6SubnetMin":"fd00:10:244:a0::","IPv6SubnetMax":"fd00:10:244:a5::",`+
		`"Backend":{"Type":"host-gw"}}`)
	ctx := testCtx(t)
	cfg, err := c.reg.Config(ctx)
	if err != nil {
		t.Fatal(err)
	}
	l, err := c.reg.Acquire(ctx, dualOpts("198.18.0.11", "fd00:198:18::11", 5*time.Second))
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	if !cfg.InRange(l.Subnet) || !cfg.InRange(l.IPv6Subnet) || !l.IPv6Subnet.Addr().Is6() {
		t.Errorf("subnets %s, %s: want a /24 in 10.244.10.0..19.0 and a /64 in fd00:10:244:a0::..a5::", l.Subnet, l.IPv6Subnet)
	}
	if want := subnetKey(registry.DualStackKey(l.Subnet, l.IPv6Subnet)); l.Key != want || !strings.Contains(l.Key, "&fd00:10:244:a") {
		t.Errorf("Key %q, want %q", l.Key, want)
	}
	if l.PublicIP != netip.MustParseAddr("198.18.0.11") || l.PublicIPv6 != netip.MustParseAddr("fd00:198:18::11") || l.LeaseID == 0 {
		t.Errorf("lease %+v", l)
	}
	kv := c.get(t, l.Key)
	if want := `{"PublicIP":"198.18.0.11","PublicIPv6":"fd00:198:18::11","BackendType":"host-gw"}`; kv == nil || kv.Value != want {
		t.Fatalf("value %+v, want flanneld's %s", kv, want)
	}
	if int64(kv.Lease) != l.LeaseID {
		t.Errorf("key bound to etcd lease %x, Acquire said %x", kv.Lease, l.LeaseID)
	}

	// Five more nodes take the other five IPv6 subnets, each with its own
	// IPv4 one; the seventh finds no IPv6 subnet, though IPv4 ones are
	// left, and leaks no etcd lease.
	seen4 := map[netip.Prefix]bool{l.Subnet: true}
	seen6 := map[netip.Prefix]bool{l.IPv6Subnet: true}
	for i := 12; i <= 16; i++ {
		l, err := c.reg.Acquire(ctx, dualOpts(fmt.Sprintf("198.18.0.%d", i), fmt.Sprintf("fd00:198:18::%d", i), 5*time.Second))
		if err != nil {
			t.Fatalf("node %d: %v", i, err)
		}
		if seen4[l.Subnet] || seen6[l.IPv6Subnet] {
			t.Fatalf("node %d got %s and %s: one is leased already", i, l.Subnet, l.IPv6Subnet)
		}
		seen4[l.Subnet], seen6[l.IPv6Subnet] = true, true
	}
	// It names the IPv6 network.
	c.expectFull(t, dualOpts("198.18.0.17", "fd00:198:18::17", 5*time.Second), "fd00:10:244::/56", 6)
}

func TestAcquireDualStackNeedsPublicIPv6(t *testing.T) {
	t.Parallel()
	c := newCluster(t, dualStack16)
	ctx := testCtx(t)
	for _, tt := range []struct {
		ip6, mention string
	}{
		{"", "no public IPv6 address"},
		{"::ffff:198.18.0.11", "::ffff:198.18.0.11 is not a plain IPv6 address"},
		{"fe80::11%eth0", "fe80::11%eth0"},
	} {
		o := opts("198.18.0.11", 5*time.Second)
		if tt.ip6 != "" {
			o.PublicIPv6 = netip.MustParseAddr(tt.ip6)
		}
		if _, err := c.reg.Acquire(ctx, o); err == nil || !strings.Contains(err.Error(), tt.mention) {
			t.Errorf("PublicIPv6 %q: %v, want an error mentioning %q", tt.ip6, err, tt.mention)
		}
	}
	if keys := c.subnetKeys(t); len(keys) != 0 {
		t.Errorf("keys written: %v", keys)
	}

	// Without EnableIPv6 a PublicIPv6 is not written: flanneld writes null.
	v4 := newCluster(t, hostGW16)
	l, err := v4.reg.Acquire(ctx, dualOpts("198.18.0.11", "fd00:198:18::11", 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if kv := v4.get(t, l.Key); l.IPv6Subnet.IsValid() || l.PublicIPv6.IsValid() || strings.Contains(l.Key, "&") ||
		kv.Value != `{"PublicIP":"198.18.0.11","PublicIPv6":null,"BackendType":"host-gw"}` {
		t.Errorf("IPv4-only network: lease %+v, value %s", l, kv.Value)
	}
}

// A node takes back its dual-stack lease by PublicIP (writing its current
// PublicIPv6), or both subnets of its subnet file; a lease from before
// IPv6 was enabled (or after it was disabled) gives way to one of the new
// shape that keeps its IPv4 subnet.
func TestAcquireDualStackReuse(t *testing.T) {
	t.Parallel()
	c := newCluster(t, dualStack16)
	ctx := testCtx(t)

	// flanneld's lease of ours, its IPv6 address since renumbered.
	key := subnetKey("10.244.7.0-24&fd00:10:244:7::-64")
	old := c.put(t, key, `{"PublicIP":"198.18.0.11","PublicIPv6":"fd00:198:18::99","BackendType":"host-gw"}`, 60)
	o := dualOpts("198.18.0.11", "fd00:198:18::11", 5*time.Second)
	o.Previous, o.PreviousIPv6 = netip.MustParsePrefix("10.244.9.0/24"), netip.MustParsePrefix("fd00:10:244:9::/64")
	l, err := c.reg.Acquire(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if l.Key != key || l.Subnet != netip.MustParsePrefix("10.244.7.0/24") || l.IPv6Subnet != netip.MustParsePrefix("fd00:10:244:7::/64") ||
		l.PublicIPv6 != o.PublicIPv6 || clientv3.LeaseID(l.LeaseID) == old {
		t.Fatalf("got %+v, want our lease %s on a fresh etcd lease", l, key)
	}
	if kv := c.get(t, key); kv.Value != `{"PublicIP":"198.18.0.11","PublicIPv6":"fd00:198:18::11","BackendType":"host-gw"}` {
		t.Errorf("value after reuse %s", kv.Value)
	}
	if err := c.reg.Release(ctx, l.Subnet, o.PublicIP); err != nil {
		t.Fatal(err)
	}

	// No lease: the subnet file's two subnets, if free...
	l, err = c.reg.Acquire(ctx, o)
	if err != nil || l.Subnet != o.Previous || l.IPv6Subnet != o.PreviousIPv6 {
		t.Fatalf("Acquire with both previous subnets free: %+v, %v", l, err)
	}
	if err := c.reg.Release(ctx, l.Subnet, o.PublicIP); err != nil {
		t.Fatal(err)
	}
	// ...each on its own: another node has our IPv6 subnet now.
	c.put(t, subnetKey("10.244.50.0-24&fd00:10:244:9::-64"), `{"PublicIP":"198.18.0.50","PublicIPv6":"fd00:198:18::50","BackendType":"host-gw"}`, 60)
	l, err = c.reg.Acquire(ctx, o)
	if err != nil || l.Subnet != o.Previous || !l.IPv6Subnet.IsValid() || l.IPv6Subnet.Overlaps(o.PreviousIPv6) {
		t.Fatalf("Acquire with the previous IPv6 subnet taken: %+v, %v; want 10.244.9.0/24 and another IPv6 subnet", l, err)
	}
	if err := c.reg.Release(ctx, l.Subnet, o.PublicIP); err != nil {
		t.Fatal(err)
	}

	// Our lease from the IPv4-only days: replaced by a dual-stack one with
	// the same IPv4 subnet, though the subnet file says otherwise.
	v4Key := subnetKey("10.244.60.0-24")
	id := c.put(t, v4Key, `{"PublicIP":"198.18.0.11","PublicIPv6":null,"BackendType":"host-gw"}`, 60)
	l, err = c.reg.Acquire(ctx, o)
	if err != nil || l.Subnet != netip.MustParsePrefix("10.244.60.0/24") || !l.IPv6Subnet.IsValid() {
		t.Fatalf("Acquire over our IPv4-only lease: %+v, %v; want 10.244.60.0/24 with an IPv6 subnet", l, err)
	}
	if kv := c.get(t, v4Key); kv != nil {
		t.Errorf("IPv4-only lease still there: %+v", kv)
	}
	if _, left := c.ttl(t, id); left != -1 {
		t.Errorf("IPv4-only lease's etcd lease not revoked (%ds left)", left)
	}

	// IPv6 disabled again: back to an IPv4-only key, same IPv4 subnet.
	dualKey := l.Key
	if _, err := c.cli.Put(ctx, registry.DefaultPrefix+"/config", hostGW16); err != nil {
		t.Fatal(err)
	}
	v4reg := newRegistry(t, c.cli, "")
	l, err = v4reg.Acquire(ctx, o)
	if err != nil || l.Key != v4Key || l.IPv6Subnet.IsValid() {
		t.Fatalf("Acquire without IPv6 over our dual-stack lease: %+v, %v; want %s", l, err, v4Key)
	}
	if kv := c.get(t, dualKey); kv != nil {
		t.Errorf("dual-stack lease %s still there: %+v", dualKey, kv)
	}
}

// An operator's IPv4-only reservation stays as it is in a dual-stack
// network: the node gets no IPv6 subnet rather than losing its reserved one.
func TestAcquireDualStackKeepsReservation(t *testing.T) {
	t.Parallel()
	c := newCluster(t, dualStack16)
	c.put(t, subnetKey("10.244.42.0-24"), `{"PublicIP":"198.18.0.11"}`, 0)
	c.put(t, subnetKey("10.244.43.0-24&fd00:10:244:43::-64"), `{"PublicIP":"198.18.0.12"}`, 0)
	for i, want := range []string{"10.244.42.0-24", "10.244.43.0-24&fd00:10:244:43::-64"} {
		l, err := c.reg.Acquire(testCtx(t), dualOpts(fmt.Sprintf("198.18.0.%d", 11+i), fmt.Sprintf("fd00:198:18::%d", 11+i), 5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		if l.Key != subnetKey(want) || !l.Reservation {
			t.Errorf("got %+v, want the reservation %s", l, want)
		}
	}
	if n := c.leaseCount(t); n != 0 {
		t.Errorf("%d etcd leases granted for reservations", n)
	}
}

// Nodes acquire at once with as many IPv6 subnets as nodes: the IPv6
// subnet sits in the middle of the key, where the create transaction's
// key compare cannot see it, and still no two nodes share one.
func TestAcquireDualStackRace(t *testing.T) {
	t.Parallel()
	const n = 12
	c := newCluster(t, fmt.Sprintf(`{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56",`+
		`"IPv6SubnetMin":"fd00:10:244:1::","IPv6SubnetMax":"fd00:10:244:%x::","Backend":{"Type":"host-gw"}}`, n))
	ctx := testCtx(t)
	for round := range 3 {
		leases := make([]registry.Lease, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		startGun := make(chan struct{})
		for i := range n {
			reg := newRegistry(t, c.srv.Client(t), "") // each node its own client
			wg.Go(func() {
				<-startGun
				leases[i], errs[i] = reg.Acquire(ctx, dualOpts(fmt.Sprintf("198.18.0.%d", 10+i), fmt.Sprintf("fd00:198:18::%d", 10+i), 30*time.Second))
			})
		}
		close(startGun)
		wg.Wait()
		owner := map[netip.Prefix]int{}
		for i, l := range leases {
			if errs[i] != nil {
				t.Fatalf("round %d: node %d: %v", round, i, errs[i])
			}
			for _, p := range []netip.Prefix{l.Subnet, l.IPv6Subnet} {
				if j, dup := owner[p]; dup {
					t.Fatalf("round %d: nodes %d and %d both got %s", round, j, i, p)
				}
				owner[p] = i
			}
		}
		if keys := c.subnetKeys(t); len(keys) != n {
			t.Fatalf("round %d: keys %v, want %d", round, keys, n)
		}
		for _, l := range leases {
			if err := c.reg.Release(ctx, l.Subnet, l.PublicIP); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// IPv4-only leases of flanneld nodes next to dual-stack ones, from the
// list and from events; what cannot be routed as written is skipped with
// its reason, and a deleted dual-stack key goes like any other.
func TestWatchDualStack(t *testing.T) {
	t.Parallel()
	c := newCluster(t, dualStack16)
	good := map[string]struct {
		value       string
		v6, nexthop string // IPv6 subnet and PublicIPv6 read, "" for none
	}{
		"10.244.12.0-24":                     {flanneldHostGW, "", ""},
		"10.244.13.0-24&fd00:10:244:13::-64": {flanneldDualStack, "fd00:10:244:13::/64", "fd00::13"},
		// An IPv6 subnet without a next hop: the IPv4 half still routes.
		"10.244.14.0-24&fd00:10:244:14::-64": {`{"PublicIP":"198.18.0.14","PublicIPv6":null,"BackendType":"host-gw"}`, "fd00:10:244:14::/64", ""},
		// A next hop without an IPv6 subnet: nothing to route through it.
		"10.244.15.0-24": {`{"PublicIP":"198.18.0.15","PublicIPv6":"fd00::15","BackendType":"host-gw"}`, "", "fd00::15"},
	}
	bad := map[string]struct{ value, reason string }{
		"10.244.20.0-24&fd00:10:245:20::-64":  {flanneldDualStack, "outside_network"},
		"10.244.21.0-24&fd00:10:244::-48":     {flanneldDualStack, "outside_network"}, // larger than the network
		"10.244.22.0-24&fd00:10:244:22::1-64": {flanneldDualStack, "bad_key"},
		"10.244.23.0-24&FD00:10:244:23::-64":  {flanneldDualStack, "bad_key"},
		"10.244.24.0-24&fd00:10:244:24::-64":  {`{"PublicIP":"198.18.0.24","PublicIPv6":"198.18.0.24"}`, "bad_public_ip"},
		"10.244.25.0-24&fd00:10:244:25::-64":  {`{"PublicIP":"198.18.0.25","PublicIPv6":"fe80::25%eth0"}`, "bad_public_ip"},
		"10.244.26.0-24&fd00:10:244:26::-64":  {`{"PublicIP":"198.18.0.26","PublicIPv6":7}`, "bad_json"},
	}
	check := func(s seen, keys []string) {
		t.Helper()
		var gotLeases, gotSkipped, wantLeases, wantSkipped []string
		for _, l := range s.Leases {
			k := strings.TrimPrefix(l.Key, registry.DefaultPrefix+"/subnets/")
			gotLeases = append(gotLeases, k)
			g := good[k]
			if (g.v6 == "") == l.IPv6Subnet.IsValid() || (g.v6 != "" && l.IPv6Subnet != netip.MustParsePrefix(g.v6)) ||
				(g.nexthop == "") == l.PublicIPv6.IsValid() || (g.nexthop != "" && l.PublicIPv6 != netip.MustParseAddr(g.nexthop)) {
				t.Errorf("%s read as IPv6 subnet %s via %s, want %q via %q", k, l.IPv6Subnet, l.PublicIPv6, g.v6, g.nexthop)
			}
		}
		for _, sk := range s.Skipped {
			k := strings.TrimPrefix(sk.Key, registry.DefaultPrefix+"/subnets/")
			gotSkipped = append(gotSkipped, k)
			if sk.Reason != bad[k].reason || sk.Err == nil {
				t.Errorf("%s skipped as %q (%v), want %q", k, sk.Reason, sk.Err, bad[k].reason)
			}
		}
		for _, k := range keys {
			if _, ok := good[k]; ok {
				wantLeases = append(wantLeases, k)
			} else {
				wantSkipped = append(wantSkipped, k)
			}
		}
		slices.Sort(wantLeases)
		slices.Sort(wantSkipped)
		if !slices.Equal(gotLeases, wantLeases) || !slices.Equal(gotSkipped, wantSkipped) {
			t.Errorf("leases %v skipped %v, want %v and %v", gotLeases, gotSkipped, wantLeases, wantSkipped)
		}
	}
	value := func(k string) string {
		if g, ok := good[k]; ok {
			return g.value
		}
		return bad[k].value
	}
	var all []string
	for k := range good {
		all = append(all, k)
	}
	for k := range bad {
		all = append(all, k)
	}
	slices.Sort(all)
	first, second := all[:len(all)/2], all[len(all)/2:]
	for _, k := range first {
		c.put(t, subnetKey(k), value(k), 60)
	}
	w := startWatch(t, c.reg)
	check(w.next(t), first)
	for i, k := range second {
		c.put(t, subnetKey(k), value(k), 60)
		check(w.next(t), all[:len(first)+i+1])
	}
	if _, err := c.cli.Delete(testCtx(t), subnetKey("10.244.13.0-24&fd00:10:244:13::-64")); err != nil {
		t.Fatal(err)
	}
	check(w.next(t), slices.DeleteFunc(slices.Clone(all), func(k string) bool { return k == "10.244.13.0-24&fd00:10:244:13::-64" }))

	// An IPv4-only network does not judge IPv6 subnets it will not route.
	v4 := newCluster(t, hostGW16)
	v4.put(t, subnetKey("10.244.20.0-24&fd00:10:245:20::-64"), flanneldDualStack, 60)
	s := startWatch(t, v4.reg).next(t)
	if len(s.Leases) != 1 || len(s.Skipped) != 0 || s.Leases[0].IPv6Subnet != netip.MustParsePrefix("fd00:10:245:20::/64") {
		t.Errorf("IPv4-only network: %+v", s)
	}
}

// KeepAlive brings back both subnets of a lost dual-stack lease, and
// Release finds the dual-stack key from the IPv4 subnet alone.
func TestKeepAliveAndReleaseDualStack(t *testing.T) {
	t.Parallel()
	c := newCluster(t, dualStack16)
	ctx := testCtx(t)
	o := dualOpts("198.18.0.11", "fd00:198:18::11", 2*time.Second)
	l, err := c.reg.Acquire(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	k := startKeepAlive(t, c.reg, l, o)
	time.Sleep(3 * time.Second) // past the TTL: renewed
	if _, err := c.cli.Delete(ctx, l.Key); err != nil {
		t.Fatal(err)
	}
	l2 := k.change(t)
	if l2.Key != l.Key || l2.IPv6Subnet != l.IPv6Subnet || l2.LeaseID == l.LeaseID {
		t.Fatalf("re-acquired %+v, want %s on a new etcd lease", l2, l.Key)
	}
	k.stop()

	// Another node's IPv4-only key of the same subnet (a conflict an
	// operator made) is not ours to release; ours goes.
	other := subnetKey(registry.SubnetKey(l.Subnet))
	c.put(t, other, `{"PublicIP":"198.18.0.99","PublicIPv6":null}`, 0)
	if err := c.reg.Release(ctx, l.Subnet, netip.MustParseAddr("198.18.0.98")); err == nil {
		t.Error("Release by a node that owns neither key succeeded")
	}
	if err := c.reg.Release(ctx, l.Subnet, o.PublicIP); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if kv := c.get(t, l.Key); kv != nil {
		t.Errorf("%s still there after Release: %+v", l.Key, kv)
	}
	if _, left := c.ttl(t, clientv3.LeaseID(l2.LeaseID)); left != -1 {
		t.Errorf("etcd lease not revoked: %ds left", left)
	}
	if c.get(t, other) == nil {
		t.Errorf("Release deleted another node's key %s", other)
	}
}
