package registry_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/hgw-ebpf/hgw-ebpf/internal/registry"
	"github.com/hgw-ebpf/hgw-ebpf/internal/registry/etcdtest"
	"github.com/hgw-ebpf/hgw-ebpf/internal/testutil"
)

// Leases exactly as flanneld writes them (pkg/subnet.LeaseAttrs through
// encoding/json): PublicIPv6 is a pointer without omitempty, so a v4-only
// flanneld writes null; host-gw sets no BackendData.
const (
	flanneldHostGW    = `{"PublicIP":"198.18.0.12","PublicIPv6":null,"BackendType":"host-gw"}`
	flanneldDualStack = `{"PublicIP":"198.18.0.13","PublicIPv6":"fd00::13","BackendType":"host-gw"}`
	flanneldVXLAN     = `{"PublicIP":"198.18.0.14","PublicIPv6":"fd00::14","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0a:58:0a:f4:0e:00"},"BackendV6Data":{"VNI":1,"VtepMAC":"0a:58:0a:f4:0e:01"}}`
)

// watcher runs Registry.Watch for the rest of the test and queues every
// change it delivers, with a copy of the table then.
type watcher struct {
	snaps           chan seen
	events, relists atomic.Int64
}

// seen is one call of Watch's fn: the table then, and the change.
type seen struct {
	registry.Snapshot
	full bool
	keys []string // sorted
}

func startWatch(t *testing.T, reg *registry.Registry) *watcher {
	t.Helper()
	w := &watcher{snaps: make(chan seen, 1000)}
	testutil.Run(t, "Watch", func(ctx context.Context) error {
		return reg.Watch(ctx, func(c registry.Change) {
			if c.Full != (len(c.Keys) == 0) {
				t.Errorf("change Full %v with keys %q", c.Full, c.Keys)
			}
			s := seen{Snapshot: c.Leases.Snapshot(), full: c.Full, keys: slices.Sorted(slices.Values(c.Keys))}
			select {
			case w.snaps <- s:
			case <-ctx.Done():
			}
		}, registry.WatchHooks{Event: func() { w.events.Add(1) }, Relist: func() { w.relists.Add(1) }, HistoryCheck: time.Second})
	})
	return w
}

// twoLeases is a cluster holding the leases 10.244.1.0/24 of 198.18.0.11
// (on an etcd lease of ttl1 seconds; none if 0) and 10.244.2.0/24 of
// 198.18.0.12.
func twoLeases(t *testing.T, ttl1 int64) *cluster {
	t.Helper()
	c := newCluster(t, hostGW16)
	c.put(t, subnetKey("10.244.1.0-24"), `{"PublicIP":"198.18.0.11"}`, ttl1)
	c.put(t, subnetKey("10.244.2.0-24"), `{"PublicIP":"198.18.0.12"}`, 0)
	return c
}

// next returns the next change.
func (w *watcher) next(t *testing.T) seen {
	t.Helper()
	return testutil.Recv(t, w.snaps, 20*time.Second, "change")
}

// until returns the first snapshot for which ok holds; every snapshot
// it skips must satisfy invariant (if set).
func (w *watcher) until(t *testing.T, what string, ok func(seen) bool, invariant func(seen) error) seen {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		select {
		case s := <-w.snaps:
			if invariant != nil {
				if err := invariant(s); err != nil {
					t.Fatalf("waiting for %s: snapshot at revision %d: %v", what, s.Revision, err)
				}
			}
			if ok(s) {
				return s
			}
		case <-deadline:
			t.Fatalf("no snapshot with %s within 20s", what)
		}
	}
}

// publicIPs maps each lease's subnet key element to its PublicIP.
func publicIPs(s seen) map[string]string {
	m := map[string]string{}
	for _, l := range s.Leases {
		m[strings.TrimPrefix(l.Key, registry.DefaultPrefix+"/subnets/")] = l.PublicIP.String()
	}
	return m
}

func sameLeases(want map[string]string) func(seen) bool {
	return func(s seen) bool { return fmt.Sprint(publicIPs(s)) == fmt.Sprint(want) }
}

