package reconcile_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/hgw-ebpf/hgw-ebpf/pkg/datapath"
	"github.com/hgw-ebpf/hgw-ebpf/pkg/reconcile"
	"github.com/hgw-ebpf/hgw-ebpf/pkg/testutil"
)

const (
	bpffsRoot = "/sys/fs/bpf"
	pinPrefix = "hgwt-rc-"
	// A pin root this old belongs to a crashed run, not a concurrent one.
	stalePins = 30 * time.Minute

	protoBoot   = netlink.RouteProtocol(unix.RTPROT_BOOT) // what flanneld's routes carry
	protoStatic = netlink.RouteProtocol(unix.RTPROT_STATIC)

	resync = 500 * time.Millisecond
)

func peer(subnet, nexthop string) reconcile.Peer {
	p := netip.MustParsePrefix(subnet)
	return reconcile.Peer{Subnet: p, NextHop: netip.MustParseAddr(nexthop), Key: subnetsDir + p.String()}
}

// threePeers are nodes .12, .13, .14 on the underlay 198.18.0.0/24.
func threePeers() []reconcile.Peer {
	return []reconcile.Peer{
		peer("10.244.2.0/24", "198.18.0.12"),
		peer("10.244.3.0/24", "198.18.0.13"),
		peer("10.244.4.0/24", "198.18.0.14"),
	}
}

// env is one node: a fresh netns with an eth0 198.18.0.11/24 and a
// real, empty BPF routes map of its own.
type env struct {
	ns      netns.NsHandle
	h       *netlink.Handle
	link    netlink.Link
	ifindex int
	rm      *datapath.RouteMap
}

func newEnv(t *testing.T) *env {
	t.Helper()
	testutil.RequireRoot(t)
	_, ns := testutil.NetNS(t, "rc")
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatalf("netlink handle in test netns: %v", err)
	}
	t.Cleanup(h.Close)
	addUnderlay(t, h)
	link, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatalf("find eth0: %v", err)
	}
	addr, err := netlink.ParseAddr("198.18.0.11/24")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.AddrAdd(link, addr); err != nil {
		t.Fatalf("address eth0: %v", err)
	}
	if err := h.LinkSetUp(link); err != nil {
		t.Fatalf("set eth0 up: %v", err)
	}
	return &env{ns: ns, h: h, link: link, ifindex: link.Attrs().Index, rm: loadRouteMap(t)}
}

// addUnderlay adds eth0 as a dummy device, or, on kernels built without
// the dummy driver, as a veth whose peer is up: for routing the same.
func addUnderlay(t *testing.T, h *netlink.Handle) {
	t.Helper()
	err := h.LinkAdd(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}})
	if !errors.Is(err, unix.EOPNOTSUPP) {
		if err != nil {
			t.Fatalf("add dummy eth0: %v", err)
		}
		return
	}
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth0-peer"}); err != nil {
		t.Fatalf("add veth eth0 (no dummy driver): %v", err)
	}
	peer, err := h.LinkByName("eth0-peer")
	if err != nil {
		t.Fatalf("find eth0-peer: %v", err)
	}
	if err := h.LinkSetUp(peer); err != nil {
		t.Fatalf("set eth0-peer up: %v", err)
	}
}

// loadRouteMap loads the datapath under a pin root of this test's own and
// returns its routes map; the pins go in t.Cleanup.
func loadRouteMap(t *testing.T) *datapath.RouteMap {
	t.Helper()
	removeStalePins(t)
	root := filepath.Join(bpffsRoot, pinPrefix+testutil.RandHex(t, 4))
	dp, err := datapath.Load(datapath.Options{PinRoot: root})
	if err != nil {
		t.Fatalf("load datapath at %s: %v", root, err)
	}
	t.Cleanup(func() {
		if err := dp.Close(); err != nil {
			t.Errorf("close datapath: %v", err)
		}
		if err := datapath.Cleanup(root); err != nil {
			t.Errorf("remove pins %s: %v", root, err)
		}
	})
	return dp.Routes()
}

