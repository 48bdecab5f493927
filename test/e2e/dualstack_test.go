package e2e

import (
	"context"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
	"github.com/hgw-ebpf/hgw-ebpf/internal/lab"
	"github.com/hgw-ebpf/hgw-ebpf/internal/lab/labtest"
	"github.com/hgw-ebpf/hgw-ebpf/internal/testutil"
)

func dualStackLab(t *testing.T, nodes, pods int) *lab.Lab {
	t.Helper()
	return startLabConfig(t, lab.Config{Nodes: nodes, PodsPerNode: pods, Datapath: lab.DatapathEBPF, DualStack: true})
}

// familyCounter is a node's packets of one family, program and reason.
func familyCounter(t *testing.T, n lab.Node, family, program, reason string) uint64 {
	t.Helper()
	return datapath.Packets(datapath.OfFamily(labtest.Counters(t, n), family), program, reason)
}

// gateway6 is the bridge's IPv6 address on a node: its IPv6 subnet's
// first address, as the subnet file says.
func gateway6(n lab.Node) string {
	return netip.MustParsePrefix(n.Subnet6).Addr().Next().String()
}

// The hop limit and the MTU behave as a router's across the IPv6 fast
// path: traceroute6 sees three hops (the pod's node, the peer node, the
// pod), the expiring probe left to the kernel; a packet over the
// underlay's MTU gets the kernel's ICMPv6 packet too big from the pod's
// node (IPv6 routers never fragment), and packets that fit stay fast.
func TestIPv6HopLimitAndMTU(t *testing.T) {
	l := dualStackLab(t, 2, 1)
	ctx := testContext(t, time.Minute)
	st := l.State()
	a, b := st.Pods[0], st.Pods[1]
	na, nb := mustNode(t, st, a.Node), mustNode(t, st, b.Node)

	expired := familyCounter(t, na, "ipv6", "from_pods", "ttl_expired")
	redirected := familyCounter(t, na, "ipv6", "from_pods", "redirect")
	out, err := st.Output(ctx, a.Name, "traceroute", "-6", "-n", "-q", "1", "-w", "1", "-m", "5", b.IP6)
	if err != nil {
		t.Fatalf("traceroute -6: %v\n%s", err, out)
	}
	if got, want := testutil.TracerouteHops(out), []string{gateway6(na), nb.IP6, b.IP6}; strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("traceroute6 hops %v, want %v\n%s", got, want, out)
	}
	if d := familyCounter(t, na, "ipv6", "from_pods", "ttl_expired") - expired; d < 1 {
		t.Errorf("%s: from_pods counted %d IPv6 probes as ttl_expired, want >= 1 (left to the kernel)", na.Name, d)
	}
	if d := familyCounter(t, na, "ipv6", "from_pods", "redirect") - redirected; d < 2 {
		t.Errorf("%s: from_pods redirected %d traceroute6 probes, want >= 2", na.Name, d)
	}

	// a's link takes jumbo frames, the underlay does not.
	setPodMTU(t, st, a, 9000)
	tooBig := familyCounter(t, na, "ipv6", "from_pods", "too_big")
	out, _ = st.Output(ctx, a.Name, "ping", "-6", "-n", "-c", "1", "-W", "2", "-M", "do", "-s", "3000", b.IP6)
	if want := "From " + gateway6(na) + " icmp_seq=1 Packet too big: mtu=1500"; !strings.Contains(out, want) {
		t.Errorf("a 3 KB IPv6 packet through a 1500-byte underlay: want %q (the node's ICMPv6 packet too big), got\n%s", want, out)
	}
	if d := familyCounter(t, na, "ipv6", "from_pods", "too_big") - tooBig; d < 1 {
		t.Errorf("%s: from_pods counted %d IPv6 packets as too_big, want >= 1", na.Name, d)
	}
	redirected = familyCounter(t, na, "ipv6", "from_pods", "redirect")
	if out, err := st.Output(ctx, a.Name, "ping", "-6", "-n", "-c", "3", "-i", "0.1", "-W", "1", b.IP6); err != nil {
		t.Fatalf("small IPv6 pings after the packet too big: %v\n%s", err, out)
	}
	if d := familyCounter(t, na, "ipv6", "from_pods", "redirect") - redirected; d < 3 {
		t.Errorf("%s: from_pods redirected %d small IPv6 pings, want >= 3", na.Name, d)
	}
}

