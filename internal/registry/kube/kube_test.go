package kube_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"

	"github.com/hgw-ebpf/hgw-ebpf/internal/kubeapi"
	"github.com/hgw-ebpf/hgw-ebpf/internal/kubeapi/kubeapitest"
	"github.com/hgw-ebpf/hgw-ebpf/internal/registry"
	"github.com/hgw-ebpf/hgw-ebpf/internal/registry/kube"
	"github.com/hgw-ebpf/hgw-ebpf/internal/testutil"
)

func TestMain(m *testing.M) { os.Exit(kubeapitest.Main(m)) }

const netConf = `{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}`

// flannel's annotation keys under the default prefix.
const (
	annManaged   = "flannel.alpha.coreos.com/kube-subnet-manager"
	annType      = "flannel.alpha.coreos.com/backend-type"
	annData      = "flannel.alpha.coreos.com/backend-data"
	annPublicIP  = "flannel.alpha.coreos.com/public-ip"
	annOverwrite = "flannel.alpha.coreos.com/public-ip-overwrite"
)

// logs records what a Manager logs, for tests that assert on it.
type logs struct {
	mu   sync.Mutex
	recs []string
}

func (l *logs) Enabled(context.Context, slog.Level) bool { return true }
func (l *logs) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *logs) WithGroup(string) slog.Handler            { return l }
func (l *logs) Handle(_ context.Context, r slog.Record) error {
	s := r.Level.String() + " " + r.Message
	r.Attrs(func(a slog.Attr) bool { s += " " + a.String(); return true })
	l.mu.Lock()
	l.recs = append(l.recs, s)
	l.mu.Unlock()
	return nil
}

// find returns the first record containing every part.
func (l *logs) find(parts ...string) (string, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, r := range l.recs {
		ok := true
		for _, p := range parts {
			ok = ok && strings.Contains(r, p)
		}
		if ok {
			return r, true
		}
	}
	return "", false
}

type env struct {
	t     *testing.T
	srv   *kubeapi.Server
	admin corev1client.CoreV1Interface
	names string // prefix of this test's Node names
}

func newEnv(t *testing.T) *env {
	srv := kubeapitest.Shared(t)
	admin, err := corev1client.NewForConfig(srv.RestConfig(kubeapi.Admin))
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, srv: srv, admin: admin, names: strings.ToLower(strings.TrimPrefix(t.Name(), "Test")) + "-"}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		list, err := admin.Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Errorf("list nodes: %v", err)
			return
		}
		for _, n := range list.Items {
			if strings.HasPrefix(n.Name, e.names) {
				admin.Nodes().Delete(ctx, n.Name, metav1.DeleteOptions{})
			}
		}
	})
	return e
}

func (e *env) ctx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	e.t.Cleanup(cancel)
	return ctx
}

// node creates a Node named e.names+name with podCIDRs and annotations.
func (e *env) node(name string, podCIDRs []string, ann map[string]string) *corev1.Node {
	e.t.Helper()
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: e.names + name, Annotations: ann}}
	if len(podCIDRs) > 0 {
		n.Spec.PodCIDR, n.Spec.PodCIDRs = podCIDRs[0], podCIDRs
	}
	got, err := e.admin.Nodes().Create(e.ctx(), n, metav1.CreateOptions{})
	if err != nil {
		e.t.Fatalf("create node %s: %v", n.Name, err)
	}
	return got
}

func (e *env) get(name string) *corev1.Node {
	e.t.Helper()
	n, err := e.admin.Nodes().Get(e.ctx(), e.names+name, metav1.GetOptions{})
	if err != nil {
		e.t.Fatalf("get node %s: %v", name, err)
	}
	return n
}

// patch merge-patches a Node as an operator would (JSON merge patch).
func (e *env) patch(name, patch string, subresources ...string) {
	e.t.Helper()
	if _, err := e.admin.Nodes().Patch(e.ctx(), e.names+name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}, subresources...); err != nil {
		e.t.Fatalf("patch node %s with %s: %v", name, patch, err)
	}
}