func removeStalePins(t *testing.T) {
	t.Helper()
	roots, _ := filepath.Glob(filepath.Join(bpffsRoot, pinPrefix+"*"))
	for _, root := range roots {
		if age, err := statAge(root); err != nil || age < stalePins {
			continue
		}
		if err := datapath.Cleanup(root); err != nil {
			t.Logf("remove stale pins %s: %v", root, err)
			continue
		}
		t.Logf("removed stale pins %s from an earlier run", root)
	}
}

func statAge(path string) (time.Duration, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, err
	}
	return time.Since(time.Unix(st.Mtim.Unix())), nil
}

func (e *env) reconciler(t *testing.T, rm reconcile.RouteMap, opts reconcile.Options) (*reconcile.Reconciler, *testLog) {
	t.Helper()
	ns := e.ns
	logs := &testLog{out: t.Output()}
	t.Cleanup(logs.close)
	opts.Link, opts.RouteMap, opts.Handle, opts.Netns, opts.ResyncInterval = e.link, rm, e.h, &ns, resync
	opts.Log = slog.New(slog.NewTextHandler(logs, nil))
	r, err := reconcile.New(opts)
	if err != nil {
		t.Fatalf("new reconciler: %v", err)
	}
	return r, logs
}

// testLog passes a reconciler's log to the test output and keeps it for
// assertions. Writes after the test are dropped: netlink's goroutines can
// outlive Run, and the test output must not be written after the test.
type testLog struct {
	mu     sync.Mutex
	out    io.Writer
	buf    strings.Builder
	closed bool
}

func (l *testLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.closed {
		l.buf.Write(p)
		l.out.Write(p)
	}
	return len(p), nil
}

func (l *testLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func (l *testLog) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
}

// kroute is one IPv4 route of the main table, as the kernel reports it.
type kroute struct {
	subnet   netip.Prefix
	via      netip.Addr
	ifindex  int
	protocol netlink.RouteProtocol
}

func (k kroute) String() string {
	return fmt.Sprintf("%s via %s dev %d proto %d", k.subnet, k.via, k.ifindex, k.protocol)
}

// kernel lists every main-table IPv4 route, read independently of the
// reconciler's own protocol-filtered listing.
func (e *env) kernel(t *testing.T) []kroute {
	t.Helper()
	var (
		routes []netlink.Route
		err    error
	)
	for attempt := 0; attempt < 5; attempt++ {
		routes, err = e.h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		t.Fatalf("list routes: %v", err)
	}
	var out []kroute
	for _, rt := range routes {
		if rt.Dst == nil {
			continue
		}
		ones, _ := rt.Dst.Mask.Size()
		dst, _ := netip.AddrFromSlice(rt.Dst.IP.To4())
		via, _ := netip.AddrFromSlice(rt.Gw.To4())
		out = append(out, kroute{subnet: netip.PrefixFrom(dst, ones), via: via, ifindex: rt.LinkIndex, protocol: rt.Protocol})
	}
	return out
}

// ours is the kernel routes tagged with our protocol, in the map's terms.
func (e *env) ours(t *testing.T) map[netip.Prefix]datapath.Route {
	t.Helper()
	out := map[netip.Prefix]datapath.Route{}
	for _, k := range e.kernel(t) {
		if k.protocol != reconcile.RouteProtocol {
			continue
		}
		if _, dup := out[k.subnet]; dup {
			t.Errorf("two routes of ours for %s", k.subnet)
		}
		out[k.subnet] = datapath.Route{Subnet: k.subnet, NextHop: k.via, Ifindex: uint32(k.ifindex)}
	}
	return out
}

// routesTo lists every main-table route for subnet, whoever owns it.
func (e *env) routesTo(t *testing.T, subnet string) []kroute {
	t.Helper()
	p := netip.MustParsePrefix(subnet)
	var out []kroute
	for _, k := range e.kernel(t) {
		if k.subnet == p {
			out = append(out, k)
		}
	}
	return out
}

