package reconcile_test

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os/exec"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"sync"
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
	protoBoot   = netlink.RouteProtocol(unix.RTPROT_BOOT) // what flanneld's routes carry
	protoStatic = netlink.RouteProtocol(unix.RTPROT_STATIC)

	resync = 500 * time.Millisecond
)

func peer(subnet, nexthop string) reconcile.Peer {
	p := netip.MustParsePrefix(subnet)
	return reconcile.Peer{Subnet: p, NextHop: netip.MustParseAddr(nexthop), Key: key(subnet)}
}

// threePeers are nodes .12, .13, .14 on the underlay 198.18.0.0/24.
func threePeers() []reconcile.Peer {
	return []reconcile.Peer{
		peer("10.244.2.0/24", "198.18.0.12"),
		peer("10.244.3.0/24", "198.18.0.13"),
		peer("10.244.4.0/24", "198.18.0.14"),
	}
}

// env is one node: a fresh netns with an eth0 198.18.0.11/24 (all inside
// the test's namespace) and an in-memory routes map.
type env struct {
	name    string // the namespace's, for `ip -n`
	plain   bool   // reconcilers made by reconciler() install plain routes
	ns      netns.NsHandle
	h       *netlink.Handle
	link    netlink.Link
	ifindex int
	rm      *memMap
}

func newEnv(t testing.TB) *env {
	t.Helper()
	testutil.RequireRoot(t)
	name, ns := testutil.NetNS(t, "rc")
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
	return &env{name: name, ns: ns, h: h, link: link, ifindex: link.Attrs().Index, rm: newMemMap()}
}

// addUnderlay adds eth0 as a dummy device, or, on kernels built without
// the dummy driver, as a veth whose peer is up: for routing the same.
func addUnderlay(t testing.TB, h *netlink.Handle) {
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

// reconciler builds a Reconciler on the env's namespace; rm nil means
// routes-only mode.
func (e *env) reconciler(t testing.TB, rm reconcile.RouteMap, opts reconcile.Options) (*reconcile.Reconciler, *testLog) {
	t.Helper()
	ns := e.ns
	logs := &testLog{out: t.Output()}
	t.Cleanup(logs.close)
	opts.Link, opts.RouteMap = e.link, rm
	opts.PlainRoutes = opts.PlainRoutes || e.plain
	if opts.Netns == nil {
		opts.Netns = &ns
	}
	if opts.ResyncInterval == 0 {
		opts.ResyncInterval = resync
	}
	opts.Log = slog.New(slog.NewTextHandler(logs, nil))
	r, err := reconcile.New(opts)
	if err != nil {
		t.Fatalf("new reconciler: %v", err)
	}
	t.Cleanup(func() { r.Close() })
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

// take returns the log lines written since the last take.
func (l *testLog) take() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := strings.TrimSpace(l.buf.String())
	l.buf.Reset()
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
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
	metric   int
}

func (k kroute) String() string {
	return fmt.Sprintf("%s via %s dev %d proto %d metric %d", k.subnet, k.via, k.ifindex, k.protocol, k.metric)
}

// kernel lists every main-table IPv4 route, read independently of the
// reconciler's own protocol-filtered listing.
func (e *env) kernel(t testing.TB) []kroute {
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
		out = append(out, kroute{subnet: netip.PrefixFrom(dst, ones), via: via, ifindex: rt.LinkIndex, protocol: rt.Protocol, metric: rt.Priority})
	}
	return out
}

// ours is the kernel routes tagged with our protocol, in the map's terms.
func (e *env) ours(t testing.TB) map[netip.Prefix]datapath.Route {
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
	return reflect.DeepEqual(e.ours(t), want) && reflect.DeepEqual(e.rm.snapshot(), want)
}

// assertConverged checks that routes of ours and map entries are exactly
// `<subnet> via <peer> dev eth0 proto 104`, one per peer.
func (e *env) assertConverged(t *testing.T, peers []reconcile.Peer) {
	t.Helper()
	want := e.want(peers)
	if got := e.ours(t); !reflect.DeepEqual(got, want) {
		t.Errorf("kernel routes of ours:\n got %v\nwant %v", got, want)
	}
	if got := e.rm.snapshot(); !reflect.DeepEqual(got, want) {
		t.Errorf("routes map:\n got %v\nwant %v", got, want)
	}
}