func (e *env) delete(name string) {
	e.t.Helper()
	if err := e.admin.Nodes().Delete(e.ctx(), e.names+name, metav1.DeleteOptions{}); err != nil {
		e.t.Fatalf("delete node %s: %v", name, err)
	}
}

// nodeAcquire makes Node name (as node does), and its Manager (as
// manager does, as Admin) acquires its lease with publicIP.
func (e *env) nodeAcquire(name string, podCIDRs []string, ann map[string]string) (*kube.Manager, registry.Lease, error) {
	e.t.Helper()
	e.node(name, podCIDRs, ann)
	m, _ := e.manager(name, "", kube.Options{})
	l, err := m.Acquire(e.ctx(), registry.AcquireOptions{PublicIP: publicIP})
	return m, l, err
}

// manager is a Manager of node name (as user, Admin if empty) with the
// network config read.
func (e *env) manager(name, user string, o kube.Options) (*kube.Manager, *logs) {
	e.t.Helper()
	if user == "" {
		user = kubeapi.Admin
	}
	if o.NetConfPath == "" {
		o.NetConfPath = filepath.Join(e.t.TempDir(), "net-conf.json")
		if err := os.WriteFile(o.NetConfPath, []byte(netConf), 0o644); err != nil {
			e.t.Fatal(err)
		}
	}
	o.NodeName, o.Rest = e.names+name, e.srv.RestConfig(user)
	lg := &logs{}
	m, err := kube.New(e.ctx(), o, slog.New(lg))
	if err != nil {
		e.t.Fatalf("kube.New: %v", err)
	}
	e.t.Cleanup(m.Close)
	if _, err := m.Config(e.ctx()); err != nil {
		e.t.Fatalf("Config: %v", err)
	}
	return m, lg
}

// flannelAnnotations are what flanneld's host-gw writes for publicIP.
func flannelAnnotations(publicIP string) map[string]string {
	return map[string]string{annManaged: "true", annType: "host-gw", annData: "null", annPublicIP: publicIP}
}

func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

var publicIP = netip.MustParseAddr("198.18.0.11")

// A node without a podCIDR is waited for, and the wait says why; once
// the podCIDR is set the lease is the podCIDR, published with flanneld's
// annotations, byte for byte.
func TestAcquireWaitsForPodCIDR(t *testing.T) {
	e := newEnv(t)
	e.node("a", nil, nil)
	m, lg := e.manager("a", "", kube.Options{})
	type result struct {
		l   registry.Lease
		err error
	}
	done := make(chan result, 1)
	go func() {
		l, err := m.Acquire(e.ctx(), registry.AcquireOptions{PublicIP: publicIP})
		done <- result{l, err}
	}()
	eventually(t, 10*time.Second, "the wait for the podCIDR is logged", func() bool {
		_, ok := lg.find("waiting for the node's subnet", "no IPv4 podCIDR yet", "node="+e.names+"a")
		return ok
	})
	select {
	case r := <-done:
		t.Fatalf("Acquire returned before the podCIDR was set: %+v %v", r.l, r.err)
	case <-time.After(500 * time.Millisecond):
	}
	e.patch("a", `{"spec":{"podCIDR":"10.244.3.0/24","podCIDRs":["10.244.3.0/24"]}}`)
	r := testutil.Recv(t, done, 10*time.Second, "answer from Acquire after the podCIDR was set")
	if r.err != nil {
		t.Fatalf("Acquire: %v", r.err)
	}
	if r.l.Subnet != netip.MustParsePrefix("10.244.3.0/24") || r.l.PublicIP != publicIP || r.l.Key != "node/"+e.names+"a" {
		t.Errorf("lease %+v: want 10.244.3.0/24 via %s, key node/%sa", r.l, publicIP, e.names)
	}
	got := e.get("a").Annotations
	for k, v := range flannelAnnotations(publicIP.String()) {
		if got[k] != v {
			t.Errorf("annotation %s = %q, want %q (all: %v)", k, got[k], v, got)
		}
	}
}