func (e *env) entries(t *testing.T) map[netip.Prefix]datapath.Route {
	t.Helper()
	list, err := e.rm.List()
	if err != nil {
		t.Fatalf("list routes map: %v", err)
	}
	out := map[netip.Prefix]datapath.Route{}
	for _, r := range list {
		out[r.Subnet] = r
	}
	return out
}

func (e *env) want(peers []reconcile.Peer) map[netip.Prefix]datapath.Route {
	out := map[netip.Prefix]datapath.Route{}
	for _, p := range peers {
		out[p.Subnet] = datapath.Route{Subnet: p.Subnet, NextHop: p.NextHop, Ifindex: uint32(e.ifindex)}
	}
	return out
}

func (e *env) converged(t *testing.T, peers []reconcile.Peer) bool {
	t.Helper()
	want := e.want(peers)
	return reflect.DeepEqual(e.ours(t), want) && reflect.DeepEqual(e.entries(t), want)
}

// assertConverged checks that routes of ours and map entries are exactly
// `<subnet> via <peer> dev eth0 proto 104`, one per peer.
func (e *env) assertConverged(t *testing.T, peers []reconcile.Peer) {
	t.Helper()
	want := e.want(peers)
	if got := e.ours(t); !reflect.DeepEqual(got, want) {
		t.Errorf("kernel routes of ours:\n got %v\nwant %v", got, want)
	}
	if got := e.entries(t); !reflect.DeepEqual(got, want) {
		t.Errorf("routes map:\n got %v\nwant %v", got, want)
	}
}

func (e *env) addRoute(t *testing.T, subnet, via string, proto netlink.RouteProtocol) {
	t.Helper()
	p := netip.MustParsePrefix(subnet)
	rt := &netlink.Route{
		LinkIndex: e.ifindex, Dst: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)},
		Gw: net.ParseIP(via).To4(), Protocol: proto, Table: unix.RT_TABLE_MAIN,
	}
	if err := e.h.RouteAdd(rt); err != nil {
		t.Fatalf("add route %s via %s proto %d: %v", subnet, via, proto, err)
	}
}

func (e *env) delRoute(t *testing.T, subnet string) {
	t.Helper()
	p := netip.MustParsePrefix(subnet)
	rt := &netlink.Route{LinkIndex: e.ifindex, Dst: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)}, Table: unix.RT_TABLE_MAIN}
	if err := e.h.RouteDel(rt); err != nil {
		t.Fatalf("delete route %s: %v", subnet, err)
	}
}

func (e *env) putEntry(t *testing.T, subnet, via string, ifindex int) {
	t.Helper()
	if err := e.rm.Put(datapath.Route{Subnet: netip.MustParsePrefix(subnet), NextHop: netip.MustParseAddr(via), Ifindex: uint32(ifindex)}); err != nil {
		t.Fatal(err)
	}
}

// recordingMap wraps the real map, records every write and can fail the
// Put of one subnet.
type recordingMap struct {
	reconcile.RouteMap
	failPut netip.Prefix

	mu  sync.Mutex
	ops []string
}

func (m *recordingMap) Put(r datapath.Route) error {
	m.record("put " + r.Subnet.String())
	if r.Subnet == m.failPut {
		return fmt.Errorf("put %s: injected failure", r.Subnet)
	}
	return m.RouteMap.Put(r)
}

func (m *recordingMap) Delete(p netip.Prefix) error {
	m.record("delete " + p.String())
	return m.RouteMap.Delete(p)
}

func (m *recordingMap) record(op string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.ops = append(m.ops, op)
}

func (m *recordingMap) take() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	ops := m.ops
	m.ops = nil
	return ops
}

func count(ops []string, verb string) int {
	n := 0
	for _, op := range ops {
		if strings.HasPrefix(op, verb+" ") {
			n++
		}
	}
	return n
}

