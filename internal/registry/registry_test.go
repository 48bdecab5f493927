package registry_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/hgw-ebpf/hgw-ebpf/internal/registry"
	"github.com/hgw-ebpf/hgw-ebpf/internal/registry/etcdtest"
)

const hostGW16 = `{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}`

// cluster is one etcd with a network config and a registry over it.
type cluster struct {
	srv *etcdtest.Server
	cli *clientv3.Client
	reg *registry.Registry
}

// newCluster starts etcd, writes config under the default prefix and
// returns a registry that has read it.
func newCluster(t *testing.T, config string) *cluster {
	t.Helper()
	srv := etcdtest.Start(t)
	c := &cluster{srv: srv, cli: srv.Client(t)}
	ctx := testCtx(t)
	if _, err := c.cli.Put(ctx, registry.DefaultPrefix+"/config", config); err != nil {
		t.Fatal(err)
	}
	c.reg = newRegistry(t, c.cli, "")
	return c
}

func newRegistry(t *testing.T, cli *clientv3.Client, prefix string) *registry.Registry {
	t.Helper()
	reg := registry.New(cli, prefix, quiet())
	if _, err := reg.Config(testCtx(t)); err != nil {
		t.Fatalf("Config: %v", err)
	}
	return reg
}

func quiet() *slog.Logger {
	if os.Getenv("REGDEBUG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// testCtx bounds every etcd call of a test.
func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func subnetKey(subnet string) string {
	return registry.DefaultPrefix + "/subnets/" + subnet
}

// put writes key=value, bound to a fresh etcd lease of ttl (none if 0),
// as another node or an operator would; it returns the etcd lease.
func (c *cluster) put(t *testing.T, key, value string, ttl int64) clientv3.LeaseID {
	t.Helper()
	ctx := testCtx(t)
	var opts []clientv3.OpOption
	var id clientv3.LeaseID
	if ttl > 0 {
		g, err := c.cli.Grant(ctx, ttl)
		if err != nil {
			t.Fatal(err)
		}
		id = g.ID
		opts = append(opts, clientv3.WithLease(id))
	}
	if _, err := c.cli.Put(ctx, key, value, opts...); err != nil {
		t.Fatal(err)
	}
	return id
}

// get reads key; nil if absent.
func (c *cluster) get(t *testing.T, key string) *mvccKV {
	t.Helper()
	resp, err := c.cli.Get(testCtx(t), key)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return nil
	}
	kv := resp.Kvs[0]
	return &mvccKV{Value: string(kv.Value), Lease: clientv3.LeaseID(kv.Lease), ModRevision: kv.ModRevision}
}

type mvccKV struct {
	Value       string
	Lease       clientv3.LeaseID
	ModRevision int64
}

// subnetKeys lists the keys under the subnets directory.
func (c *cluster) subnetKeys(t *testing.T) []string {
	t.Helper()
	resp, err := c.cli.Get(testCtx(t), registry.DefaultPrefix+"/subnets/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, kv := range resp.Kvs {
		keys = append(keys, string(kv.Key))
	}
	return keys
}

// ttl returns an etcd lease's granted and remaining TTL (-1 if gone).
func (c *cluster) ttl(t *testing.T, id clientv3.LeaseID) (granted, left int64) {
	t.Helper()
	resp, err := c.cli.TimeToLive(testCtx(t), id)
	if err != nil {
		t.Fatal(err)
	}
	return resp.GrantedTTL, resp.TTL
}

// leaseCount is how many etcd leases exist (leaked grants show here).
func (c *cluster) leaseCount(t *testing.T) int {
	t.Helper()
	resp, err := c.cli.Leases(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	return len(resp.Leases)
}

// expectFull checks that Acquire with o finds no free subnet, with an
// error that mentions mention, and leaks no etcd lease: there are still
// leases.
func (c *cluster) expectFull(t *testing.T, o registry.AcquireOptions, mention string, leases int) {
	t.Helper()
	_, err := c.reg.Acquire(testCtx(t), o)
	if !errors.Is(err, registry.ErrNoFreeSubnet) || !strings.Contains(err.Error(), mention) {
		t.Errorf("Acquire in a full range: %v, want ErrNoFreeSubnet mentioning %q", err, mention)
	}
	if n := c.leaseCount(t); n != leases {
		t.Errorf("%d etcd leases, want %d (a failed Acquire must not leak a grant)", n, leases)
	}
}

func opts(publicIP string, ttl time.Duration) registry.AcquireOptions {
	return registry.AcquireOptions{PublicIP: netip.MustParseAddr(publicIP), TTL: ttl}
}

func TestConfigMissingOrBad(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	ctx := testCtx(t)
	for _, prefix := range []string{"", "/my/net/"} {
		want := strings.TrimSuffix(prefix, "/") + "/config"
		if prefix == "" {
			want = "/coreos.com/network/config"
		}
		_, err := registry.New(cli, prefix, quiet()).Config(ctx)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("prefix %q, no config: error %v, want one naming %s", prefix, err, want)
		}
	}
	if _, err := cli.Put(ctx, "/my/net/config", `{"Network":"10.244.0.0/16","SubnetLen":8}`); err != nil {
		t.Fatal(err)
	}
	_, err := registry.New(cli, "/my/net", quiet()).Config(ctx)
	if err == nil || !strings.Contains(err.Error(), "/my/net/config") || !strings.Contains(err.Error(), "SubnetLen") {
		t.Errorf("bad config: error %v, want one naming /my/net/config and SubnetLen", err)
	}

	// Without a config there is nothing to allocate from.
	if _, err := registry.New(cli, "/my/net", quiet()).Acquire(ctx, opts("198.18.0.11", 5*time.Second)); err == nil {
		t.Error("Acquire before Config succeeded")
	}
}

func TestAcquireFresh(t *testing.T) {
	t.Parallel()
	c := newCluster(t, `{"Network":"10.244.0.0/16","SubnetMin":"10.244.10.0","SubnetMax":"10.244.19.0","Backend":{"Type":"host-gw"}}`)
	ctx := testCtx(t)

	start := time.Now()
	l, err := c.reg.Acquire(ctx, opts("198.18.0.11", 5*time.Second))
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	lo, hi := netip.MustParseAddr("10.244.10.0"), netip.MustParseAddr("10.244.19.0")
	if l.Subnet.Bits() != 24 || l.Subnet.Addr().Less(lo) || hi.Less(l.Subnet.Addr()) {
		t.Errorf("subnet %s outside SubnetMin..SubnetMax 10.244.10.0..10.244.19.0 /24", l.Subnet)
	}
	if want := subnetKey(registry.SubnetKey(l.Subnet)); l.Key != want {
		t.Errorf("Key %q, want %q", l.Key, want)
	}
	if l.Reservation || l.LeaseID == 0 || l.PublicIP != netip.MustParseAddr("198.18.0.11") {
		t.Errorf("lease %+v: want a non-reservation with an etcd lease and PublicIP 198.18.0.11", l)
	}
	if exp := l.Expiration.Sub(start); exp < 4*time.Second || exp > 6*time.Second {
		t.Errorf("Expiration %s after the call, want about the 5s TTL", exp)
	}
	kv := c.get(t, l.Key)
	if kv == nil {
		t.Fatalf("%s not in etcd", l.Key)
	}
	if want := `{"PublicIP":"198.18.0.11","PublicIPv6":null,"BackendType":"host-gw"}`; kv.Value != want {
		t.Errorf("value %s, want flannel's %s", kv.Value, want)
	}
	if int64(kv.Lease) != l.LeaseID {
		t.Errorf("key bound to etcd lease %x, Acquire said %x", kv.Lease, l.LeaseID)
	}
	if granted, left := c.ttl(t, kv.Lease); granted != 5 || left <= 0 || left > 5 {
		t.Errorf("etcd lease TTL granted %d, left %d; want 5 and (0,5]", granted, left)
	}
	if keys := c.subnetKeys(t); len(keys) != 1 {
		t.Errorf("subnet keys %v, want just ours", keys)
	}

	// Nine more nodes fill the range with distinct subnets; an eleventh
	// finds none.
	seen := map[netip.Prefix]string{l.Subnet: "198.18.0.11"}
	for i := 12; i <= 20; i++ {
		ip := fmt.Sprintf("198.18.0.%d", i)
		l, err := c.reg.Acquire(ctx, opts(ip, 5*time.Second))
		if err != nil {
			t.Fatalf("Acquire for %s: %v", ip, err)
		}
		if other, dup := seen[l.Subnet]; dup {
			t.Fatalf("%s got %s, already leased to %s", ip, l.Subnet, other)
		}
		seen[l.Subnet] = ip
	}
	c.expectFull(t, opts("198.18.0.21", 5*time.Second), "", 10)
}

func TestAcquireRejectsIPv6PublicIP(t *testing.T) {
	t.Parallel()
	c := newCluster(t, hostGW16)
	if _, err := c.reg.Acquire(testCtx(t), opts("fd00::11", 5*time.Second)); err == nil {
		t.Error("Acquire with an IPv6 PublicIP succeeded")
	}
	if keys := c.subnetKeys(t); len(keys) != 0 {
		t.Errorf("keys written: %v", keys)
	}
}

func TestAcquireReusesOwnLease(t *testing.T) {
	t.Parallel()
	c := newCluster(t, hostGW16)
	// Our previous process left its lease (with a field we do not
	// manage); another node holds the subnet of our subnet file... which
	// we no longer need.
	old := c.put(t, subnetKey("10.244.7.0-24"), `{"PublicIP":"198.18.0.11","PublicIPv6":null,"BackendType":"host-gw","BackendData":{"VNI":1}}`, 60)
	c.put(t, subnetKey("10.244.8.0-24"), `{"PublicIP":"198.18.0.12","BackendType":"host-gw"}`, 60)

	o := opts("198.18.0.11", 5*time.Second)
	o.Previous = netip.MustParsePrefix("10.244.9.0/24")
	l, err := c.reg.Acquire(testCtx(t), o)
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	if l.Subnet != netip.MustParsePrefix("10.244.7.0/24") || l.Key != subnetKey("10.244.7.0-24") {
		t.Fatalf("got %s (%s), want our existing 10.244.7.0/24", l.Subnet, l.Key)
	}
	if l.LeaseID == 0 || clientv3.LeaseID(l.LeaseID) == old {
		t.Errorf("LeaseID %x: want a fresh etcd lease, not the old %x", l.LeaseID, old)
	}
	kv := c.get(t, l.Key)
	if kv == nil || int64(kv.Lease) != l.LeaseID {
		t.Fatalf("key %+v, want it bound to %x", kv, l.LeaseID)
	}
	if granted, _ := c.ttl(t, kv.Lease); granted != 5 {
		t.Errorf("new etcd lease granted %ds, want 5", granted)
	}
	if _, left := c.ttl(t, old); left != -1 {
		t.Errorf("old etcd lease still has %ds: it should be revoked", left)
	}
	// We manage PublicIP, PublicIPv6 and BackendType; a field flanneld
	// wrote stays.
	if want := `{"PublicIP":"198.18.0.11","PublicIPv6":null,"BackendType":"host-gw","BackendData":{"VNI":1}}`; kv.Value != want {
		t.Errorf("value after reuse %s, want %s", kv.Value, want)
	}
	if keys := c.subnetKeys(t); len(keys) != 2 {
		t.Errorf("subnet keys %v, want the two we started with", keys)
	}
}

func TestAcquireKeepsReservation(t *testing.T) {
	t.Parallel()
	c := newCluster(t, hostGW16)
	const value = `{"PublicIP":"198.18.0.11"}` // an operator's reservation, no TTL
	c.put(t, subnetKey("10.244.42.0-24"), value, 0)
	before := c.get(t, subnetKey("10.244.42.0-24"))

	l, err := c.reg.Acquire(testCtx(t), opts("198.18.0.11", 5*time.Second))
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	if l.Subnet != netip.MustParsePrefix("10.244.42.0/24") || !l.Reservation || l.LeaseID != 0 {
		t.Errorf("lease %+v, want the reservation 10.244.42.0/24 without etcd lease", l)
	}
	after := c.get(t, subnetKey("10.244.42.0-24"))
	if *after != *before {
		t.Errorf("reservation changed: %+v, was %+v", after, before)
	}
	if n := c.leaseCount(t); n != 0 {
		t.Errorf("%d etcd leases granted for a reservation", n)
	}
}

func TestAcquirePrevious(t *testing.T) {
	t.Parallel()
	c := newCluster(t, hostGW16)
	ctx := testCtx(t)

	// Free: honoured.
	o := opts("198.18.0.11", 5*time.Second)
	o.Previous = netip.MustParsePrefix("10.244.33.0/24")
	l, err := c.reg.Acquire(ctx, o)
	if err != nil || l.Subnet != o.Previous {
		t.Fatalf("Acquire with free Previous %s: %s, %v", o.Previous, l.Subnet, err)
	}

	// Taken (by .11 above): another subnet, and .11's key untouched.
	before := c.get(t, l.Key)
	o = opts("198.18.0.12", 5*time.Second)
	o.Previous = netip.MustParsePrefix("10.244.33.0/24")
	l2, err := c.reg.Acquire(ctx, o)
	if err != nil {
		t.Fatalf("Acquire with taken Previous: %v", err)
	}
	if l2.Subnet == o.Previous {
		t.Fatalf("got %s, which is leased to 198.18.0.11", l2.Subnet)
	}
	if after := c.get(t, l.Key); *after != *before {
		t.Errorf("other node's key changed: %+v, was %+v", after, before)
	}

	// Outside the range (SubnetMin skips the network's first subnet):
	// ignored.
	for _, prev := range []string{"10.244.0.0/24", "10.245.3.0/24", "10.244.3.0/25"} {
		o = opts("198.18.0.13", 5*time.Second)
		o.Previous = netip.MustParsePrefix(prev)
		l3, err := c.reg.Acquire(ctx, o)
		if err != nil {
			t.Fatalf("Acquire with Previous %s: %v", prev, err)
		}
		if l3.Subnet == o.Previous || l3.Subnet.Bits() != 24 || l3.Subnet.Addr() == netip.MustParseAddr("10.244.0.0") {
			t.Errorf("Previous %s outside the range gave %s", prev, l3.Subnet)
		}
		if err := c.reg.Release(ctx, l3.Subnet, o.PublicIP); err != nil {
			t.Fatal(err)
		}
	}
}

// Registries race for a network with one free subnet: one wins, the
// others are told there is none, and no etcd lease leaks.
func TestAcquireRaceForLastSubnet(t *testing.T) {
	t.Parallel()
	c := newCluster(t, `{"Network":"10.244.0.0/16","SubnetMin":"10.244.5.0","SubnetMax":"10.244.7.0","Backend":{"Type":"host-gw"}}`)
	c.put(t, subnetKey("10.244.5.0-24"), `{"PublicIP":"198.18.0.5","BackendType":"host-gw"}`, 60)
	c.put(t, subnetKey("10.244.7.0-24"), `{"PublicIP":"198.18.0.7"}`, 0)
	free := netip.MustParsePrefix("10.244.6.0/24")
	// Each contender has its own client, as two nodes would.
	var conflicts atomic.Int64 // how often the create transaction decided
	const n = 2
	regs := make([]*registry.Registry, n)
	for i := range regs {
		regs[i] = registry.New(c.srv.Client(t), "", slog.New(&countHandler{msg: "subnet taken by another node meanwhile, trying another", n: &conflicts}))
		if _, err := regs[i].Config(testCtx(t)); err != nil {
			t.Fatal(err)
		}
	}
	var ips []string
	for i := range n {
		ips = append(ips, fmt.Sprintf("198.18.0.%d", 21+i))
	}
	ctx := testCtx(t)

	for round := range 8 {
		var wg sync.WaitGroup
		leases := make([]registry.Lease, n)
		errs := make([]error, n)
		startGun := make(chan struct{})
		for i := range regs {
			wg.Go(func() {
				<-startGun
				leases[i], errs[i] = regs[i].Acquire(ctx, opts(ips[i], 5*time.Second))
			})
		}
		close(startGun)
		wg.Wait()

		winner := -1
		for i, err := range errs {
			switch {
			case err == nil && winner >= 0:
				t.Fatalf("round %d: two won: %s and %s", round, leases[winner].Subnet, leases[i].Subnet)
			case err == nil:
				winner = i
			case !errors.Is(err, registry.ErrNoFreeSubnet):
				t.Errorf("round %d: loser's error %v does not wrap ErrNoFreeSubnet", round, err)
			}
		}
		if winner < 0 {
			t.Fatalf("round %d: nobody won: %v", round, errs)
		}
		if leases[winner].Subnet != free {
			t.Errorf("round %d: winner got %s, want %s", round, leases[winner].Subnet, free)
		}
		kv := c.get(t, subnetKey("10.244.6.0-24"))
		if kv == nil || !strings.Contains(kv.Value, `"`+ips[winner]+`"`) || int64(kv.Lease) != leases[winner].LeaseID {
			t.Fatalf("round %d: key %+v, want the winner %s's with etcd lease %x", round, kv, ips[winner], leases[winner].LeaseID)
		}
		if n := c.leaseCount(t); n != 2 {
			t.Errorf("round %d: %d etcd leases, want 2 (the other node's and the winner's): the loser leaked its grant", round, n)
		}
		if err := regs[winner].Release(ctx, free, netip.MustParseAddr(ips[winner])); err != nil {
			t.Fatalf("round %d: Release: %v", round, err)
		}
	}
	t.Logf("the create transaction turned %d losers away in 8 rounds", conflicts.Load())
}

// countHandler counts log records with one message.
type countHandler struct {
	msg string
	n   *atomic.Int64
}

func (h *countHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Message == h.msg {
		h.n.Add(1)
	}
	return nil
}
func (h *countHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *countHandler) WithGroup(string) slog.Handler      { return h }

// flannelLeaseAttrs is flanneld's pkg/subnet.LeaseAttrs layout: PublicIP
// is an ip.IP4 and PublicIPv6 an *ip.IP6, both (un)marshalled as quoted
// strings; ParseIP4 accepts only IPv4.
type flannelLeaseAttrs struct {
	PublicIP      flannelIP4
	PublicIPv6    *flannelIP6
	BackendType   string          `json:",omitempty"`
	BackendData   json.RawMessage `json:",omitempty"`
	BackendV6Data json.RawMessage `json:",omitempty"`
}

type flannelIP4 netip.Addr

func (ip flannelIP4) MarshalJSON() ([]byte, error) {
	return []byte(`"` + netip.Addr(ip).String() + `"`), nil
}

func (ip *flannelIP4) UnmarshalJSON(j []byte) error {
	parsed := net.ParseIP(strings.Trim(string(j), `"`)).To4()
	if parsed == nil {
		return fmt.Errorf("flannel ip.IP4: %s is not IPv4", j)
	}
	*ip = flannelIP4(netip.AddrFrom4([4]byte(parsed)))
	return nil
}

type flannelIP6 netip.Addr

func (ip flannelIP6) MarshalJSON() ([]byte, error) {
	return []byte(`"` + netip.Addr(ip).String() + `"`), nil
}

func (ip *flannelIP6) UnmarshalJSON(j []byte) error {
	a, err := netip.ParseAddr(strings.Trim(string(j), `"`))
	*ip = flannelIP6(a)
	return err
}

// What we write is what flanneld reads, and the literal fixtures of the
// watch tests are what flanneld writes.
func TestLeaseJSONMatchesFlannel(t *testing.T) {
	t.Parallel()
	c := newCluster(t, hostGW16)
	l, err := c.reg.Acquire(testCtx(t), opts("198.18.0.11", 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	kv := c.get(t, l.Key)
	dec := json.NewDecoder(strings.NewReader(kv.Value))
	dec.DisallowUnknownFields()
	var fl flannelLeaseAttrs
	if err := dec.Decode(&fl); err != nil {
		t.Fatalf("flanneld cannot read our %s: %v", kv.Value, err)
	}
	if netip.Addr(fl.PublicIP) != netip.MustParseAddr("198.18.0.11") || fl.PublicIPv6 != nil || fl.BackendType != "host-gw" ||
		fl.BackendData != nil || fl.BackendV6Data != nil {
		t.Errorf("flanneld reads our %s as %+v", kv.Value, fl)
	}

	for _, tt := range []struct {
		attrs flannelLeaseAttrs
		want  string
	}{
		{flannelLeaseAttrs{PublicIP: flannelIP4(netip.MustParseAddr("198.18.0.12")), BackendType: "host-gw"},
			flanneldHostGW},
		{flannelLeaseAttrs{PublicIP: flannelIP4(netip.MustParseAddr("198.18.0.13")),
			PublicIPv6: ptr(flannelIP6(netip.MustParseAddr("fd00::13"))), BackendType: "host-gw"},
			flanneldDualStack},
	} {
		got, err := json.Marshal(tt.attrs)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != tt.want {
			t.Errorf("flanneld's layout writes %s, fixture is %s", got, tt.want)
		}
	}
}

func ptr[T any](v T) *T { return &v }

// A lease of another length (an operator's /22 reservation, a flanneld of
// an older SubnetLen) blocks every subnet it overlaps, as in flannel's
// allocateSubnet.
func TestAcquireAvoidsOverlappingLeases(t *testing.T) {
	t.Parallel()
	c := newCluster(t, `{"Network":"10.244.0.0/16","SubnetMin":"10.244.8.0","SubnetMax":"10.244.13.0","Backend":{"Type":"host-gw"}}`)
	c.put(t, subnetKey("10.244.8.0-22"), `{"PublicIP":"198.18.0.50"}`, 0)    // covers 8..11
	c.put(t, subnetKey("10.244.13.128-25"), `{"PublicIP":"198.18.0.51"}`, 0) // inside 13
	ctx := testCtx(t)
	for i := range 3 {
		ip := fmt.Sprintf("198.18.0.%d", 11+i)
		l, err := c.reg.Acquire(ctx, opts(ip, 5*time.Second))
		if i == 0 {
			if err != nil || l.Subnet != netip.MustParsePrefix("10.244.12.0/24") {
				t.Errorf("%s got %s, %v; want 10.244.12.0/24, the only subnet nothing overlaps", ip, l.Subnet, err)
			}
			continue
		}
		if !errors.Is(err, registry.ErrNoFreeSubnet) {
			t.Errorf("%s got %s, %v; want ErrNoFreeSubnet", ip, l.Subnet, err)
		}
	}
	// Previous is no exception.
	o := opts("198.18.0.20", 5*time.Second)
	o.Previous = netip.MustParsePrefix("10.244.9.0/24")
	if l, err := c.reg.Acquire(ctx, o); err == nil {
		t.Errorf("Previous %s inside a /22 reservation granted: %s", o.Previous, l.Subnet)
	}
}

// As flanneld does, a fresh subnet is one of the first 100 free subnets
// from SubnetMin up, whatever the size of the network; a lease of another
// length is stepped over as a whole.
func TestAcquirePicksAmongTheFirstFreeSubnets(t *testing.T) {
	t.Parallel()
	c := newCluster(t, `{"Network":"10.0.0.0/8","Backend":{"Type":"host-gw"}}`) // 65535 /24s
	ctx := testCtx(t)
	index := func(p netip.Prefix) int { // of p among 10.0.1.0/24, 10.0.2.0/24, ...
		a := p.Addr().As4()
		return (int(a[1])<<16|int(a[2])<<8|int(a[3]))>>8 - 1
	}
	const n = 30
	for i := range n {
		l, err := c.reg.Acquire(ctx, opts(fmt.Sprintf("198.18.0.%d", 11+i), time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		// i subnets are taken already: the first 100 free lie below 100+i.
		if idx := index(l.Subnet); idx >= 100+i {
			t.Errorf("lease %d got %s, subnet #%d; want one of the first 100 free (below #%d)", i, l.Subnet, idx, 100+i)
		}
	}

	// A /9 over the bottom half (half the network's subnets) is one step.
	c = newCluster(t, `{"Network":"10.0.0.0/8","Backend":{"Type":"host-gw"}}`)
	c.put(t, subnetKey("10.0.0.0-9"), `{"PublicIP":"198.18.0.50"}`, 0)
	for i := range 5 {
		l, err := c.reg.Acquire(ctx, opts(fmt.Sprintf("198.18.0.%d", 11+i), time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		if first := netip.MustParsePrefix("10.128.0.0/24"); index(l.Subnet) < index(first) || index(l.Subnet) >= index(first)+100+i {
			t.Errorf("beside a /9 reservation got %s; want one of the first 100 free from %s", l.Subnet, first)
		}
	}
}

// A lease of ours that no longer fits the config (SubnetLen or the range
// changed since it was taken) is deleted, as flanneld does, and we get
// one that fits; an operator's reservation is honoured wherever it lies.
func TestAcquireReplacesOwnLeaseThatNoLongerFits(t *testing.T) {
	t.Parallel()
	c := newCluster(t, `{"Network":"10.244.0.0/16","SubnetMin":"10.244.10.0","SubnetMax":"10.244.19.0","Backend":{"Type":"host-gw"}}`)
	ctx := testCtx(t)
	cfg, err := c.reg.Config(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, old := range []string{"10.244.30.0/24", "10.244.12.0/25"} {
		oldKey := c.reg.LeaseKey(netip.MustParsePrefix(old))
		id := c.put(t, oldKey, `{"PublicIP":"198.18.0.11","PublicIPv6":null,"BackendType":"host-gw"}`, 60)
		o := opts("198.18.0.11", 5*time.Second)
		o.Previous = netip.MustParsePrefix(old) // not even the subnet file can keep it
		l, err := c.reg.Acquire(ctx, o)
		if err != nil {
			t.Fatalf("old lease %s: Acquire: %v", old, err)
		}
		if !cfg.InRange(l.Subnet) || l.Key == oldKey {
			t.Errorf("old lease %s: got %s, want a /24 in 10.244.10.0..10.244.19.0", old, l.Subnet)
		}
		if kv := c.get(t, oldKey); kv != nil {
			t.Errorf("old lease %s that no longer fits is still there: %+v", old, kv)
		}
		if _, left := c.ttl(t, id); left != -1 {
			t.Errorf("old lease %s: its etcd lease is not revoked (%ds left)", old, left)
		}
		if err := c.reg.Release(ctx, l.Subnet, o.PublicIP); err != nil {
			t.Fatal(err)
		}
	}

	// A reservation outside SubnetMin..SubnetMax, next to an ordinary
	// lease of ours: the reservation wins, both keys stay.
	c.put(t, subnetKey("10.244.15.0-24"), `{"PublicIP":"198.18.0.12","BackendType":"host-gw"}`, 60)
	c.put(t, subnetKey("10.244.200.0-24"), `{"PublicIP":"198.18.0.12"}`, 0)
	for range 3 { // map order must not decide
		l, err := c.reg.Acquire(ctx, opts("198.18.0.12", 5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		if l.Subnet != netip.MustParsePrefix("10.244.200.0/24") || !l.Reservation {
			t.Fatalf("got %+v, want the reservation 10.244.200.0/24", l)
		}
	}
	if keys := c.subnetKeys(t); len(keys) != 2 {
		t.Errorf("keys %v, want both of 198.18.0.12's", keys)
	}
}

// TTL 0 is flanneld's 24 h; etcd cannot grant less than a second.
func TestAcquireTTL(t *testing.T) {
	t.Parallel()
	c := newCluster(t, hostGW16)
	ctx := testCtx(t)
	l, err := c.reg.Acquire(ctx, opts("198.18.0.11", 0))
	if err != nil {
		t.Fatal(err)
	}
	if granted, _ := c.ttl(t, clientv3.LeaseID(l.LeaseID)); granted != 86400 || registry.DefaultLeaseTTL != 24*time.Hour {
		t.Errorf("TTL 0 granted %ds, want 86400", granted)
	}
	if d := time.Until(l.Expiration); d < 23*time.Hour || d > 24*time.Hour {
		t.Errorf("Expiration in %s, want about 24h", d)
	}
	if _, err := c.reg.Acquire(ctx, opts("198.18.0.12", 500*time.Millisecond)); err == nil || !strings.Contains(err.Error(), "TTL") {
		t.Errorf("TTL 500ms: %v, want an error about the TTL", err)
	}
}
