package agent

import (
	"context"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	promtest "github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
	"github.com/hgw-ebpf/hgw-ebpf/internal/peers"
	"github.com/hgw-ebpf/hgw-ebpf/internal/registry"
	"github.com/hgw-ebpf/hgw-ebpf/internal/testutil"
)

func addr6(s string, flags int, preferred int) netlink.Addr {
	p := netip.MustParsePrefix(s)
	a := netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 128)},
		Flags: flags, Scope: unix.RT_SCOPE_UNIVERSE, PreferedLft: preferred}
	if preferred == forever {
		a.ValidLft = forever
	}
	return a
}

const forever = 0xffffffff

// The public IPv6 is never a temporary, deprecated or failed address; a
// configured one comes before a dynamic one, a finished one before a
// tentative one; the others are each named with the reason.
func TestChoosePublicIPv6(t *testing.T) {
	linkLocal := addr6("fe80::1/64", unix.IFA_F_PERMANENT, forever)
	linkLocal.Scope = unix.RT_SCOPE_LINK
	temporary := addr6("2001:db8::aaaa/64", unix.IFA_F_TEMPORARY, 3600)
	deprecated := addr6("2001:db8::dead/64", unix.IFA_F_PERMANENT, 0)
	dadFailed := addr6("2001:db8::bad/64", unix.IFA_F_PERMANENT|unix.IFA_F_DADFAILED|unix.IFA_F_TENTATIVE, forever)
	slaac := addr6("2001:db8::5eed/64", unix.IFA_F_MANAGETEMPADDR, 86400)
	tentative := addr6("2001:db8::7/64", unix.IFA_F_PERMANENT|unix.IFA_F_TENTATIVE, forever)
	static := addr6("2001:db8::11/64", unix.IFA_F_PERMANENT, forever)
	for _, tc := range []struct {
		name  string
		addrs []netlink.Addr
		want  string
		why   string
	}{
		{"a temporary address first in the list is passed over", []netlink.Addr{temporary, linkLocal, slaac}, "2001:db8::5eed", "dynamically"},
		{"configured before dynamic", []netlink.Addr{temporary, slaac, static}, "2001:db8::11", "configured"},
		{"done before tentative", []netlink.Addr{tentative, static}, "2001:db8::11", "configured"},
		{"tentative rather than none", []netlink.Addr{temporary, tentative}, "2001:db8::7", "duplicate address detection"},
		{"none usable", []netlink.Addr{linkLocal, temporary, deprecated, dadFailed}, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, why, skipped := choosePublicIPv6(tc.addrs)
			if tc.want == "" {
				if got.IsValid() {
					t.Errorf("chose %s from %v", got, tc.addrs)
				}
			} else if got != netip.MustParseAddr(tc.want) || !strings.Contains(why, tc.why) {
				t.Errorf("chose %s (%s), want %s (%s)", got, why, tc.want, tc.why)
			}
			if len(skipped)+btoi(got.IsValid()) != len(tc.addrs) {
				t.Errorf("not chosen %v: want every other address named", skipped)
			}
		})
	}
	_, _, skipped := choosePublicIPv6([]netlink.Addr{linkLocal, temporary, deprecated, dadFailed})
	for i, want := range []string{"not global", "temporary", "deprecated", "duplicate address detection failed"} {
		if !strings.Contains(skipped[i], want) {
			t.Errorf("%s skipped as %q, want %q", tc(i), skipped[i], want)
		}
	}
}