func (e *env) addRoute(t *testing.T, subnet, via string, proto netlink.RouteProtocol) {
	t.Helper()
	e.addRouteMetric(t, subnet, via, proto, 0)
}

func (e *env) addRouteMetric(t *testing.T, subnet, via string, proto netlink.RouteProtocol, metric int) {
	t.Helper()
	p := netip.MustParsePrefix(subnet)
	rt := &netlink.Route{
		LinkIndex: e.ifindex, Dst: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)},
		Gw: net.ParseIP(via).To4(), Protocol: proto, Table: unix.RT_TABLE_MAIN, Priority: metric,
	}
	if err := e.h.RouteAdd(rt); err != nil {
		t.Fatalf("add route %s via %s proto %d metric %d: %v", subnet, via, proto, metric, err)
	}
}

// delRoute deletes the route to subnet, plain or through a nexthop object
// (a device in the request would not match the latter).
func (e *env) delRoute(t *testing.T, subnet string) {
	t.Helper()
	p := netip.MustParsePrefix(subnet)
	rt := &netlink.Route{Dst: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)}, Table: unix.RT_TABLE_MAIN}
	if err := e.h.RouteDel(rt); err != nil {
		t.Fatalf("delete route %s: %v", subnet, err)
	}
}

func assertCounts(t *testing.T, res reconcile.Result, added, changed, removed, kernel, entries int) {
	t.Helper()
	if res.Added != added || res.Changed != changed || res.Removed != removed || res.KernelRoutes != kernel || res.MapEntries != entries {
		t.Errorf("Result = added %d changed %d removed %d kernel %d map %d; want %d %d %d %d %d (errors %v)",
			res.Added, res.Changed, res.Removed, res.KernelRoutes, res.MapEntries, added, changed, removed, kernel, entries, res.Errors)
	}
}

// forModes runs fn on a fresh node twice: routes through nexthop objects
// (the kernel has them), and plain routes (forced, as on a kernel without
// them).
func forModes(t *testing.T, fn func(t *testing.T, e *env)) {
	for _, plain := range []bool{false, true} {
		name := "nexthop"
		if plain {
			name = "plain"
		}
		t.Run(name, func(t *testing.T) {
			e := newEnv(t)
			e.plain = plain
			fn(t, e)
		})
	}
}

// ip runs iproute2 in the env's namespace: what a user reads.
func (e *env) ip(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"-n", e.name}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// routeLines is `ip route` of our protocol, one line per route, with the
// nexthop ID replaced by N.
func (e *env) routeLines(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, l := range strings.Split(e.ip(t, "route", "show", "table", "main"), "\n") {
		if l = strings.TrimSpace(l); strings.Contains(l, " proto 104") {
			out = append(out, nhidRE.ReplaceAllString(l, "nhid N"))
		}
	}
	slices.Sort(out)
	return out
}

var nhidRE = regexp.MustCompile(`nhid [0-9]+`)

// wantLines is routeLines for peers in the env's mode.
func (e *env) wantLines(peers []reconcile.Peer) []string {
	var out []string
	for _, p := range peers {
		nh := ""
		if !e.plain {
			nh = "nhid N "
		}
		out = append(out, fmt.Sprintf("%s %svia %s dev eth0 proto 104", p.Subnet, nh, p.NextHop))
	}
	slices.Sort(out)
	return out
}

// nexthops is `ip nexthop` of our protocol: "<id> <gateway>".
func (e *env) nexthops(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, l := range strings.Split(e.ip(t, "nexthop", "show", "protocol", "104"), "\n") {
		f := strings.Fields(l)
		if len(f) >= 4 && f[0] == "id" && f[2] == "via" {
			out = append(out, f[1]+" "+f[3])
		}
	}
	slices.Sort(out)
	return out
}

// routeEvents subscribes to the env's route events until the test ends.
func (e *env) routeEvents(t *testing.T) <-chan netlink.RouteUpdate {
	t.Helper()
	events := make(chan netlink.RouteUpdate, 1024)
	done := make(chan struct{})
	t.Cleanup(func() { close(done) })
	ns := e.ns
	if err := netlink.RouteSubscribeWithOptions(events, done, netlink.RouteSubscribeOptions{Namespace: &ns}); err != nil {
		t.Fatalf("subscribe to route events: %v", err)
	}
	return events
}