// A Node that does not exist yet is waited for as well.
func TestAcquireWaitsForNode(t *testing.T) {
	e := newEnv(t)
	m, lg := e.manager("late", "", kube.Options{})
	done := make(chan error, 1)
	go func() {
		_, err := m.Acquire(e.ctx(), registry.AcquireOptions{PublicIP: publicIP})
		done <- err
	}()
	eventually(t, 10*time.Second, "the wait for the Node is logged", func() bool {
		_, ok := lg.find("waiting for the node's subnet", "Node object does not exist")
		return ok
	})
	e.node("late", []string{"10.244.4.0/24"}, nil)
	if err := testutil.Recv(t, done, 10*time.Second, "answer from Acquire after the Node appeared"); err != nil {
		t.Fatal(err)
	}
	if got := e.get("late").Annotations[annManaged]; got != "true" {
		t.Errorf("%s = %q after Acquire", annManaged, got)
	}
}

// A podCIDR outside the network, or a public-ip-overwrite that is not an
// IPv4 address, is an error naming it; the lease is not published.
func TestAcquireRefuses(t *testing.T) {
	e := newEnv(t)
	_, _, err := e.nodeAcquire("outside", []string{"10.99.0.0/24"}, nil)
	if err == nil || !strings.Contains(err.Error(), "10.99.0.0/24 is outside the network 10.244.0.0/16") {
		t.Errorf("podCIDR outside the network: %v", err)
	}
	_, _, err = e.nodeAcquire("badip", []string{"10.244.5.0/24"}, map[string]string{annOverwrite: "not-an-ip"})
	if err == nil || !strings.Contains(err.Error(), annOverwrite) {
		t.Errorf("bad overwrite: %v", err)
	}
	for _, n := range []string{"outside", "badip"} {
		if got := e.get(n).Annotations[annManaged]; got != "" {
			t.Errorf("node %s annotated %s=%q after a refused Acquire", n, annManaged, got)
		}
	}
}

// public-ip-overwrite is published as the public IP and is the lease's.
func TestAcquirePublicIPOverwrite(t *testing.T) {
	e := newEnv(t)
	_, l, err := e.nodeAcquire("ov", []string{"10.244.6.0/24"}, map[string]string{annOverwrite: "198.18.0.99"})
	if err != nil {
		t.Fatal(err)
	}
	if l.PublicIP != netip.MustParseAddr("198.18.0.99") {
		t.Errorf("lease public IP %s, want the overwrite's 198.18.0.99", l.PublicIP)
	}
	if got := e.get("ov").Annotations[annPublicIP]; got != "198.18.0.99" {
		t.Errorf("%s = %q, want 198.18.0.99", annPublicIP, got)
	}
}

// watcher collects Watch's changes (a copy of the table then, the keys
// changed) and hook calls.
type watcher struct {
	mu      sync.Mutex
	snaps   []registry.Snapshot
	keys    [][]string // each change's keys, sorted; nil for a Full one
	events  int
	relists int
}

func (w *watcher) last() (registry.Snapshot, int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.snaps) == 0 {
		return registry.Snapshot{}, 0
	}
	return w.snaps[len(w.snaps)-1], len(w.snaps)
}

func watch(t *testing.T, ctx context.Context, m *kube.Manager) *watcher {
	w := &watcher{}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- m.Watch(ctx, func(c registry.Change) {
			w.mu.Lock()
			if c.Full != (len(w.snaps) == 0) || c.Full != (len(c.Keys) == 0) {
				t.Errorf("change %d: Full %v with keys %q: want Full first, keys after", len(w.snaps), c.Full, c.Keys)
			}
			w.snaps = append(w.snaps, c.Leases.Snapshot())
			w.keys = append(w.keys, slices.Sorted(slices.Values(c.Keys)))
			w.mu.Unlock()
		}, registry.WatchHooks{
			Event:  func() { w.mu.Lock(); w.events++; w.mu.Unlock() },
			Relist: func() { w.mu.Lock(); w.relists++; w.mu.Unlock() },
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Watch: %v", err)
		}
	})
	return w
}