// A node that joins with a dual-stack lease as flanneld writes it (one key
// for both subnets, PublicIP and PublicIPv6, flanneld's TTL) is routed in
// both families, kernel and map, by every node within 1 s of its lease,
// and its pods reach every other pod over both; when its lease goes, both
// routes go within 1 s.
func TestDualStackFlanneldLeaseRoutedInBothFamilies(t *testing.T) {
	l := dualStackLab(t, 2, 1)
	ctx := testContext(t, 2*time.Minute)
	prefix := l.State().EtcdKeys + "/subnets/"
	subnet := netip.MustParsePrefix("10.244.200.0/24")

	events := watchLeases(ctx, l.Etcd(), prefix)
	fl, err := l.AddFlannelNode(ctx, subnet)
	if err != nil {
		t.Fatal(err)
	}
	subnet6 := netip.MustParsePrefix(fl.Subnet6)
	leaseAt := eventTime(t, events, mvccpb.PUT, subnet)
	both := func(want bool) func() bool {
		return func() bool {
			st := l.State()
			return everyPeer(t, st, fl, subnet, want) && everyPeer(t, st, fl, subnet6, want)
		}
	}
	converged, ok := waitFor(ctx, 5*time.Second, both(true))
	if !ok {
		t.Fatalf("peers never routed to %s and %s", subnet, subnet6)
	}
	t.Logf("both families routed everywhere %v after the lease appeared", converged.Sub(leaseAt))
	if d := converged.Sub(leaseAt); d > maxConvergence {
		t.Errorf("peers routed both families of the new node %s after its lease appeared, want <= %s", d, maxConvergence)
	}
	leases, err := l.Leases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var value string
	for _, le := range leases {
		if strings.HasSuffix(le.Key, "/10.244.200.0-24&"+strings.Replace(fl.Subnet6, "/", "-", 1)) {
			value = le.Value
		}
	}
	if want := `{"PublicIP":"` + fl.IP + `","PublicIPv6":"` + fl.IP6 + `","BackendType":"host-gw"}`; value != want {
		t.Fatalf("the flanneld node's lease %q, want flanneld's %q", value, want)
	}
	if _, err := l.AddPod(ctx, fl.Name); err != nil {
		t.Fatal(err)
	}
	st := l.State()
	pingAll(t, ctx, st)
	expectAll(t, "ipv6", st.PingAll6(ctx, 16), len(st.Pods))

	events = watchLeases(ctx, l.Etcd(), prefix)
	if err := l.DeleteLease(ctx, subnet); err != nil {
		t.Fatal(err)
	}
	goneAt := eventTime(t, events, mvccpb.DELETE, subnet)
	converged, ok = waitFor(ctx, 5*time.Second, both(false))
	if !ok {
		t.Fatalf("peers still route to %s or %s", subnet, subnet6)
	}
	t.Logf("both families unrouted everywhere %v after the lease went", converged.Sub(goneAt))
	if d := converged.Sub(goneAt); d > maxConvergence {
		t.Errorf("peers dropped both families of the node %s after its lease went, want <= %s", d, maxConvergence)
	}
}

// A flanneld node without IPv6 (an IPv4-only lease, "PublicIPv6":null)
// next to dual-stack nodes: routed in IPv4 only, its pods reached over
// IPv4; the dual-stack nodes stay ready, route each other in both
// families, and say once why the lease has no IPv6 route.
func TestIPv4OnlyFlanneldLeaseBesideDualStack(t *testing.T) {
	l := dualStackLab(t, 2, 1)
	ctx := testContext(t, 2*time.Minute)
	subnet := netip.MustParsePrefix("10.244.201.0/24")
	fl, err := l.AddFlannelNodeIPv4(ctx, subnet)
	if err != nil {
		t.Fatal(err)
	}
	if fl.IP6 != "" || fl.Subnet6 != "" {
		t.Fatalf("the IPv4-only node has IPv6: %+v", fl)
	}
	if _, err := l.AddPod(ctx, fl.Name); err != nil {
		t.Fatal(err)
	}
	if _, ok := waitFor(ctx, 5*time.Second, func() bool { return everyPeer(t, l.State(), fl, subnet, true) }); !ok {
		t.Fatalf("hgw-ebpf nodes never routed to the IPv4-only node's %s", subnet)
	}
	st := l.State()
	pingAll(t, ctx, st)

	var dual lab.State = st
	dual.Pods = nil
	for _, p := range st.Pods {
		if p.IP6 != "" {
			dual.Pods = append(dual.Pods, p)
		}
	}
	expectAll(t, "ipv6", dual.PingAll6(ctx, 16), len(dual.Pods))

	var peers []lab.Node // the dual-stack ones
	for _, n := range st.Nodes {
		if n.Agent == lab.AgentHgw {
			peers = append(peers, n)
		}
	}
	for _, n := range peers {
		routes, err := lab.NodeRoutes(n.Name)
		if err != nil {
			t.Fatal(err)
		}
		var v6 []string
		for p, via := range routes {
			if p.Addr().Is6() {
				v6 = append(v6, p.String()+" via "+via.String())
			}
		}
		if len(v6) != len(peers)-1 {
			t.Errorf("%s: IPv6 routes %v; want one per other dual-stack node, none for the IPv4-only one", n.Name, v6)
		}
		if code, body := get(ctx, st, n.Name, "/readyz"); code != 200 {
			t.Errorf("%s: /readyz %d %q beside an IPv4-only lease", n.Name, code, body)
		}
		if v, ok := value(scrape(t, ctx, st, n.Name), "hgw_leases_skipped", map[string]string{"family": "ipv6", "reason": "no_ipv6"}); !ok || v != 1 {
			t.Errorf("%s: hgw_leases_skipped{family=ipv6,reason=no_ipv6} = %v (%v), want 1", n.Name, v, ok)
		}
		b, err := os.ReadFile(n.AgentLog)
		if err != nil {
			t.Fatal(err)
		}
		if c := strings.Count(string(b), "reason=no_ipv6"); c != 1 {
			t.Errorf("%s: the IPv4-only lease logged %d times, want once", n.Name, c)
		}
	}
}