func assertCounts(t *testing.T, res reconcile.Result, added, changed, removed, kernel, entries int) {
	t.Helper()
	if res.Added != added || res.Changed != changed || res.Removed != removed || res.KernelRoutes != kernel || res.MapEntries != entries {
		t.Errorf("Result = added %d changed %d removed %d kernel %d map %d; want %d %d %d %d %d (errors %v)",
			res.Added, res.Changed, res.Removed, res.KernelRoutes, res.MapEntries, added, changed, removed, kernel, entries, res.Errors)
	}
}

func TestApplyConvergesFromEmpty(t *testing.T) {
	e := newEnv(t)
	r, _ := e.reconciler(t, e.rm, reconcile.Options{})
	peers := threePeers()

	res := r.Apply(peers)

	if len(res.Errors) != 0 {
		t.Fatalf("errors: %v", res.Errors)
	}
	assertCounts(t, res, 6, 0, 0, 3, 3) // 3 routes + 3 entries
	e.assertConverged(t, peers)
}

func TestApplyConvergesFromDrift(t *testing.T) {
	e := newEnv(t)
	// Kernel: .2 right, .3 wrong next hop, .9 a departed peer; .4 and .5 missing.
	e.addRoute(t, "10.244.2.0/24", "198.18.0.12", reconcile.RouteProtocol)
	e.addRoute(t, "10.244.3.0/24", "198.18.0.99", reconcile.RouteProtocol)
	e.addRoute(t, "10.244.9.0/24", "198.18.0.19", reconcile.RouteProtocol)
	// Map: .2 right, .3 wrong next hop, .4 wrong ifindex, .10 departed; .5 missing.
	e.putEntry(t, "10.244.2.0/24", "198.18.0.12", e.ifindex)
	e.putEntry(t, "10.244.3.0/24", "198.18.0.99", e.ifindex)
	e.putEntry(t, "10.244.4.0/24", "198.18.0.14", e.ifindex+100)
	e.putEntry(t, "10.244.10.0/24", "198.18.0.20", e.ifindex)
	rec := &recordingMap{RouteMap: e.rm}
	r, _ := e.reconciler(t, rec, reconcile.Options{})
	peers := append(threePeers(), peer("10.244.5.0/24", "198.18.0.15"))

	res := r.Apply(peers)

	if len(res.Errors) != 0 {
		t.Fatalf("errors: %v", res.Errors)
	}
	// Kernel: added .4 .5, changed .3, removed .9. Map: added .5,
	// changed .3 .4, removed .10.
	assertCounts(t, res, 3, 3, 2, 4, 4)
	ops := rec.take()
	if count(ops, "put") != 3 || count(ops, "delete") != 1 {
		t.Errorf("map writes %v; want 3 puts (.3 .4 .5) and 1 delete (.10)", ops)
	}
	e.assertConverged(t, peers)
}

func TestApplyLeavesForeignRoutesAndTakesOverFlannels(t *testing.T) {
	e := newEnv(t)
	e.addRoute(t, "10.10.0.0/16", "198.18.0.1", protoStatic)  // the admin's
	e.addRoute(t, "10.244.50.0/24", "198.18.0.50", protoBoot) // flanneld's, for no peer of ours
	e.addRoute(t, "10.244.2.0/24", "198.18.0.12", protoBoot)  // flanneld's, for a peer: same next hop
	e.addRoute(t, "10.244.3.0/24", "198.18.0.77", protoBoot)  // flanneld's, for a peer: stale next hop
	r, _ := e.reconciler(t, e.rm, reconcile.Options{})
	peers := threePeers()

	res := r.Apply(peers)

	if len(res.Errors) != 0 {
		t.Fatalf("errors: %v", res.Errors)
	}
	assertCounts(t, res, 6, 0, 0, 3, 3)
	e.assertConverged(t, peers)
	// Migration: a peer's flanneld route became ours, not a second route.
	for _, p := range []string{"10.244.2.0/24", "10.244.3.0/24"} {
		if got := e.routesTo(t, p); len(got) != 1 || got[0].protocol != reconcile.RouteProtocol {
			t.Errorf("routes to %s: %v; want only ours", p, got)
		}
	}
	for _, want := range []kroute{
		{netip.MustParsePrefix("10.10.0.0/16"), netip.MustParseAddr("198.18.0.1"), e.ifindex, protoStatic},
		{netip.MustParsePrefix("10.244.50.0/24"), netip.MustParseAddr("198.18.0.50"), e.ifindex, protoBoot},
	} {
		if got := e.routesTo(t, want.subnet.String()); len(got) != 1 || got[0] != want {
			t.Errorf("foreign route touched: %v; want %v", got, want)
		}
	}
}

