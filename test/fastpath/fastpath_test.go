// Package fastpath tests the datapath on the seed topology, without an
// agent: two nodes whose eth0 share one L2 segment, a cni0 bridge and one pod
// each, all in network namespaces the test creates and removes; IPv4, and
// IPv6 beside it where a test makes the topology dual-stack.
package fastpath

import (
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
	"github.com/hgw-ebpf/hgw-ebpf/internal/testutil"
)

// node is one host of the seed topology.
type node struct {
	ns, pod  string       // namespace names
	underlay netip.Addr   // eth0
	subnet   netip.Prefix // pod subnet; .1 is cni0, .2 the pod
	pinRoot  string
	// Dual stack only (dualStack): eth0's IPv6 address and the IPv6 pod
	// subnet, ::1 cni0's, ::2 the pod's.
	underlay6 netip.Addr
	subnet6   netip.Prefix
}

func (n node) gateway() netip.Addr  { return n.subnet.Addr().Next() }
func (n node) podIP() netip.Addr    { return n.gateway().Next() }
func (n node) gateway6() netip.Addr { return n.subnet6.Addr().Next() }
func (n node) podIP6() netip.Addr   { return n.gateway6().Next() }

// family is one IP family of the topology: a node's addresses and subnet
// of it, and the flag that picks it for ip and traceroute.
type family struct {
	name           string // as the counters name it: "ipv4", "ipv6"
	flag           string // "-4", "-6"
	subnet         func(node) netip.Prefix
	underlay       func(node) netip.Addr
	gateway, podIP func(node) netip.Addr
}

var (
	ipv4 = family{name: "ipv4", flag: "-4", subnet: func(n node) netip.Prefix { return n.subnet },
		underlay: func(n node) netip.Addr { return n.underlay }, gateway: node.gateway, podIP: node.podIP}
	ipv6 = family{name: "ipv6", flag: "-6", subnet: func(n node) netip.Prefix { return n.subnet6 },
		underlay: func(n node) netip.Addr { return n.underlay6 }, gateway: node.gateway6, podIP: node.podIP6}
)