func TestWatchSnapshots(t *testing.T) {
	t.Parallel()
	c := newCluster(t, hostGW16)
	c.put(t, subnetKey("10.244.1.0-24"), `{"PublicIP":"198.18.0.11","BackendType":"host-gw"}`, 60)
	c.put(t, subnetKey("10.244.2.0-24"), `{"PublicIP":"198.18.0.12"}`, 0)
	ctx := testCtx(t)
	w := startWatch(t, c.reg)

	want := map[string]string{"10.244.1.0-24": "198.18.0.11", "10.244.2.0-24": "198.18.0.12"}
	s := w.next(t)
	if !sameLeases(want)(s) || len(s.Skipped) != 0 || !s.full {
		t.Fatalf("initial change (full %v) %v (skipped %v), want the full table %v", s.full, publicIPs(s), s.Skipped, want)
	}
	if !s.Leases[1].Reservation || s.Leases[0].Reservation || s.Leases[0].LeaseID == 0 {
		t.Errorf("reservation flags wrong: %+v", s.Leases)
	}
	if d := time.Until(s.Leases[0].Expiration); d < 50*time.Second || d > 61*time.Second {
		t.Errorf("lease with a 60s etcd lease expires in %s", d)
	}
	if !s.Leases[1].Expiration.IsZero() {
		t.Errorf("reservation expires at %s, want never (zero)", s.Leases[1].Expiration)
	}

	// Each change names the key it touched; the table holds every lease.
	steps := []struct {
		name, key string
		write     func(ctx context.Context) (int64, error)
		want      map[string]string
	}{
		{"add", "10.244.3.0-24", func(ctx context.Context) (int64, error) {
			r, err := c.cli.Put(ctx, subnetKey("10.244.3.0-24"), `{"PublicIP":"198.18.0.13","BackendType":"host-gw"}`)
			return rev(r, err)
		}, map[string]string{"10.244.1.0-24": "198.18.0.11", "10.244.2.0-24": "198.18.0.12", "10.244.3.0-24": "198.18.0.13"}},
		{"update", "10.244.1.0-24", func(ctx context.Context) (int64, error) {
			r, err := c.cli.Put(ctx, subnetKey("10.244.1.0-24"), `{"PublicIP":"198.18.0.21","BackendType":"host-gw"}`)
			return rev(r, err)
		}, map[string]string{"10.244.1.0-24": "198.18.0.21", "10.244.2.0-24": "198.18.0.12", "10.244.3.0-24": "198.18.0.13"}},
		{"delete", "10.244.2.0-24", func(ctx context.Context) (int64, error) {
			r, err := c.cli.Delete(ctx, subnetKey("10.244.2.0-24"))
			if err != nil {
				return 0, err
			}
			return r.Header.Revision, nil
		}, map[string]string{"10.244.1.0-24": "198.18.0.21", "10.244.3.0-24": "198.18.0.13"}},
		{"unrelated keys are not watched", "10.244.4.0-24", func(ctx context.Context) (int64, error) {
			if _, err := c.cli.Put(ctx, registry.DefaultPrefix+"/config-backup", "x"); err != nil {
				return 0, err
			}
			r, err := c.cli.Put(ctx, subnetKey("10.244.4.0-24"), `{"PublicIP":"198.18.0.14"}`)
			return rev(r, err)
		}, map[string]string{"10.244.1.0-24": "198.18.0.21", "10.244.3.0-24": "198.18.0.13", "10.244.4.0-24": "198.18.0.14"}},
	}
	for _, step := range steps {
		events := w.events.Load()
		r, err := step.write(ctx)
		if err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		s := w.next(t)
		if !sameLeases(step.want)(s) {
			t.Errorf("%s: snapshot %v, want %v", step.name, publicIPs(s), step.want)
		}
		if s.Revision != r {
			t.Errorf("%s: snapshot revision %d, write was at %d", step.name, s.Revision, r)
		}
		if want := []string{subnetKey(step.key)}; s.full || !slices.Equal(s.keys, want) {
			t.Errorf("%s: change full %v keys %q, want keys %q", step.name, s.full, s.keys, want)
		}
		if got := w.events.Load() - events; got != 1 {
			t.Errorf("%s: %d Event hooks, want 1", step.name, got)
		}
	}

	// An etcd lease that nobody keeps alive expires: its node is gone.
	c.put(t, subnetKey("10.244.5.0-24"), `{"PublicIP":"198.18.0.15"}`, 2)
	s = w.until(t, "10.244.5.0-24", func(s seen) bool { return publicIPs(s)["10.244.5.0-24"] != "" }, nil)
	for _, l := range s.Leases {
		if l.Key == subnetKey("10.244.5.0-24") {
			if d := time.Until(l.Expiration); d <= 0 || d > 2*time.Second {
				t.Errorf("lease with a 2s etcd lease, from a watch event, expires in %s", d)
			}
		}
	}
	start := time.Now()
	w.until(t, "10.244.5.0-24 expired", func(s seen) bool { return publicIPs(s)["10.244.5.0-24"] == "" }, nil)
	t.Logf("expired lease left the snapshot after %s", time.Since(start).Round(10*time.Millisecond))
	if n := w.relists.Load(); n != 0 {
		t.Errorf("%d relists without any failure", n)
	}
}