// leaseOf finds the lease of node name in s.
func leaseOf(s registry.Snapshot, key string) (registry.Lease, bool) {
	for _, l := range s.Leases {
		if l.Key == key {
			return l, true
		}
	}
	return registry.Lease{}, false
}

func skipOf(s registry.Snapshot, key string) (registry.Skipped, bool) {
	for _, sk := range s.Skipped {
		if sk.Key == key {
			return sk, true
		}
	}
	return registry.Skipped{}, false
}

// Watch gives every Node with flanneld's annotations as a lease, skips
// those it cannot route with the reason, ignores Nodes without the
// annotations; a Node added or deleted is in the next snapshot within a
// second, and a change that touches no lease (status, other annotations)
// makes none.
func TestWatch(t *testing.T) {
	e := newEnv(t)
	e.node("self", []string{"10.244.1.0/24"}, flannelAnnotations("198.18.0.11"))
	e.node("peer", []string{"10.244.2.0/24"}, flannelAnnotations("198.18.0.12"))
	e.node("dual", []string{"10.244.8.0/24", "fd00:10:244:8::/64"}, flannelAnnotations("198.18.0.18"))
	e.node("bare", []string{"10.244.9.0/24"}, nil)
	e.node("badip", []string{"10.244.10.0/24"}, flannelAnnotations("fd00::1"))
	e.node("outside", []string{"10.99.0.0/24"}, flannelAnnotations("198.18.0.13"))
	vx := flannelAnnotations("198.18.0.14")
	vx[annType] = "vxlan"
	e.node("vxlan", []string{"10.244.11.0/24"}, vx)
	e.node("nocidr", nil, flannelAnnotations("198.18.0.15"))
	m, _ := e.manager("self", "", kube.Options{})
	w := watch(t, e.ctx(), m)
	eventually(t, 10*time.Second, "first snapshot", func() bool { _, n := w.last(); return n > 0 })

	s, _ := w.last()
	k := func(n string) string { return "node/" + e.names + n }
	for _, tc := range []struct {
		node, subnet, via string
	}{{"self", "10.244.1.0/24", "198.18.0.11"}, {"peer", "10.244.2.0/24", "198.18.0.12"}, {"dual", "10.244.8.0/24", "198.18.0.18"}} {
		l, ok := leaseOf(s, k(tc.node))
		if !ok || l.Subnet.String() != tc.subnet || l.PublicIP.String() != tc.via || l.Attrs.BackendType != "host-gw" {
			t.Errorf("lease of %s: %+v (found %v), want %s via %s", tc.node, l, ok, tc.subnet, tc.via)
		}
	}
	if _, ok := leaseOf(s, k("bare")); ok {
		t.Error("a Node without flannel's annotations is a lease")
	}
	if _, ok := skipOf(s, k("bare")); ok {
		t.Error("a Node without flannel's annotations is counted as skipped")
	}
	for node, reason := range map[string]string{"badip": "bad_public_ip", "outside": "outside_network", "vxlan": "backend", "nocidr": kube.ReasonBadPodCIDR} {
		if sk, ok := skipOf(s, k(node)); !ok || sk.Reason != reason {
			t.Errorf("node %s: skipped %+v (found %v), want reason %s", node, sk, ok, reason)
		}
	}
	for i := 1; i < len(s.Leases); i++ {
		if s.Leases[i-1].Key >= s.Leases[i].Key {
			t.Errorf("leases out of key order: %s, %s", s.Leases[i-1].Key, s.Leases[i].Key)
		}
	}

	// A Node added: in a snapshot within a second.
	_, before := w.last()
	start := time.Now()
	e.node("new", []string{"10.244.12.0/24"}, flannelAnnotations("198.18.0.16"))
	eventually(t, time.Second, "the new Node's lease", func() bool { s, _ := w.last(); _, ok := leaseOf(s, k("new")); return ok })
	t.Logf("new Node's lease after %s", time.Since(start))
	_, after := w.last()
	if after <= before {
		t.Error("no new snapshot for a new Node")
	}
	w.mu.Lock()
	if got := w.keys[len(w.keys)-1]; !slices.Equal(got, []string{k("new")}) {
		t.Errorf("the new Node's change names keys %q, want only its own", got)
	}
	w.mu.Unlock()

	// Changes that touch no lease make no snapshot.
	w.mu.Lock()
	n0, ev0 := len(w.snaps), w.events
	w.mu.Unlock()
	e.patch("peer", `{"metadata":{"labels":{"x":"y"},"annotations":{"other.example.com/z":"1"}}}`)
	e.patch("peer", `{"status":{"conditions":[{"type":"Ready","status":"True","reason":"test","lastHeartbeatTime":"2026-01-01T00:00:00Z","lastTransitionTime":"2026-01-01T00:00:00Z"}]}}`, "status")
	e.patch("bare", `{"metadata":{"labels":{"x":"y"}}}`)
	time.Sleep(500 * time.Millisecond)
	w.mu.Lock()
	n1, ev1 := len(w.snaps), w.events
	w.mu.Unlock()
	if n1 != n0 || ev1 != ev0 {
		t.Errorf("changes touching no lease made %d snapshots and %d events", n1-n0, ev1-ev0)
	}

	// A Node that gets the annotations becomes a lease; one deleted goes.
	e.patch("bare", fmt.Sprintf(`{"metadata":{"annotations":{%q:"true",%q:"host-gw",%q:"null",%q:"198.18.0.19"}}}`, annManaged, annType, annData, annPublicIP))
	eventually(t, time.Second, "an annotated Node's lease", func() bool { s, _ := w.last(); _, ok := leaseOf(s, k("bare")); return ok })
	start = time.Now()
	e.delete("peer")
	eventually(t, time.Second, "a deleted Node's lease gone", func() bool { s, _ := w.last(); _, ok := leaseOf(s, k("peer")); return !ok })
	t.Logf("deleted Node's lease gone after %s", time.Since(start))
	// A fixed Node moves from skipped to leases.
	e.patch("badip", fmt.Sprintf(`{"metadata":{"annotations":{%q:"198.18.0.20"}}}`, annPublicIP))
	eventually(t, time.Second, "a fixed Node's lease", func() bool {
		s, _ := w.last()
		_, ok := leaseOf(s, k("badip"))
		_, sk := skipOf(s, k("badip"))
		return ok && !sk
	})
	w.mu.Lock()
	if w.events < 4 {
		t.Errorf("%d events counted for 4 lease changes", w.events)
	}
	w.mu.Unlock()
}