func TestApplyIsIdempotent(t *testing.T) {
	e := newEnv(t)
	rec := &recordingMap{RouteMap: e.rm}
	r, _ := e.reconciler(t, rec, reconcile.Options{})
	peers := threePeers()
	if res := r.Apply(peers); len(res.Errors) != 0 || res.Added != 6 {
		t.Fatalf("first Apply: %+v", res)
	}
	rec.take()
	before := e.kernel(t)

	res := r.Apply(peers)

	if len(res.Errors) != 0 {
		t.Fatalf("errors: %v", res.Errors)
	}
	assertCounts(t, res, 0, 0, 0, 3, 3)
	if ops := rec.take(); len(ops) != 0 {
		t.Errorf("second Apply wrote the map: %v", ops)
	}
	if after := e.kernel(t); !reflect.DeepEqual(after, before) {
		t.Errorf("second Apply changed the kernel routes:\nbefore %v\n after %v", before, after)
	}
}

// A changed next hop must never leave a gap: in the map it is one Put (no
// Delete), in the kernel one replace (no RTM_DELROUTE); deletions of
// departed peers come after every add and change.
func TestApplyChangesNextHopWithoutGap(t *testing.T) {
	e := newEnv(t)
	rec := &recordingMap{RouteMap: e.rm}
	r, _ := e.reconciler(t, rec, reconcile.Options{})
	if res := r.Apply(threePeers()); len(res.Errors) != 0 {
		t.Fatalf("first Apply: %v", res.Errors)
	}
	rec.take()

	events := make(chan netlink.RouteUpdate, 64)
	done := make(chan struct{})
	defer close(done)
	ns := e.ns
	if err := netlink.RouteSubscribeWithOptions(events, done, netlink.RouteSubscribeOptions{Namespace: &ns}); err != nil {
		t.Fatalf("subscribe to route events: %v", err)
	}

	// .3 moves to another host, .4 leaves, .5 joins.
	peers := []reconcile.Peer{
		peer("10.244.2.0/24", "198.18.0.12"),
		peer("10.244.3.0/24", "198.18.0.23"),
		peer("10.244.5.0/24", "198.18.0.15"),
	}
	res := r.Apply(peers)

	if len(res.Errors) != 0 {
		t.Fatalf("errors: %v", res.Errors)
	}
	assertCounts(t, res, 2, 2, 2, 3, 3)
	e.assertConverged(t, peers)

	ops := rec.take()
	if want := []string{"delete 10.244.4.0/24"}; len(ops) == 0 || !reflect.DeepEqual(ops[len(ops)-1:], want) || count(ops, "delete") != 1 {
		t.Errorf("map writes %v; want puts, then only %v", ops, want)
	}
	if count(ops, "put") != 2 || !containsOp(ops, "put 10.244.3.0/24") {
		t.Errorf("map writes %v; want the changed next hop as a put", ops)
	}

	// The kernel's own account, in order: "new <subnet>" / "del <subnet>".
	var seen []string
	deadline := time.After(300 * time.Millisecond)
collect:
	for {
		select {
		case ev := <-events:
			if ev.Dst == nil || ev.Dst.IP.To4() == nil {
				continue
			}
			ones, _ := ev.Dst.Mask.Size()
			dst, _ := netip.AddrFromSlice(ev.Dst.IP.To4())
			verb := map[uint16]string{unix.RTM_NEWROUTE: "new", unix.RTM_DELROUTE: "del"}[ev.Type]
			seen = append(seen, verb+" "+netip.PrefixFrom(dst, ones).String())
		case <-deadline:
			break collect
		}
	}
	at := func(op string) int {
		for i, o := range seen {
			if o == op {
				return i
			}
		}
		return -1
	}
	if at("new 10.244.3.0/24") < 0 || at("new 10.244.5.0/24") < 0 || at("del 10.244.4.0/24") < 0 {
		t.Fatalf("route events %v; want new .3, new .5, del .4 (else the checks below prove nothing)", seen)
	}
	if at("del 10.244.3.0/24") >= 0 {
		t.Errorf("route events %v: 10.244.3.0/24 was deleted while its next hop changed", seen)
	}
	if del := at("del 10.244.4.0/24"); del < at("new 10.244.3.0/24") || del < at("new 10.244.5.0/24") {
		t.Errorf("route events %v: a deletion came before the adds and changes", seen)
	}
}