// One transaction's keys come in one change, applied together: a consumer
// never sees half of it.
func TestWatchTransactionIsOneChange(t *testing.T) {
	t.Parallel()
	c := twoLeases(t, 0)
	ctx := testCtx(t)
	w := startWatch(t, c.reg)
	w.next(t)
	// A node moves: its old lease goes, a new one comes, and a third is
	// touched twice.
	if _, err := c.cli.Txn(ctx).Then(
		clientv3.OpDelete(subnetKey("10.244.1.0-24")),
		clientv3.OpPut(subnetKey("10.244.3.0-24"), `{"PublicIP":"198.18.0.11"}`),
		clientv3.OpPut(subnetKey("10.244.2.0-24"), `{"PublicIP":"198.18.0.22"}`),
	).Commit(); err != nil {
		t.Fatal(err)
	}
	s := w.next(t)
	want := map[string]string{"10.244.2.0-24": "198.18.0.22", "10.244.3.0-24": "198.18.0.11"}
	if !sameLeases(want)(s) {
		t.Errorf("after the transaction %v, want %v", publicIPs(s), want)
	}
	if keys := []string{subnetKey("10.244.1.0-24"), subnetKey("10.244.2.0-24"), subnetKey("10.244.3.0-24")}; s.full || !slices.Equal(s.keys, keys) {
		t.Errorf("change full %v keys %q, want %q", s.full, s.keys, keys)
	}
}

func rev(r *clientv3.PutResponse, err error) (int64, error) {
	if err != nil {
		return 0, err
	}
	return r.Header.Revision, nil
}