// While the API server is down the last snapshot stands; once it is back
// the informer lists again (counted) and changes flow.
func TestWatchAcrossOutage(t *testing.T) {
	e := newEnv(t)
	e.node("self", []string{"10.244.1.0/24"}, flannelAnnotations("198.18.0.11"))
	e.node("peer", []string{"10.244.2.0/24"}, flannelAnnotations("198.18.0.12"))
	m, _ := e.manager("self", "", kube.Options{})
	w := watch(t, e.ctx(), m)
	eventually(t, 10*time.Second, "first snapshot", func() bool { _, n := w.last(); return n > 0 })
	_, n0 := w.last()

	e.srv.Stop()
	time.Sleep(2 * time.Second)
	if err := e.srv.Start(e.ctx()); err != nil {
		t.Fatalf("restart the API server: %v", err)
	}
	if s, _ := w.last(); len(s.Leases) < 2 {
		t.Errorf("snapshot across the outage lost leases: %+v", s.Leases)
	}
	if _, n := w.last(); n != n0 {
		t.Errorf("%d snapshots across an outage that changed nothing", n-n0)
	}
	e.node("after", []string{"10.244.13.0/24"}, flannelAnnotations("198.18.0.17"))
	eventually(t, 30*time.Second, "a Node added after the outage", func() bool {
		s, _ := w.last()
		_, ok := leaseOf(s, "node/"+e.names+"after")
		return ok
	})
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.relists == 0 {
		t.Error("the broken watch was not counted as a relist")
	}
}