func tc(i int) string { return []string{"link-local", "temporary", "deprecated", "DAD failed"}[i] }

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// On a device with a configured address, the temporary address the
// kernel derives from it (privacy extensions) and a deprecated one, the
// configured one is chosen; the on-link prefixes are the addresses'
// networks and the device's connected routes.
func TestResolveUnderlay6(t *testing.T) {
	e := newAgentEnv(t)
	e.carrier(t)
	e.do(t, func() {
		// Privacy addresses, and no duplicate address detection to wait for.
		for key, value := range map[string]string{"use_tempaddr": "2", "accept_dad": "0"} {
			if err := os.WriteFile("/proc/sys/net/ipv6/conf/eth0/"+key, []byte(value), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	})
	eth0, err := e.nl.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	add := func(a netlink.Addr) {
		t.Helper()
		if err := e.nl.AddrAdd(eth0, &a); err != nil {
			t.Fatalf("add %s: %v", a.IPNet, err)
		}
	}
	// A template for privacy addresses (the kernel makes a temporary one
	// from it), with a finite lifetime as SLAAC gives.
	template := addr6("fd00:198:18::5eed/64", unix.IFA_F_MANAGETEMPADDR, 3600)
	template.ValidLft = 7200
	add(template)
	deprecated := addr6("fd00:198:18::dead/64", 0, 0)
	deprecated.ValidLft = 7200
	add(deprecated)
	add(addr6("fd00:198:18::11/64", 0, forever))
	onLinkRoute := &netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: &net.IPNet{IP: net.ParseIP("fd00:198:19::"), Mask: net.CIDRMask(64, 128)}}
	if err := e.nl.RouteAdd(onLinkRoute); err != nil {
		t.Fatal(err)
	}

	var u underlay6
	var temporary netip.Addr
	for deadline := time.Now().Add(3 * time.Second); !temporary.IsValid() && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		addrs, err := e.nl.AddrList(eth0, netlink.FAMILY_V6)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range addrs {
			if a.Flags&unix.IFA_F_TEMPORARY != 0 {
				temporary, _ = netip.AddrFromSlice(a.IP)
			}
		}
	}
	e.do(t, func() {
		if u, err = resolveUnderlay6(eth0, netip.Addr{}); err != nil {
			t.Fatal(err)
		}
	})
	if !temporary.IsValid() {
		t.Fatal("the kernel made no temporary address: the test proves nothing")
	}
	if u.publicIP != netip.MustParseAddr("fd00:198:18::11") {
		t.Errorf("public IPv6 %s (%s), want the configured fd00:198:18::11; not chosen: %v", u.publicIP, u.why, u.skipped)
	}
	named := strings.Join(u.skipped, " ")
	for _, want := range []string{temporary.String() + " (temporary", "fd00:198:18::dead (deprecated", "fd00:198:18::5eed (usable"} {
		if !strings.Contains(named, want) {
			t.Errorf("not chosen %v: want %q", u.skipped, want)
		}
	}
	for _, want := range []string{"fd00:198:18::/64", "fd00:198:19::/64"} {
		if !slices.Contains(u.prefixes, netip.MustParsePrefix(want)) {
			t.Errorf("on-link %v lacks %s", u.prefixes, want)
		}
	}
	for _, p := range u.prefixes {
		if p.Addr().IsLinkLocalUnicast() || p.Addr().IsMulticast() {
			t.Errorf("on-link %v has %s", u.prefixes, p)
		}
	}
}