// Leases flanneld wrote are read field for field, from the initial list
// and from watch events alike.
func TestWatchReadsFlanneldLeases(t *testing.T) {
	t.Parallel()
	c := newCluster(t, hostGW16)
	ctx := testCtx(t)
	dualKey := "10.244.13.0-24&fd00:10:244:13::-64"
	c.put(t, subnetKey("10.244.12.0-24"), flanneldHostGW, 60)
	w := startWatch(t, c.reg)
	w.next(t)
	c.put(t, subnetKey(dualKey), flanneldDualStack, 60)
	s := w.until(t, "both leases", func(s seen) bool { return len(s.Leases) == 2 }, nil)
	if len(s.Skipped) != 0 {
		t.Fatalf("skipped %+v", s.Skipped)
	}
	v4 := s.Leases[0]
	if v4.Subnet != netip.MustParsePrefix("10.244.12.0/24") || v4.IPv6Subnet.IsValid() ||
		v4.PublicIP != netip.MustParseAddr("198.18.0.12") || v4.Attrs.PublicIPv6 != "" || v4.Attrs.BackendType != "host-gw" ||
		v4.Reservation || v4.LeaseID == 0 {
		t.Errorf("flanneld v4 lease read as %+v", v4)
	}
	dual := s.Leases[1]
	if dual.Key != subnetKey(dualKey) || dual.Subnet != netip.MustParsePrefix("10.244.13.0/24") ||
		dual.IPv6Subnet != netip.MustParsePrefix("fd00:10:244:13::/64") || dual.PublicIP != netip.MustParseAddr("198.18.0.13") ||
		dual.Attrs.PublicIPv6 != "fd00::13" || dual.Attrs.BackendType != "host-gw" {
		t.Errorf("flanneld dual-stack lease read as %+v", dual)
	}

	// A vxlan network, under another prefix of the same etcd: backend data
	// come through untouched.
	if _, err := c.cli.Put(ctx, "/vx/config", `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":1}}`); err != nil {
		t.Fatal(err)
	}
	vx := newRegistry(t, c.cli, "/vx")
	vw := startWatch(t, vx)
	vw.next(t)
	if _, err := c.cli.Put(ctx, "/vx/subnets/"+"10.244.14.0-24&fd00:10:244:14::-64", flanneldVXLAN); err != nil {
		t.Fatal(err)
	}
	s = vw.next(t)
	if len(s.Leases) != 1 {
		t.Fatalf("vxlan snapshot %+v", s)
	}
	l := s.Leases[0]
	var want struct{ BackendData, BackendV6Data json.RawMessage }
	if err := json.Unmarshal([]byte(flanneldVXLAN), &want); err != nil {
		t.Fatal(err)
	}
	if l.PublicIP != netip.MustParseAddr("198.18.0.14") || l.Attrs.PublicIPv6 != "fd00::14" || l.Attrs.BackendType != "vxlan" ||
		string(l.Attrs.BackendData) != string(want.BackendData) || string(l.Attrs.BackendV6Data) != string(want.BackendV6Data) ||
		!l.Reservation {
		t.Errorf("flanneld vxlan lease read as %+v (BackendData %s, BackendV6Data %s)", l, l.Attrs.BackendData, l.Attrs.BackendV6Data)
	}
}

func TestWatchSkipsMalformed(t *testing.T) {
	t.Parallel()
	c := newCluster(t, hostGW16)
	good := `{"PublicIP":"198.18.0.11","BackendType":"host-gw"}`
	bad := map[string]struct{ value, reason string }{
		"10.244.50.0-24":     {`PublicIP=198.18.0.50`, "bad_json"},
		"10.244.51.0-24":     {`{"PublicIP":"fd00::51"}`, "bad_public_ip"},
		"10.244.52.0-24":     {`{"BackendType":"host-gw"}`, "bad_public_ip"},
		"10.244.53.0-24":     {`{"PublicIP":"198.18.0.53","BackendType":"vxlan","BackendData":{"VNI":1}}`, "backend"},
		"10.245.1.0-24":      {good, "outside_network"},
		"10.244.0.0-15":      {good, "outside_network"}, // larger than the network
		"not-a-subnet":       {good, "bad_key"},
		"10.244.54.1-24":     {good, "bad_key"}, // host bits
		"10.244.55.0-24&foo": {good, "bad_key"},
	}
	wantSkipped := func(keys ...string) func(seen) error {
		return func(s seen) error {
			var got []string
			for _, sk := range s.Skipped {
				k := strings.TrimPrefix(sk.Key, registry.DefaultPrefix+"/subnets/")
				if sk.Reason != bad[k].reason || sk.Err == nil {
					return fmt.Errorf("%s skipped with reason %q (%v), want %q", k, sk.Reason, sk.Err, bad[k].reason)
				}
				got = append(got, k)
			}
			for _, l := range s.Leases {
				if _, isBad := bad[strings.TrimPrefix(l.Key, registry.DefaultPrefix+"/subnets/")]; isBad {
					return fmt.Errorf("malformed %s among the leases", l.Key)
				}
			}
			slices.Sort(keys)
			if !slices.Equal(got, keys) {
				return fmt.Errorf("skipped %v, want %v", got, keys)
			}
			return nil
		}
	}

	// Half of them before the watch starts (list), half after (events).
	var first, second []string
	for k := range bad {
		if len(first) <= len(second) {
			first = append(first, k)
		} else {
			second = append(second, k)
		}
	}
	c.put(t, subnetKey("10.244.1.0-24"), good, 0)
	for _, k := range first {
		c.put(t, subnetKey(k), bad[k].value, 0)
	}
	w := startWatch(t, c.reg)
	s := w.next(t)
	if err := wantSkipped(first...)(s); err != nil {
		t.Fatalf("initial snapshot: %v", err)
	}
	if len(s.Leases) != 1 {
		t.Fatalf("initial leases %v, want only the good one", publicIPs(s))
	}
	for i, k := range second {
		c.put(t, subnetKey(k), bad[k].value, 0)
		s := w.next(t)
		if err := wantSkipped(append(slices.Clone(first), second[:i+1]...)...)(s); err != nil {
			t.Fatalf("after putting %s: %v", k, err)
		}
		if len(s.Leases) != 1 {
			t.Fatalf("after putting %s: leases %v", k, publicIPs(s))
		}
		if want := []string{subnetKey(k)}; !slices.Equal(s.keys, want) {
			t.Errorf("after putting %s: change of keys %q, want %q: a skipped entry is a change too", k, s.keys, want)
		}
	}

	// Fixing a value makes it a lease; breaking one makes it a skip.
	c.put(t, subnetKey("10.244.50.0-24"), `{"PublicIP":"198.18.0.50"}`, 0)
	s = w.next(t)
	if publicIPs(s)["10.244.50.0-24"] != "198.18.0.50" || slices.ContainsFunc(s.Skipped, func(sk registry.Skipped) bool {
		return strings.HasSuffix(sk.Key, "/10.244.50.0-24")
	}) {
		t.Errorf("fixed entry: leases %v, skipped %v", publicIPs(s), s.Skipped)
	}
	c.put(t, subnetKey("10.244.1.0-24"), `{"PublicIP":"nope"}`, 0)
	s = w.next(t)
	if _, still := publicIPs(s)["10.244.1.0-24"]; still {
		t.Errorf("broken entry still a lease: %v", publicIPs(s))
	}
	if !slices.ContainsFunc(s.Skipped, func(sk registry.Skipped) bool {
		return strings.HasSuffix(sk.Key, "/10.244.1.0-24") && sk.Reason == "bad_public_ip"
	}) {
		t.Errorf("broken entry not skipped as bad_public_ip: %+v", s.Skipped)
	}
}