// KeepAlive puts the lease back when the Node loses it: annotations
// removed by hand, the Node deleted and registered again; a new
// public-ip-overwrite is published and reported.
func TestKeepAlive(t *testing.T) {
	e := newEnv(t)
	e.node("ka", []string{"10.244.20.0/24"}, nil)
	m, lg := e.manager("ka", "", kube.Options{})
	opts := registry.AcquireOptions{PublicIP: publicIP}
	l, err := m.Acquire(e.ctx(), opts)
	if err != nil {
		t.Fatal(err)
	}
	changes := make(chan registry.Lease, 8)
	ctx, cancel := context.WithCancel(e.ctx())
	done := make(chan error, 1)
	go func() { done <- m.KeepAlive(ctx, l, opts, func(l registry.Lease) { changes <- l }) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("KeepAlive: %v", err)
		}
	}()
	annotated := func() bool { return e.get("ka").Annotations[annManaged] == "true" }

	e.patch("ka", fmt.Sprintf(`{"metadata":{"annotations":{%q:null}}}`, annManaged))
	eventually(t, 5*time.Second, "annotation put back", annotated)
	if got := <-changes; got.Subnet != l.Subnet || got.PublicIP != publicIP {
		t.Errorf("re-acquired %+v", got)
	}

	e.delete("ka")
	eventually(t, 5*time.Second, "the deletion seen", func() bool {
		_, ok := lg.find("own lease lost", "Node deleted")
		return ok
	})
	e.node("ka", []string{"10.244.20.0/24"}, nil)
	eventually(t, 5*time.Second, "a re-registered Node annotated", annotated)
	if got := <-changes; got.Subnet != l.Subnet {
		t.Errorf("re-acquired %+v after the Node came back", got)
	}

	// Each loss is reported once: after a moment for a spurious re-acquire
	// to show, nothing else is pending.
	time.Sleep(300 * time.Millisecond)
	for len(changes) > 0 {
		t.Errorf("extra lease change reported: %+v", <-changes)
	}
	e.patch("ka", fmt.Sprintf(`{"metadata":{"annotations":{%q:"198.18.0.77"}}}`, annOverwrite))
	if got := testutil.Recv(t, changes, 5*time.Second, "new lease after public-ip-overwrite was set"); got.PublicIP != netip.MustParseAddr("198.18.0.77") {
		t.Errorf("lease after the overwrite: %+v", got)
	}
	if got := e.get("ka").Annotations[annPublicIP]; got != "198.18.0.77" {
		t.Errorf("%s = %q after the overwrite", annPublicIP, got)
	}
}

