package peers_test

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

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
	"github.com/hgw-ebpf/hgw-ebpf/internal/nldump"
	"github.com/hgw-ebpf/hgw-ebpf/internal/peers"
	"github.com/hgw-ebpf/hgw-ebpf/internal/testutil"
)

const (
	protoBoot   = netlink.RouteProtocol(unix.RTPROT_BOOT) // what flanneld's routes carry
	protoStatic = netlink.RouteProtocol(unix.RTPROT_STATIC)

	resync = 500 * time.Millisecond
)

func peer(subnet, nexthop string) peers.Peer {
	p := netip.MustParsePrefix(subnet)
	return peers.Peer{Subnet: p, NextHop: netip.MustParseAddr(nexthop), Key: key(subnet)}
}

// threePeers are nodes .12, .13, .14 on the underlay 198.18.0.0/24.
func threePeers() []peers.Peer {
	return []peers.Peer{
		peer("10.244.2.0/24", "198.18.0.12"),
		peer("10.244.3.0/24", "198.18.0.13"),
		peer("10.244.4.0/24", "198.18.0.14"),
	}
}

// env is one node: a fresh netns with an eth0 198.18.0.11/24 and
// fd00:198:18::11/64 (all inside the test's namespace) and an in-memory
// routes map. Its family is the one its reconcilers route; the tests
// write addresses in the IPv4 plan, which tr turns into the IPv6 one.
type env struct {
	name    string // the namespace's, for `ip -n`
	fam     peers.Family
	plain   bool // reconcilers made by reconciler() install plain routes
	ns      netns.NsHandle
	h       *netlink.Handle
	link    netlink.Link
	ifindex int
	rm      *memMap
}

func newEnv(t testing.TB) *env { return newEnvFamily(t, peers.IPv4) }

func newEnvFamily(t testing.TB, fam peers.Family) *env {
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
	for _, a := range []string{"198.18.0.11/24", "fd00:198:18::11/64"} {
		addr, err := netlink.ParseAddr(a)
		if err != nil {
			t.Fatal(err)
		}
		addr.Flags = unix.IFA_F_NODAD // usable at once, not tentative
		if err := h.AddrAdd(link, addr); err != nil {
			t.Fatalf("address eth0: %v", err)
		}
	}
	if err := h.LinkSetUp(link); err != nil {
		t.Fatalf("set eth0 up: %v", err)
	}
	return &env{name: name, fam: fam, ns: ns, h: h, link: link, ifindex: link.Attrs().Index, rm: newMemMap()}
}

// tr turns the tests' IPv4 plan into the env's family: in an IPv6 env
// every IPv4 address or prefix in s (a word of its own) becomes its IPv6
// counterpart, a.b.c.d/n as fd00:a:b:c::d/(n+40), a host /32 as a /128:
// 10.244.2.0/24 is fd00:10:244:2::/64, 198.18.0.12 is fd00:198:18::12.
func (e *env) tr(s string) string {
	if e.fam != peers.IPv6 {
		return s
	}
	words := strings.Fields(s)
	for i, w := range words {
		words[i] = to6(w)
	}
	return strings.Join(words, " ")
}

func to6(w string) string {
	addr, bits, isPrefix := w, 0, false
	if a, b, ok := strings.Cut(w, "/"); ok {
		n, err := fmt.Sscan(b, &bits)
		if err != nil || n != 1 {
			return w
		}
		addr, isPrefix = a, true
	}
	a, err := netip.ParseAddr(addr)
	if err != nil || !a.Is4() {
		return w
	}
	b := a.As4()
	v6 := netip.MustParseAddr(fmt.Sprintf("fd00:%d:%d:%d::%d", b[0], b[1], b[2], b[3]))
	if !isPrefix {
		return v6.String()
	}
	if bits == 32 {
		return netip.PrefixFrom(v6, 128).String()
	}
	return netip.PrefixFrom(v6, bits+40).String()
}

// trAll is tr of each string.
func (e *env) trAll(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = e.tr(s)
	}
	return out
}

// setMap writes a map entry directly, as drift from outside.
func (e *env) setMap(subnet, via string, ifindex int) { e.rm.set(e.tr(subnet), e.tr(via), ifindex) }