// The real flanneld (dual stack, etcd mode, --ip-masq) on one node,
// hgw-ebpf on two, pods attached by the real flannel CNI plugin, which
// makes their IPv6 addresses from the subnet file's IPv6 lines (hgw-ebpf's
// as flanneld's): each routes the others in both families, every pod
// reaches every other over IPv4 and IPv6, through the fast path on the
// hgw-ebpf nodes, and the hgw-ebpf nodes' ip6tables chains are flanneld's.
func TestDualStackWithRealFlanneld(t *testing.T) {
	flanneld, cniDir := flannelTools(t)
	l := startLabConfig(t, lab.Config{Nodes: 3, PodsPerNode: 1, Datapath: lab.DatapathEBPF, DualStack: true, IPMasq: true,
		Flanneld: flanneld, FlanneldNodes: []int{1}, FlannelCNI: cniDir})
	ctx := testContext(t, 2*time.Minute)
	st := l.State()
	fl := st.Nodes[0]
	if fl.Agent != lab.AgentFlanneld || fl.Subnet6 == "" {
		t.Fatalf("node 1 %+v: want flanneld with an IPv6 subnet", fl)
	}
	for _, p := range st.Pods {
		if p.IP6 == "" || !netip.MustParsePrefix(mustNode(t, st, p.Node).Subnet6).Contains(netip.MustParseAddr(p.IP6)) {
			t.Errorf("pod %s: IPv6 %q, want one in its node's IPv6 subnet (the flannel plugin's second range)", p.Name, p.IP6)
		}
	}
	for _, subnet := range []string{fl.Subnet, fl.Subnet6} {
		if !everyPeer(t, st, fl, netip.MustParsePrefix(subnet), true) {
			t.Errorf("the hgw-ebpf nodes do not route flanneld's %s", subnet)
		}
	}
	want := flannelRules6(t, ctx, st, fl)
	if len(want) == 0 {
		t.Fatalf("flanneld wrote no ip6tables rules: the comparison proves nothing")
	}
	for _, n := range st.Nodes[1:] {
		if got := flannelRules6(t, ctx, st, n); strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Errorf("%s's ip6tables chains:\n%s\nwant flanneld's:\n%s", n.Name, strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	}
	ours := st
	ours.Nodes = st.Nodes[1:] // flanneld's node has no counters
	before := labtest.AllCounters(t, ours)
	pingAll(t, ctx, st)
	expectAll(t, "ipv6", st.PingAll6(ctx, 16), len(st.Pods))
	after := labtest.AllCounters(t, ours)
	for _, n := range ours.Nodes {
		if d := datapath.Redirected(datapath.OfFamily(datapath.Delta(before[n.Name], after[n.Name]), "ipv6"), "from_pods"); d == 0 {
			t.Errorf("%s: no IPv6 packet on the fast path", n.Name)
		}
	}
}

// flannelRules6 is a node's flanneld chains in ip6tables, the jumps to
// them included, with the node's own IPv6 subnet written as SUBNET.
func flannelRules6(t *testing.T, ctx context.Context, st lab.State, n lab.Node) []string {
	t.Helper()
	var out []string
	for _, table := range []string{"nat", "filter"} {
		save, err := st.Output(ctx, n.Name, "ip6tables-save", "-t", table)
		if err != nil {
			t.Fatalf("ip6tables-save in %s: %v\n%s", n.Name, err, save)
		}
		for _, l := range strings.Split(save, "\n") {
			if strings.HasPrefix(l, "-A ") && strings.Contains(l, "FLANNEL-") {
				out = append(out, strings.ReplaceAll(l, n.Subnet6, "SUBNET"))
			}
		}
	}
	return out
}