// A dual-stack node: the programs get its IPv6 pod subnet and gateway;
// one reconciler per family routes a dual-stack peer in both families
// (kernel and the family's map) and an IPv4-only peer (a flanneld node
// without IPv6) in IPv4 only; the subnet file has the IPv6 lines; /readyz
// waits for both families; the metrics count per family; flanneld's
// chains are in iptables and ip6tables, and go from both.
func TestDualStackNode(t *testing.T) {
	e := newAgentEnv(t)
	eth0, err := e.nl.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	a := addr6("fd00:198:18::11/64", unix.IFA_F_NODAD, forever)
	if err := e.nl.AddrAdd(eth0, &a); err != nil {
		t.Fatal(err)
	}
	e.carrier(t)
	cfg := e.config(DatapathEBPF)
	cfg.SubnetFile = filepath.Join(t.TempDir(), "subnet.env")
	cfg.IPMasq = true
	n := e.node(t, cfg, probes{
		conntrack: func() (bool, error) { return true, nil }, conntrackLoaded: func() bool { return true },
		loadConntrack: func() error { return nil }, engines: noEngines,
	})
	self := registry.Lease{Key: "self", Subnet: netip.MustParsePrefix("10.244.3.0/24"), IPv6Subnet: netip.MustParsePrefix("fd00:10:244:3::/64"),
		PublicIP: netip.MustParseAddr("198.18.0.11"), PublicIPv6: netip.MustParseAddr("fd00:198:18::11")}
	peer := registry.Lease{Key: "peer", Subnet: netip.MustParsePrefix("10.244.4.0/24"), IPv6Subnet: netip.MustParsePrefix("fd00:10:244:4::/64"),
		PublicIP: netip.MustParseAddr("198.18.0.12"), PublicIPv6: netip.MustParseAddr("fd00:198:18::12")}
	v4only := registry.Lease{Key: "v4only", Subnet: netip.MustParsePrefix("10.244.5.0/24"), PublicIP: netip.MustParseAddr("198.18.0.13")}
	n.network6 = netip.MustParsePrefix("fd00:10:244::/56")
	n.setOwn(self)
	e.do(t, func() {
		if n.ul6, err = resolveUnderlay6(eth0, netip.Addr{}); err != nil {
			t.Fatal(err)
		}
		if err := n.startIPTables(); err != nil {
			t.Fatal(err)
		}
		if err := n.startDatapath(); err != nil {
			t.Fatal(err)
		}
		if err := n.startReconcilers(); err != nil {
			t.Fatal(err)
		}
	})
	for tool, want := range map[string][]string{
		"iptables-save":  {"-A FLANNEL-FWD -s 10.244.0.0/16", "-A FLANNEL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4"},
		"ip6tables-save": {"-A FLANNEL-FWD -s fd00:10:244::/56", "-A FLANNEL-POSTRTG -s fd00:10:244::/56 ! -d ff00::/8"},
	} {
		out := e.output(t, tool)
		for _, w := range want {
			if !strings.Contains(out, w) {
				t.Errorf("%s lacks %q:\n%s", tool, w, out)
			}
		}
	}
	if c := e.programConfig(t); c.PodSubnet6 != self.IPv6Subnet || c.Gateway6 != netip.MustParseAddr("fd00:10:244:3::1") {
		t.Errorf("config %+v: want the IPv6 pod subnet %s and gateway ::1", c, self.IPv6Subnet)
	}
	if len(n.families) != 2 || n.families[1].fam != peers.IPv6 {
		t.Fatalf("reconcilers %v: want IPv4 and IPv6", n.families)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, f := range n.families {
		go f.rec.Run(ctx)
	}
	leases := registry.NewTable()
	for _, l := range []registry.Lease{peer, self, v4only} {
		leases.Put(l)
	}
	e.do(t, func() { n.onChange(registry.Change{Full: true, Leases: leases}) })
	select {
	case <-n.firstApply:
	case <-time.After(5 * time.Second):
		t.Fatalf("routes not applied: %s", n.ready.Ready())
	}
	if !n.ready.Met(condApplied) || !n.ready.Met(condApplied6) {
		t.Errorf("readiness %q: want both families' routes applied", n.ready.Ready())
	}
	if notes := strings.Join(n.ready.Notes(), "\n"); !strings.Contains(notes, "IPv6: pod subnet fd00:10:244:3::/64, public IPv6 fd00:198:18::11 (a global address configured on the device)") {
		t.Errorf("/readyz notes %q: want the IPv6 side named", notes)
	}

	kernel, err := peers.KernelRoutes(&e.ns)
	if err != nil {
		t.Fatal(err)
	}
	maps, err := datapath.OpenPinned(e.root)
	if err != nil {
		t.Fatal(err)
	}
	defer maps.Close()
	m4, err := maps.Routes().List()
	if err != nil {
		t.Fatal(err)
	}
	m6, err := maps.Routes6().List()
	if err != nil {
		t.Fatal(err)
	}
	route := func(subnet, via string) datapath.Route {
		return datapath.Route{Subnet: netip.MustParsePrefix(subnet), NextHop: netip.MustParseAddr(via), Ifindex: uint32(eth0.Attrs().Index)}
	}
	want4 := []datapath.Route{route("10.244.4.0/24", "198.18.0.12"), route("10.244.5.0/24", "198.18.0.13")}
	want6 := []datapath.Route{route("fd00:10:244:4::/64", "fd00:198:18::12")}
	sortRoutes := func(rs []datapath.Route) []datapath.Route {
		slices.SortFunc(rs, func(a, b datapath.Route) int { return a.Subnet.Addr().Compare(b.Subnet.Addr()) })
		return rs
	}
	if got := sortRoutes(kernel); !slices.Equal(got, append(slices.Clone(want4), want6...)) {
		t.Errorf("kernel routes of ours %v, want %v and %v", got, want4, want6)
	}
	if got := sortRoutes(m4); !slices.Equal(got, want4) {
		t.Errorf("routes map %v, want %v", got, want4)
	}
	if got := sortRoutes(m6); !slices.Equal(got, want6) {
		t.Errorf("routes6 map %v, want %v", got, want6)
	}

	for _, c := range []struct {
		labels []string
		want   float64
	}{{[]string{"ipv4"}, 2}, {[]string{"ipv6"}, 1}} {
		if got := promtest.ToFloat64(n.metrics.Peers.WithLabelValues(c.labels...)); got != c.want {
			t.Errorf("hgw_peers%v = %v, want %v", c.labels, got, c.want)
		}
	}
	if got := promtest.ToFloat64(n.metrics.LeasesSkipped.WithLabelValues("ipv6", peers.ReasonNoIPv6)); got != 1 {
		t.Errorf("hgw_leases_skipped{ipv6,no_ipv6} = %v, want 1 (the IPv4-only lease)", got)
	}

	// Later changes are followed lease by lease: a dual-stack peer that
	// joins is routed in both families; one whose subnet overlaps a
	// peer's is skipped (the smaller key wins) and counted; when the peer
	// leaves, the other one's subnet is routed in its place.
	joined := registry.Lease{Key: "q-joined", Subnet: netip.MustParsePrefix("10.244.6.0/24"), IPv6Subnet: netip.MustParsePrefix("fd00:10:244:6::/64"),
		PublicIP: netip.MustParseAddr("198.18.0.14"), PublicIPv6: netip.MustParseAddr("fd00:198:18::14")}
	clash := registry.Lease{Key: "z-clash", Subnet: netip.MustParsePrefix("10.244.4.0/25"), PublicIP: netip.MustParseAddr("198.18.0.15")}
	change := func(keys ...string) { e.do(t, func() { n.onChange(registry.Change{Keys: keys, Leases: leases}) }) }
	routed := func(what string, want ...datapath.Route) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			kernel, err := peers.KernelRoutes(&e.ns)
			if err != nil {
				t.Fatal(err)
			}
			m4, _ := maps.Routes().List()
			m6, _ := maps.Routes6().List()
			if got := sortRoutes(kernel); slices.Equal(got, sortRoutes(slices.Clone(want))) && slices.Equal(sortRoutes(append(m4, m6...)), got) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: kernel routes %v, maps %v and %v; want %v", what, kernel, m4, m6, want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	leases.Put(joined)
	leases.Put(clash)
	change(joined.Key, clash.Key)
	routed("a peer joined, another clashes", append(slices.Clone(want4), want6[0], route("10.244.6.0/24", "198.18.0.14"), route("fd00:10:244:6::/64", "fd00:198:18::14"))...)
	if got := promtest.ToFloat64(n.metrics.LeasesSkipped.WithLabelValues("ipv4", peers.ReasonOverlap)); got != 1 {
		t.Errorf("hgw_leases_skipped{ipv4,overlap} = %v, want 1", got)
	}
	if got := promtest.ToFloat64(n.metrics.Peers.WithLabelValues("ipv4")); got != 3 {
		t.Errorf("hgw_peers{ipv4} = %v, want 3", got)
	}
	leases.Remove(peer.Key)
	change(peer.Key)
	routed("the peer left", route("10.244.4.0/25", "198.18.0.15"), want4[1], route("10.244.6.0/24", "198.18.0.14"), route("fd00:10:244:6::/64", "fd00:198:18::14"))
	if got := promtest.CollectAndCount(n.metrics.LeasesSkipped); got != 1 {
		t.Errorf("%d hgw_leases_skipped series, want the IPv6 no_ipv6 one alone (no overlap any more)", got)
	}
	if got := promtest.ToFloat64(n.metrics.LeasesSkipped.WithLabelValues("ipv6", peers.ReasonNoIPv6)); got != 2 {
		t.Errorf("hgw_leases_skipped{ipv6,no_ipv6} = %v, want 2 (the IPv4-only leases)", got)
	}

	if err := n.writeSubnetFile(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(cfg.SubnetFile)
	if err != nil {
		t.Fatal(err)
	}
	want := "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_IPV6_NETWORK=fd00:10:244::/56\n" +
		"FLANNEL_IPV6_SUBNET=fd00:10:244:3::1/64\nFLANNEL_MTU=1500\nFLANNEL_IPMASQ=true\n"
	if string(b) != want {
		t.Errorf("subnet file:\n%s\nwant:\n%s", b, want)
	}
	testutil.Do(t, e.ns, func() {
		for _, f := range n.families {
			if err := f.rec.RemoveAll(); err != nil {
				t.Error(err)
			}
		}
		if err := n.removeIPTables(); err != nil {
			t.Error(err)
		}
	})
	for _, tool := range []string{"iptables-save", "ip6tables-save"} {
		if out := e.output(t, tool); strings.Contains(out, "FLANNEL") {
			t.Errorf("%s after removing flanneld's rules:\n%s", tool, out)
		}
	}
}

// output runs a command inside the env's namespace.
func (e *agentEnv) output(t *testing.T, argv ...string) string {
	t.Helper()
	var out []byte
	e.do(t, func() {
		var err error
		if out, err = exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", argv, err, out)
		}
	})
	return string(out)
}

// carrier brings eth0's peer up: routes through a device without carrier
// are refused.
func (e *agentEnv) carrier(t *testing.T) {
	t.Helper()
	peer, err := e.nl.LinkByName("eth0-peer")
	if err != nil {
		t.Fatal(err)
	}
	if err := e.nl.LinkSetUp(peer); err != nil {
		t.Fatal(err)
	}
}