// etcd stopped while watching: consumers keep the last good state (no
// snapshot, in particular no empty one, while it is down); after the
// restart the watch resumes, here past a compaction.
func TestWatchSurvivesEtcdRestart(t *testing.T) {
	t.Parallel()
	c := twoLeases(t, 60)
	ctx := testCtx(t)
	w := startWatch(t, c.reg)
	before := map[string]string{"10.244.1.0-24": "198.18.0.11", "10.244.2.0-24": "198.18.0.12"}
	if s := w.next(t); !sameLeases(before)(s) {
		t.Fatalf("initial %v", publicIPs(s))
	}
	// History the watch never sees, then compacted away: it must resume
	// from a revision that no longer exists.
	for i := range 50 {
		if _, err := c.cli.Put(ctx, fmt.Sprintf("/elsewhere/%d", i), "x"); err != nil {
			t.Fatal(err)
		}
	}
	c.srv.Compact(t, 0)

	c.srv.Stop()
	select {
	case s := <-w.snaps:
		t.Fatalf("snapshot while etcd is down: %v", publicIPs(s))
	case <-time.After(3 * time.Second):
	}
	c.srv.Restart(t)
	c.put(t, subnetKey("10.244.3.0-24"), `{"PublicIP":"198.18.0.13"}`, 0)
	after := map[string]string{"10.244.1.0-24": "198.18.0.11", "10.244.2.0-24": "198.18.0.12", "10.244.3.0-24": "198.18.0.13"}
	start := time.Now()
	w.until(t, "the lease added after the restart", sameLeases(after), func(s seen) error {
		if len(s.Leases) < 2 {
			return fmt.Errorf("leases lost: %v", publicIPs(s))
		}
		return nil
	})
	t.Logf("recovered %s after the restart, %d relists", time.Since(start).Round(10*time.Millisecond), w.relists.Load())
	if w.relists.Load() == 0 {
		t.Error("Relist hook not called: a watch that resumed past a compaction must read everything again")
	}
}