func containsOp(ops []string, op string) bool {
	for _, o := range ops {
		if o == op {
			return true
		}
	}
	return false
}

// One failing item (a route the kernel refuses, a map write that fails)
// is reported and the others are applied; the next run retries it.
func TestApplyOneBadItemDoesNotStopOthers(t *testing.T) {
	e := newEnv(t)
	rec := &recordingMap{RouteMap: e.rm, failPut: netip.MustParsePrefix("10.244.3.0/24")}
	r, _ := e.reconciler(t, rec, reconcile.Options{})
	offLink := peer("10.244.66.0/24", "192.0.2.1") // RouteReplace: network unreachable
	peers := append(threePeers(), offLink)

	res := r.Apply(peers)

	if len(res.Errors) != 2 {
		t.Fatalf("errors %v; want 2: the off-link route and the injected map failure", res.Errors)
	}
	joined := errors.Join(res.Errors...).Error()
	for _, s := range []string{"10.244.66.0/24", "10.244.3.0/24"} {
		if !strings.Contains(joined, s) {
			t.Errorf("errors %q do not name %s", joined, s)
		}
	}
	good := threePeers()
	ours := e.ours(t)
	for _, p := range good {
		if got, want := ours[p.Subnet], e.want(good)[p.Subnet]; got != want {
			t.Errorf("kernel route for %s: %v, want %v", p.Subnet, got, want)
		}
	}
	if _, ok := ours[offLink.Subnet]; ok {
		t.Errorf("route for the off-link peer exists")
	}
	entries := e.entries(t)
	for _, p := range []reconcile.Peer{good[0], good[2]} {
		if _, ok := entries[p.Subnet]; !ok {
			t.Errorf("map entry for %s missing", p.Subnet)
		}
	}
	if _, ok := entries[good[1].Subnet]; ok {
		t.Errorf("map entry for %s exists though its put failed", good[1].Subnet)
	}
	if _, ok := entries[offLink.Subnet]; ok {
		// Not asserted: reported as a finding (map and kernel disagree).
		t.Logf("note: map holds %s although the kernel refused its route", offLink.Subnet)
	}

	rec.failPut = netip.Prefix{}
	res = r.Apply(good)
	if len(res.Errors) != 0 {
		t.Fatalf("retry: %v", res.Errors)
	}
	e.assertConverged(t, good)
}

func TestRemoveAllKeepsForeignRoutes(t *testing.T) {
	e := newEnv(t)
	e.addRoute(t, "10.10.0.0/16", "198.18.0.1", protoStatic)
	e.addRoute(t, "10.244.50.0/24", "198.18.0.50", protoBoot)
	r, _ := e.reconciler(t, e.rm, reconcile.Options{})
	if res := r.Apply(threePeers()); len(res.Errors) != 0 {
		t.Fatalf("Apply: %v", res.Errors)
	}
	before := len(e.kernel(t))

	if err := r.RemoveAll(); err != nil {
		t.Fatalf("RemoveAll: %v", err)
	}

	e.assertConverged(t, nil)
	if got := e.kernel(t); len(got) != before-3 {
		t.Errorf("routes left %v; want all but our 3", got)
	}
	for _, p := range []string{"10.10.0.0/16", "10.244.50.0/24"} {
		if len(e.routesTo(t, p)) != 1 {
			t.Errorf("foreign route %s removed", p)
		}
	}
}