// trSorted is trAll, sorted (as changes and items are).
func (e *env) trSorted(ss []string) []string {
	out := e.trAll(ss)
	slices.Sort(out)
	return out
}

// metric is the metric of the env's family's routes added without one
// (ours, flanneld's): IPv6 routes always have one.
func (e *env) metric() int {
	if e.fam == peers.IPv6 {
		return 1024
	}
	return 0
}

// peer is the peer of subnet via nexthop, in the env's family.
func (e *env) peer(subnet, nexthop string) peers.Peer { return peer(e.tr(subnet), e.tr(nexthop)) }

// threePeers is threePeers in the env's family.
func (e *env) threePeers() []peers.Peer {
	var out []peers.Peer
	for _, p := range threePeers() {
		out = append(out, e.peer(p.Subnet.String(), p.NextHop.String()))
	}
	return out
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
func (e *env) reconciler(t testing.TB, rm peers.RouteMap, opts peers.Options) (*peers.Reconciler, *testLog) {
	t.Helper()
	ns := e.ns
	logs := &testLog{out: t.Output()}
	t.Cleanup(logs.close)
	opts.Link, opts.RouteMap = e.link, rm
	opts.PlainRoutes = opts.PlainRoutes || e.plain
	if opts.Family == 0 {
		opts.Family = e.fam
	}
	if opts.Netns == nil {
		opts.Netns = &ns
	}
	if opts.ResyncInterval == 0 {
		opts.ResyncInterval = resync
	}
	opts.Log = slog.New(slog.NewTextHandler(logs, nil))
	r, err := peers.New(opts)
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

// kroute is one route of the main table, as the kernel reports it.
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

// kernel lists every main-table route of the env's family, read
// independently of the reconciler's own protocol-filtered listing.
func (e *env) kernel(t testing.TB) []kroute { return e.kernelOf(t, e.fam) }

func (e *env) kernelOf(t testing.TB, fam peers.Family) []kroute {
	t.Helper()
	routes, err := nldump.Retry(func() ([]netlink.Route, error) {
		return e.h.RouteListFiltered(int(fam), &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		t.Fatalf("list routes: %v", err)
	}
	var out []kroute
	for _, rt := range routes {
		if rt.Dst == nil {
			continue
		}
		ones, _ := rt.Dst.Mask.Size()
		dst, _ := netip.AddrFromSlice(rt.Dst.IP)
		via, _ := netip.AddrFromSlice(rt.Gw)
		out = append(out, kroute{subnet: netip.PrefixFrom(dst.Unmap(), ones), via: via.Unmap(), ifindex: rt.LinkIndex, protocol: rt.Protocol, metric: rt.Priority})
	}
	return out
}

// notKernels is kernel without the kernel's own routes (proto kernel),
// which IPv6 adds as eth0 comes up (link-local, addresses' prefixes).
func (e *env) notKernels(t testing.TB) []kroute {
	var out []kroute
	for _, k := range e.kernel(t) {
		if k.protocol != unix.RTPROT_KERNEL {
			out = append(out, k)
		}
	}
	return out
}

// ours is the kernel routes of the env's family tagged with our
// protocol, in the map's terms.
func (e *env) ours(t testing.TB) map[netip.Prefix]datapath.Route { return e.oursOf(t, e.fam) }

func (e *env) oursOf(t testing.TB, fam peers.Family) map[netip.Prefix]datapath.Route {
	t.Helper()
	out := map[netip.Prefix]datapath.Route{}
	for _, k := range e.kernelOf(t, fam) {
		if k.protocol != peers.RouteProtocol {
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
	p := netip.MustParsePrefix(e.tr(subnet))
	var out []kroute
	for _, k := range e.kernel(t) {
		if k.subnet == p {
			out = append(out, k)
		}
	}
	return out
}

func (e *env) want(peerList []peers.Peer) map[netip.Prefix]datapath.Route {
	out := map[netip.Prefix]datapath.Route{}
	for _, p := range peerList {
		out[p.Subnet] = datapath.Route{Subnet: p.Subnet, NextHop: p.NextHop, Ifindex: uint32(e.ifindex)}
	}
	return out
}

func (e *env) converged(t *testing.T, peerList []peers.Peer) bool {
	t.Helper()
	want := e.want(peerList)
	return reflect.DeepEqual(e.ours(t), want) && reflect.DeepEqual(e.rm.snapshot(), want)
}

// assertConverged checks that routes of ours and map entries are exactly
// `<subnet> via <peer> dev eth0 proto 104`, one per peer.
func (e *env) assertConverged(t *testing.T, peerList []peers.Peer) {
	t.Helper()
	want := e.want(peerList)
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
	subnet, via = e.tr(subnet), e.tr(via)
	p := netip.MustParsePrefix(subnet)
	rt := &netlink.Route{
		LinkIndex: e.ifindex, Dst: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())},
		Gw: netip.MustParseAddr(via).AsSlice(), Protocol: proto, Table: unix.RT_TABLE_MAIN, Priority: metric,
	}
	if err := e.h.RouteAdd(rt); err != nil {
		t.Fatalf("add route %s via %s proto %d metric %d: %v", subnet, via, proto, metric, err)
	}
}

// delRoute deletes the route to subnet, plain or through a nexthop object
// (a device in the request would not match the latter).
func (e *env) delRoute(t *testing.T, subnet string) {
	t.Helper()
	p := netip.MustParsePrefix(e.tr(subnet))
	rt := &netlink.Route{Dst: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}, Table: unix.RT_TABLE_MAIN}
	if err := e.h.RouteDel(rt); err != nil {
		t.Fatalf("delete route %s: %v", subnet, err)
	}
}

func assertCounts(t *testing.T, res peers.Result, added, changed, removed, kernel, entries int) {
	t.Helper()
	if res.Added != added || res.Changed != changed || res.Removed != removed || res.KernelRoutes != kernel || res.MapEntries != entries {
		t.Errorf("Result = added %d changed %d removed %d kernel %d map %d; want %d %d %d %d %d (errors %v)",
			res.Added, res.Changed, res.Removed, res.KernelRoutes, res.MapEntries, added, changed, removed, kernel, entries, res.Errors)
	}
}

// forModes runs fn on a fresh node for each family, twice: routes
// through nexthop objects (the kernel has them), and plain routes (forced,
// as on a kernel without them).
func forModes(t *testing.T, fn func(t *testing.T, e *env)) {
	forFamilies(t, func(t *testing.T, fam peers.Family) {
		for _, plain := range []bool{false, true} {
			name := "nexthop"
			if plain {
				name = "plain"
			}
			t.Run(name, func(t *testing.T) {
				e := newEnvFamily(t, fam)
				e.plain = plain
				fn(t, e)
			})
		}
	})
}

// forFamilies runs fn once per family: the one mechanism routes both.
func forFamilies(t *testing.T, fn func(t *testing.T, fam peers.Family)) {
	for _, fam := range []peers.Family{peers.IPv4, peers.IPv6} {
		t.Run(fam.String(), func(t *testing.T) { fn(t, fam) })
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

// routeLines is `ip route` of our protocol in the env's family, one line
// per route, with the nexthop ID replaced by N (and IPv6's " pref medium"
// left out).
func (e *env) routeLines(t *testing.T) []string {
	t.Helper()
	var out []string
	family := "-4"
	if e.fam == peers.IPv6 {
		family = "-6"
	}
	for _, l := range strings.Split(e.ip(t, family, "route", "show", "table", "main"), "\n") {
		if l = strings.TrimSpace(l); strings.Contains(l, " proto 104") {
			out = append(out, strings.TrimSuffix(nhidRE.ReplaceAllString(l, "nhid N"), " pref medium"))
		}
	}
	slices.Sort(out)
	return out
}

var nhidRE = regexp.MustCompile(`nhid [0-9]+`)

// wantLines is routeLines for peers in the env's mode.
func (e *env) wantLines(peerList []peers.Peer) []string {
	var out []string
	for _, p := range peerList {
		nh := ""
		if !e.plain {
			nh = "nhid N "
		}
		metric := ""
		if e.fam == peers.IPv6 {
			metric = " metric 1024"
		}
		out = append(out, fmt.Sprintf("%s %svia %s dev eth0 proto 104%s", p.Subnet, nh, p.NextHop, metric))
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