// The watch's client loses its connection while leases change and the
// history is compacted: only a re-list can learn what happened, including
// a deletion.
func TestWatchRecoversFromCompaction(t *testing.T) {
	t.Parallel()
	c := twoLeases(t, 0)
	ctx := testCtx(t)

	p, reg := c.behindProxy(t)
	w := startWatch(t, reg)
	if s := w.next(t); len(s.Leases) != 2 {
		t.Fatalf("initial %v", publicIPs(s))
	}
	c.put(t, subnetKey("10.244.3.0-24"), `{"PublicIP":"198.18.0.13"}`, 0)
	w.next(t) // the watch has seen revisions up to here

	p.Cut()
	if _, err := c.cli.Delete(ctx, subnetKey("10.244.1.0-24")); err != nil {
		t.Fatal(err)
	}
	c.put(t, subnetKey("10.244.2.0-24"), `{"PublicIP":"198.18.0.22"}`, 0)
	c.put(t, subnetKey("10.244.4.0-24"), `{"PublicIP":"198.18.0.14"}`, 0)
	c.srv.Compact(t, 0)
	select {
	case s := <-w.snaps:
		t.Fatalf("snapshot while cut off: %v", publicIPs(s))
	case <-time.After(time.Second):
	}
	p.Heal()

	want := map[string]string{"10.244.2.0-24": "198.18.0.22", "10.244.3.0-24": "198.18.0.13", "10.244.4.0-24": "198.18.0.14"}
	s := w.next(t)
	if !sameLeases(want)(s) || !s.full {
		t.Errorf("after recovery (full %v) %v, want the full table %v", s.full, publicIPs(s), want)
	}
	if w.relists.Load() == 0 {
		t.Error("Relist hook not called")
	}
	// And the new watch works.
	c.put(t, subnetKey("10.244.5.0-24"), `{"PublicIP":"198.18.0.15"}`, 0)
	want["10.244.5.0-24"] = "198.18.0.15"
	w.until(t, "10.244.5.0-24", sameLeases(want), nil)
}

// behindProxy returns a registry whose client reaches c's etcd through a
// proxy of its own, so that it alone can be cut off.
func (c *cluster) behindProxy(t *testing.T) (*etcdtest.Proxy, *registry.Registry) {
	t.Helper()
	p := etcdtest.NewProxy(t, c.srv.Endpoints()[0])
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{p.URL()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return p, newRegistry(t, cli, "")
}

// recorder keeps every log record's message and attributes.
type recorder struct {
	mu      sync.Mutex
	records []map[string]string
}

func (h *recorder) Enabled(context.Context, slog.Level) bool { return true }
func (h *recorder) Handle(_ context.Context, r slog.Record) error {
	m := map[string]string{"msg": r.Message}
	r.Attrs(func(a slog.Attr) bool { m[a.Key] = a.Value.String(); return true })
	h.mu.Lock()
	h.records = append(h.records, m)
	h.mu.Unlock()
	return nil
}
func (h *recorder) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *recorder) WithGroup(string) slog.Handler      { return h }

// skips returns the reason of each "skipping" record for key, in order.
func (h *recorder) skips(key string) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var reasons []string
	for _, r := range h.records {
		if strings.HasPrefix(r["msg"], "skipping") && r["key"] == key {
			reasons = append(reasons, r["reason"])
		}
	}
	return reasons
}