// waitFor polls cond until it holds and returns how long that took.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > timeout {
			t.Fatalf("%s: not within %v", what, timeout)
		}
		time.Sleep(time.Millisecond)
	}
	return time.Since(start)
}

// startRun runs r until the returned stop is called; stop waits for Run.
func startRun(t *testing.T, r *reconcile.Reconciler) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan error, 1)
	go func() { stopped <- r.Run(ctx) }()
	var once sync.Once
	return func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-stopped:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(5 * time.Second):
				t.Errorf("Run did not return after cancel")
			}
		})
	}
}

func TestRun(t *testing.T) {
	e := newEnv(t)
	// A route and entry of ours from a previous agent run.
	leftover := []reconcile.Peer{peer("10.244.9.0/24", "198.18.0.19")}
	e.addRoute(t, "10.244.9.0/24", "198.18.0.19", reconcile.RouteProtocol)
	e.putEntry(t, "10.244.9.0/24", "198.18.0.19", e.ifindex)

	var applies, repairs atomic.Int32
	var lastErrs atomic.Int32
	r, _ := e.reconciler(t, e.rm, reconcile.Options{
		Observe: func(res reconcile.Result, _ time.Duration) {
			applies.Add(1)
			lastErrs.Store(int32(len(res.Errors)))
		},
		OnRepair: func() { repairs.Add(1) },
	})
	t.Cleanup(startRun(t, r))

	// An agent that has not heard from etcd yet leaves routes alone,
	// through two resyncs.
	time.Sleep(2*resync + 100*time.Millisecond)
	if n := applies.Load(); n != 0 {
		t.Errorf("%d runs applied before the first Update", n)
	}
	e.assertConverged(t, leftover)

	peers := threePeers()
	r.Update(peers)
	took := waitFor(t, 2*time.Second, "converge after Update", func() bool { return e.converged(t, peers) })
	t.Logf("converged %v after Update", took)
	if lastErrs.Load() != 0 {
		t.Errorf("Apply reported errors")
	}

	// Deleted by hand: restored by the deletion event, well before a resync would.
	gone := peers[0].Subnet.String()
	repairsBefore := repairs.Load()
	e.delRoute(t, gone)
	took = waitFor(t, 2*time.Second, "repair "+gone, func() bool { return e.converged(t, peers) })
	t.Logf("route %s deleted by hand was restored in %v", gone, took)
	if took >= time.Second {
		t.Errorf("repair took %v, want < 1s", took)
	}
	waitFor(t, 100*time.Millisecond, "OnRepair call", func() bool { return repairs.Load() > repairsBefore })

	// A peer leaving is our own deletion, not a repair.
	repairsBefore = repairs.Load()
	r.Update(peers[:2])
	waitFor(t, 2*time.Second, "peer removal", func() bool { return e.converged(t, peers[:2]) })
	time.Sleep(200 * time.Millisecond) // let the deletion event arrive
	if n := repairs.Load() - repairsBefore; n != 0 {
		t.Errorf("OnRepair called %d times for a deletion Apply made itself", n)
	}
}

// Stopping Run closes the route event socket on purpose: that is no
// failure to warn about.
func TestRunStopsQuietly(t *testing.T) {
	e := newEnv(t)
	r, logs := e.reconciler(t, e.rm, reconcile.Options{})
	stop := startRun(t, r)
	t.Cleanup(stop)
	peers := threePeers()
	r.Update(peers)
	waitFor(t, 2*time.Second, "converge after Update", func() bool { return e.converged(t, peers) })

	stop()
	time.Sleep(200 * time.Millisecond) // netlink's reader notices the closed socket

	if strings.Contains(logs.String(), "level=WARN") {
		t.Errorf("warnings on a clean stop:\n%s", logs)
	}
}