// Release takes the lease annotations off the Node only if it is ours;
// a Node without them, or gone, has nothing to release.
func TestRelease(t *testing.T) {
	e := newEnv(t)
	m, l, err := e.nodeAcquire("rel", []string{"10.244.21.0/24"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Release(e.ctx(), l.Subnet, netip.MustParseAddr("198.18.0.99")); err == nil {
		t.Error("released a lease naming another public IP")
	}
	if err := m.Release(e.ctx(), netip.MustParsePrefix("10.244.22.0/24"), publicIP); err == nil {
		t.Error("released a lease of another subnet")
	}
	if err := m.Release(e.ctx(), l.Subnet, publicIP); err != nil {
		t.Fatal(err)
	}
	for k, v := range e.get("rel").Annotations {
		if strings.HasPrefix(k, "flannel.alpha.coreos.com/") {
			t.Errorf("annotation %s=%q left after Release", k, v)
		}
	}
	if err := m.Release(e.ctx(), l.Subnet, publicIP); err != nil {
		t.Errorf("second Release: %v", err)
	}
	e.delete("rel")
	if err := m.Release(e.ctx(), l.Subnet, publicIP); err != nil {
		t.Errorf("Release of a deleted Node: %v", err)
	}
}

// ReportReady sets NetworkUnavailable to False, as flanneld does, unless
// turned off.
func TestReportReady(t *testing.T) {
	e := newEnv(t)
	e.node("rr", []string{"10.244.23.0/24"}, nil)
	e.node("off", []string{"10.244.24.0/24"}, nil)
	m, _ := e.manager("rr", "", kube.Options{SetNodeNetworkUnavailable: true})
	if err := m.ReportReady(e.ctx()); err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, c := range e.get("rr").Status.Conditions {
		if c.Type == corev1.NodeNetworkUnavailable {
			found = true
			if c.Status != corev1.ConditionFalse {
				t.Errorf("NetworkUnavailable = %s", c.Status)
			}
		}
	}
	if !found {
		t.Error("no NetworkUnavailable condition")
	}
	m, _ = e.manager("off", "", kube.Options{})
	if err := m.ReportReady(e.ctx()); err != nil {
		t.Fatal(err)
	}
	if c := e.get("off").Status.Conditions; len(c) != 0 {
		t.Errorf("conditions set with SetNodeNetworkUnavailable off: %+v", c)
	}
}

// Without NODE_NAME the node is the one the agent's pod runs on
// (POD_NAME, POD_NAMESPACE), as flanneld finds it; without either it is
// an error that says what to set.
func TestNodeNameFromPod(t *testing.T) {
	e := newEnv(t)
	ns := e.names + "ns"
	if _, err := e.admin.Namespaces().Create(e.ctx(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.admin.Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{}) })
	if _, err := e.admin.ServiceAccounts(ns).Create(e.ctx(), &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "agent"}, Spec: corev1.PodSpec{
		NodeName:   "worker-7",
		Containers: []corev1.Container{{Name: "agent", Image: "hgw-ebpf"}},
	}}
	if _, err := e.admin.Pods(ns).Create(e.ctx(), pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	rc := e.srv.RestConfig(kubeapi.Admin)
	m, err := kube.New(e.ctx(), kube.Options{PodName: "agent", PodNamespace: ns, Rest: rc}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if m.NodeName() != "worker-7" {
		t.Errorf("node name %q, want the pod's worker-7", m.NodeName())
	}
	if _, err := kube.New(e.ctx(), kube.Options{Rest: rc}, slog.New(slog.DiscardHandler)); err == nil || !strings.Contains(err.Error(), "NODE_NAME") {
		t.Errorf("no node name: %v", err)
	}
}

// dualConf is a dual-stack net-conf.json, flanneld's fields.
const dualConf = `{"EnableIPv6":true,"Network":"10.244.0.0/16","IPv6Network":"fd00:10:244::/56","Backend":{"Type":"host-gw"}}`

func (e *env) netConf(conf string) string {
	e.t.Helper()
	path := filepath.Join(e.t.TempDir(), "net-conf.json")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		e.t.Fatal(err)
	}
	return path
}

// With EnableIPv6 a lease carries both families the way the etcd
// registry's do: the Node's IPv6 podCIDR, published with the public IPv6
// in flanneld's annotations (public-ipv6, backend-v6-data), both read back
// from the peers; a peer without them is an IPv4-only lease, one with a
// bad address or an IPv6 podCIDR outside the IPv6 network is skipped. The
// agent needs a public IPv6 then; an IPv6-only network is refused, naming
// EnableIPv4.
func TestDualStack(t *testing.T) {
	e := newEnv(t)
	e.node("self", []string{"10.244.40.0/24", "fd00:10:244:40::/64"}, nil)
	peer := flannelAnnotations("198.18.0.41")
	peer["flannel.alpha.coreos.com/public-ipv6"] = "fd00:198:18::41"
	peer["flannel.alpha.coreos.com/backend-v6-data"] = "null"
	e.node("peer", []string{"10.244.41.0/24", "fd00:10:244:41::/64"}, peer)
	e.node("v4only", []string{"10.244.42.0/24"}, flannelAnnotations("198.18.0.42"))
	bad := flannelAnnotations("198.18.0.43")
	bad["flannel.alpha.coreos.com/public-ipv6"] = "198.18.0.43"
	e.node("badip6", []string{"10.244.43.0/24", "fd00:10:244:43::/64"}, bad)
	out := flannelAnnotations("198.18.0.44")
	out["flannel.alpha.coreos.com/public-ipv6"] = "fd00:198:18::44"
	e.node("outside6", []string{"10.244.44.0/24", "fd00:99::/64"}, out)

	m, _ := e.manager("self", "", kube.Options{NetConfPath: e.netConf(dualConf)})
	if _, err := m.Acquire(e.ctx(), registry.AcquireOptions{PublicIP: publicIP}); err == nil || !strings.Contains(err.Error(), "IPv6") {
		t.Errorf("Acquire without a public IPv6 in a dual-stack network: %v", err)
	}
	ip6 := netip.MustParseAddr("fd00:198:18::40")
	l, err := m.Acquire(e.ctx(), registry.AcquireOptions{PublicIP: publicIP, PublicIPv6: ip6})
	if err != nil {
		t.Fatal(err)
	}
	if l.IPv6Subnet != netip.MustParsePrefix("fd00:10:244:40::/64") || l.PublicIPv6 != ip6 || l.Attrs.PublicIPv6 != ip6.String() {
		t.Errorf("lease %+v: want the IPv6 podCIDR via %s", l, ip6)
	}
	got := e.get("self").Annotations
	want := flannelAnnotations(publicIP.String())
	want["flannel.alpha.coreos.com/public-ipv6"], want["flannel.alpha.coreos.com/backend-v6-data"] = ip6.String(), "null"
	for k, v := range want {
		if got[k] != v {
			t.Errorf("annotation %s = %q, want %q", k, got[k], v)
		}
	}

	w := watch(t, e.ctx(), m)
	k := func(n string) string { return "node/" + e.names + n }
	eventually(t, 10*time.Second, "a snapshot with the peer", func() bool { s, _ := w.last(); _, ok := leaseOf(s, k("peer")); return ok })
	s, _ := w.last()
	if p, _ := leaseOf(s, k("peer")); p.IPv6Subnet != netip.MustParsePrefix("fd00:10:244:41::/64") || p.PublicIPv6 != netip.MustParseAddr("fd00:198:18::41") {
		t.Errorf("dual-stack peer %+v", p)
	}
	if p, ok := leaseOf(s, k("v4only")); !ok || p.IPv6Subnet.IsValid() || p.PublicIPv6.IsValid() {
		t.Errorf("IPv4-only peer %+v (found %v)", p, ok)
	}
	for node, reason := range map[string]string{"badip6": "bad_public_ip", "outside6": "outside_network"} {
		if sk, ok := skipOf(s, k(node)); !ok || sk.Reason != reason {
			t.Errorf("node %s: skipped %+v (found %v), want %s", node, sk, ok, reason)
		}
	}
	// Without EnableIPv6 the IPv6 half is nobody's business.
	m4, _ := e.manager("self", "", kube.Options{})
	w4 := watch(t, e.ctx(), m4)
	eventually(t, 10*time.Second, "an IPv4-only snapshot", func() bool { _, n := w4.last(); return n > 0 })
	s4, _ := w4.last()
	if p, ok := leaseOf(s4, k("outside6")); !ok || p.IPv6Subnet.IsValid() {
		t.Errorf("IPv4-only network: node outside6 %+v (found %v), want its IPv4 lease alone", p, ok)
	}

	m6, err := kube.New(e.ctx(), kube.Options{NodeName: "x", Rest: e.srv.RestConfig(kubeapi.Admin),
		NetConfPath: e.netConf(`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"host-gw"}}`)}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m6.Config(e.ctx()); err == nil || !strings.Contains(err.Error(), "EnableIPv4") || strings.Contains(err.Error(), "etcd") {
		t.Errorf("IPv6-only network: %v", err)
	}
}