// A bad entry is logged with its key and reason once, not on every
// snapshot; again only when its value changes or it comes back.
func TestWatchLogsBadEntryOnce(t *testing.T) {
	t.Parallel()
	c := newCluster(t, hostGW16)
	rec := &recorder{}
	reg := registry.New(c.cli, "", slog.New(rec))
	if _, err := reg.Config(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	bad := subnetKey("10.244.9.0-24")
	c.put(t, bad, `{"PublicIP":"nope"}`, 0)
	w := startWatch(t, reg)
	w.next(t)
	for i := range 3 { // snapshots that keep the bad entry
		c.put(t, subnetKey(fmt.Sprintf("10.244.%d.0-24", 20+i)), `{"PublicIP":"198.18.0.20"}`, 0)
		if s := w.next(t); len(s.Skipped) != 1 || s.Skipped[0].Key != bad {
			t.Fatalf("skipped %+v, want %s", s.Skipped, bad)
		}
	}
	// Acquire reads the same bad entry: still not repeated.
	if _, err := reg.Acquire(testCtx(t), opts("198.18.0.30", 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	w.next(t)
	if got := rec.skips(bad); !slices.Equal(got, []string{"bad_public_ip"}) {
		t.Fatalf("logged %v for %s, want bad_public_ip once", got, bad)
	}

	c.put(t, bad, `not json`, 0) // changed: news
	w.next(t)
	c.put(t, bad, `{"PublicIP":"198.18.0.9"}`, 0) // fixed
	w.next(t)
	c.put(t, bad, `not json`, 0) // broken again, with the same value as before
	w.next(t)
	if got := rec.skips(bad); !slices.Equal(got, []string{"bad_public_ip", "bad_json", "bad_json"}) {
		t.Errorf("logged %v for %s, want bad_public_ip, bad_json, bad_json", got, bad)
	}
}

// etcd recreated empty (or restored from an older backup) on the same
// endpoint: the client resumes the watch at a revision this etcd has not
// reached; Watch must notice and read everything again.
func TestWatchNoticesEtcdRecreated(t *testing.T) {
	t.Parallel()
	c := newCluster(t, hostGW16)
	ctx := testCtx(t)
	for i := range 20 { // history the new etcd will not have
		c.put(t, subnetKey(fmt.Sprintf("10.244.%d.0-24", 100+i)), fmt.Sprintf(`{"PublicIP":"198.18.1.%d"}`, i), 0)
	}
	w := startWatch(t, c.reg)
	if s := w.next(t); len(s.Leases) != 20 {
		t.Fatalf("initial snapshot has %d leases, want 20", len(s.Leases))
	}
	c.srv.Wipe(t)
	if _, err := c.cli.Put(ctx, registry.DefaultPrefix+"/config", hostGW16); err != nil {
		t.Fatal(err)
	}
	c.put(t, subnetKey("10.244.1.0-24"), `{"PublicIP":"198.18.0.11"}`, 0)
	start := time.Now()
	w.until(t, "the new etcd's only lease", sameLeases(map[string]string{"10.244.1.0-24": "198.18.0.11"}), nil)
	t.Logf("caught up %s after the write to the new etcd", time.Since(start).Round(10*time.Millisecond))
	if w.relists.Load() == 0 {
		t.Error("Relist hook not called")
	}
}

// A listing reads a page of keys per request, all at one revision, and
// hands over every lease and skipped entry: nothing lost at the pages'
// edges.
func TestWatchListsInPages(t *testing.T) {
	t.Parallel()
	c := newCluster(t, hostGW16)
	want := map[string]string{}
	for i := 1; i <= 10; i++ {
		k, ip := fmt.Sprintf("10.244.%d.0-24", i), fmt.Sprintf("198.18.0.%d", 10+i)
		c.put(t, subnetKey(k), `{"PublicIP":"`+ip+`"}`, 0)
		want[k] = ip
	}
	c.put(t, subnetKey("10.244.50.0-24"), `nope`, 0)
	c.put(t, subnetKey("10.244.6.0-24x"), `{"PublicIP":"198.18.0.99"}`, 0)
	registry.SetListPage(c.reg, 3)
	w := startWatch(t, c.reg)
	s := w.next(t)
	if !s.full || !sameLeases(want)(s) || len(s.Skipped) != 2 {
		t.Errorf("listed in pages of 3: full %v, leases %v, skipped %v; want %v and 2 skipped", s.full, publicIPs(s), s.Skipped, want)
	}
	c.put(t, subnetKey("10.244.11.0-24"), `{"PublicIP":"198.18.0.21"}`, 0)
	want["10.244.11.0-24"] = "198.18.0.21"
	if s := w.next(t); !sameLeases(want)(s) {
		t.Errorf("the watch after a paged listing: %v, want %v", publicIPs(s), want)
	}
}