func run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// seed builds the two-node topology with kernel routes in place, exactly as
// flannel host-gw would leave it.
func seed(t *testing.T) (a, b node) {
	testutil.RequireRoot(t)
	id := "hgwt-fp" + testutil.RandHex(t, 3)
	a = node{ns: id + "-a", pod: id + "-a-p", underlay: netip.MustParseAddr("198.18.0.11"),
		subnet: netip.MustParsePrefix("10.244.1.0/24"), pinRoot: "/sys/fs/bpf/" + id + "-a"}
	b = node{ns: id + "-b", pod: id + "-b-p", underlay: netip.MustParseAddr("198.18.0.12"),
		subnet: netip.MustParsePrefix("10.244.2.0/24"), pinRoot: "/sys/fs/bpf/" + id + "-b"}
	for _, name := range []string{a.ns, a.pod, b.ns, b.pod} {
		run(t, "ip", "netns", "add", name)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	}
	t.Cleanup(func() {
		for _, n := range []node{a, b} {
			if err := datapath.Cleanup(n.pinRoot); err != nil {
				t.Errorf("cleanup %s: %v", n.pinRoot, err)
			}
		}
	})
	// eth0 <-> eth0: the nodes are L2-adjacent.
	run(t, "ip", "link", "add", "eth0", "netns", a.ns, "type", "veth", "peer", "eth0", "netns", b.ns)
	for _, n := range []node{a, b} {
		ip := func(args ...string) { run(t, append([]string{"ip", "-n", n.ns}, args...)...) }
		ip("link", "set", "lo", "up")
		ip("addr", "add", n.underlay.String()+"/24", "dev", "eth0")
		ip("link", "set", "eth0", "up")
		ip("link", "add", "cni0", "type", "bridge")
		ip("addr", "add", fmt.Sprintf("%s/%d", n.gateway(), n.subnet.Bits()), "dev", "cni0")
		ip("link", "set", "cni0", "up")
		run(t, "ip", "netns", "exec", n.ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
		run(t, "ip", "-n", n.ns, "link", "add", "veth0", "type", "veth", "peer", "eth0", "netns", n.pod)
		ip("link", "set", "veth0", "master", "cni0", "up")
		pod := func(args ...string) { run(t, append([]string{"ip", "-n", n.pod}, args...)...) }
		pod("link", "set", "lo", "up")
		pod("addr", "add", fmt.Sprintf("%s/%d", n.podIP(), n.subnet.Bits()), "dev", "eth0")
		pod("link", "set", "eth0", "up")
		pod("route", "add", "default", "via", n.gateway().String())
	}
	addRoutes(t, ipv4, a, b)
	return a, b
}

// addRoutes adds the kernel routes of family f between a and b, as flannel
// host-gw would: each node's route to the other's pod subnet via its
// underlay address.
func addRoutes(t *testing.T, f family, a, b node) {
	for _, n := range [][2]node{{a, b}, {b, a}} {
		self, peer := n[0], n[1]
		run(t, "ip", "-n", self.ns, f.flag, "route", "replace", f.subnet(peer).String(), "via", f.underlay(peer).String(), "dev", "eth0")
	}
}

// delRoutes deletes what addRoutes added.
func delRoutes(t *testing.T, f family, a, b node) {
	for _, n := range [][2]node{{a, b}, {b, a}} {
		self, peer := n[0], n[1]
		run(t, "ip", "-n", self.ns, f.flag, "route", "del", f.subnet(peer).String())
	}
}

// attachBoth attaches the programs of a and b, each with the other as its
// peer.
func attachBoth(t *testing.T, a, b node, mode datapath.Mode) {
	t.Helper()
	attach(t, a, b, mode)
	attach(t, b, a, mode)
}

// attach loads the datapath of n with peer as its one route (of each
// family, on a dual-stack topology), as the agent would, and attaches both
// programs.
func attach(t *testing.T, n, peer node, mode datapath.Mode) {
	t.Helper()
	testutil.DoIn(t, n.ns, func() {
		dp, err := datapath.Load(datapath.Options{PinRoot: n.pinRoot, Mode: mode})
		if err != nil {
			t.Fatal(err)
		}
		defer dp.Close()
		eth0, cni0 := link(t, "eth0"), link(t, "cni0")
		cfg := datapath.NodeConfig{PodSubnet: n.subnet, Gateway: n.gateway(),
			BridgeIfindex: uint32(cni0.Attrs().Index), UnderlayIfindex: uint32(eth0.Attrs().Index),
			Conntrack: true}
		if n.subnet6.IsValid() {
			cfg.PodSubnet6, cfg.Gateway6 = n.subnet6, n.gateway6()
		}
		if err := dp.SetConfig(cfg); err != nil {
			t.Fatal(err)
		}
		if err := dp.Routes().Put(datapath.Route{Subnet: peer.subnet, NextHop: peer.underlay,
			Ifindex: uint32(eth0.Attrs().Index)}); err != nil {
			t.Fatal(err)
		}
		if peer.subnet6.IsValid() {
			if err := dp.Routes6().Put(datapath.Route{Subnet: peer.subnet6, NextHop: peer.underlay6,
				Ifindex: uint32(eth0.Attrs().Index)}); err != nil {
				t.Fatal(err)
			}
		}
		for dev, p := range map[string]datapath.Program{"cni0": datapath.FromPods, "eth0": datapath.FromUnderlay} {
			if _, err := dp.Attach(dev, p); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// link is the device name in the namespace the caller is in.
func link(t *testing.T, name string) netlink.Link {
	t.Helper()
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func detach(t *testing.T, n node) {
	t.Helper()
	testutil.DoIn(t, n.ns, func() {
		if err := datapath.Cleanup(n.pinRoot); err != nil {
			t.Fatal(err)
		}
	})
}

// redirected returns the packets of the family named fam ("ipv4",
// "ipv6") each program redirected on n.
func redirected(t *testing.T, n node, fam string) (fromPods, fromUnderlay uint64) {
	t.Helper()
	return counted(t, n, fam, datapath.FromPods, "redirect"), counted(t, n, fam, datapath.FromUnderlay, "redirect")
}

// counted returns n's packet counter for the family named fam, program
// and reason; a counter the map does not have fails t.
func counted(t *testing.T, n node, fam string, p datapath.Program, reason string) uint64 {
	t.Helper()
	var stats []datapath.Counter
	withMaps(t, n, func(maps *datapath.Maps) (err error) {
		stats, err = maps.Stats()
		return err
	})
	for _, c := range stats {
		if c.Family == fam && c.Program == string(p) && c.Reason == reason {
			return c.Packets
		}
	}
	t.Fatalf("no counter %s/%s/%s", fam, p, reason)
	return 0
}

// withMaps runs fn on n's pinned maps, failing t on an error.
func withMaps(t *testing.T, n node, fn func(*datapath.Maps) error) {
	t.Helper()
	maps, err := datapath.OpenPinned(n.pinRoot)
	if err != nil {
		t.Fatal(err)
	}
	defer maps.Close()
	if err := fn(maps); err != nil {
		t.Fatal(err)
	}
}

// ping sends count echo requests of family f from from's pod to to's pod,
// bounded in time, and reports whether all were answered.
func (f family) ping(from, to node, count int) error {
	dst := f.podIP(to)
	out, err := exec.Command("ip", "netns", "exec", from.pod, "ping", "-n", "-q",
		"-c", fmt.Sprint(count), "-i", "0.2", "-W", "1", "-w", fmt.Sprint(count+2), dst.String()).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ping from %s -> %s: %v\n%s", from.pod, dst, err, out)
	}
	return nil
}

// takeOver checks that the kernel routes alone connect the pods of a and b
// over family f, attaches both nodes' programs in mode and deletes f's
// kernel routes: from then on only the programs can carry f's traffic.
func takeOver(t *testing.T, f family, a, b node, mode datapath.Mode) {
	t.Helper()
	if err := f.ping(a, b, 2); err != nil {
		t.Fatalf("kernel routes alone must connect the pods over %s: %v", f.name, err)
	}
	attachBoth(t, a, b, mode)
	delRoutes(t, f, a, b)
}

// fallBack detaches both nodes' programs and checks that, with no kernel
// routes either, nothing carries f's traffic any more, which proves the
// programs did; then that f's kernel routes alone do, as flannel host-gw.
func fallBack(t *testing.T, f family, a, b node) {
	t.Helper()
	detach(t, a)
	detach(t, b)
	if err := f.ping(a, b, 2); err == nil {
		t.Fatalf("%s ping succeeded with neither programs nor kernel routes", f.name)
	}
	addRoutes(t, f, a, b)
	if err := f.ping(a, b, 2); err != nil {
		t.Fatalf("%s kernel routes after detach: %v", f.name, err)
	}
}

// expectThreeHops runs traceroute over family f from a's pod to b's: it
// must see a's gateway, b and b's pod, and hops 2 and 3 must cross a's
// fast path (hop 1 expires at a's gateway).
func expectThreeHops(t *testing.T, f family, a, b node) {
	t.Helper()
	before, _ := redirected(t, a, f.name)
	out, err := exec.Command("ip", "netns", "exec", a.pod, "traceroute", f.flag, "-n", "-q", "1", "-w", "1", "-m", "5",
		f.podIP(b).String()).CombinedOutput()
	if err != nil {
		t.Fatalf("traceroute %s: %v\n%s", f.flag, err, out)
	}
	want := []string{f.gateway(a).String(), f.underlay(b).String(), f.podIP(b).String()}
	if got := testutil.TracerouteHops(string(out)); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("hops %v, want %v\n%s", got, want, out)
	}
	if after, _ := redirected(t, a, f.name); after-before < 2 {
		t.Errorf("from_pods on a redirected %d %s traceroute probes, want >= 2", after-before, f.name)
	}
}

func TestFastPathCarriesTrafficWithoutKernelRoutes(t *testing.T) {
	for _, mode := range []datapath.Mode{datapath.ModeTCX, datapath.ModeTC} {
		t.Run(string(mode), func(t *testing.T) {
			a, b := seed(t)
			takeOver(t, ipv4, a, b, mode)

			const count = 5
			if err := ipv4.ping(a, b, count); err != nil {
				t.Fatalf("with programs attached and no kernel routes: %v", err)
			}
			aPods, aUnder := redirected(t, a, "ipv4")
			bPods, bUnder := redirected(t, b, "ipv4")
			// Requests: a.from_pods -> b.from_underlay; replies the other way.
			for name, got := range map[string]uint64{"a from_pods": aPods, "a from_underlay": aUnder,
				"b from_pods": bPods, "b from_underlay": bUnder} {
				if got < count {
					t.Errorf("%s redirected %d packets, want >= %d", name, got, count)
				}
			}
			fallBack(t, ipv4, a, b)
		})
	}
}

func TestTracerouteShowsThreeHops(t *testing.T) {
	a, b := seed(t)
	attachBoth(t, a, b, datapath.ModeAuto)
	expectThreeHops(t, ipv4, a, b)
}
