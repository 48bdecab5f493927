package fastpath

// IPv6 on the seed topology: the nodes' eth0 and the pods get IPv6
// addresses too, the kernel routes for the peer's IPv6 subnet are added as
// flannel host-gw adds them, and the programs carry IPv6 between the pods
// as they carry IPv4.

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
	"github.com/hgw-ebpf/hgw-ebpf/internal/testutil"
)

// dualStack gives the seed topology IPv6: underlay fd00:198:18::/64, pod
// subnets fd00:10:244:N::/64, forwarding on, and the kernel routes to the
// peer's IPv6 subnet. Addresses skip duplicate address detection, which
// would keep them unusable for a second or two.
func dualStack(t *testing.T, a, b *node) {
	t.Helper()
	a.underlay6, a.subnet6 = netip.MustParseAddr("fd00:198:18::11"), netip.MustParsePrefix("fd00:10:244:1::/64")
	b.underlay6, b.subnet6 = netip.MustParseAddr("fd00:198:18::12"), netip.MustParsePrefix("fd00:10:244:2::/64")
	for _, n := range []*node{a, b} {
		ip := func(args ...string) { run(t, append([]string{"ip", "-n", n.ns, "-6"}, args...)...) }
		run(t, "ip", "netns", "exec", n.ns, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
		ip("addr", "add", n.underlay6.String()+"/64", "dev", "eth0", "nodad")
		ip("addr", "add", fmt.Sprintf("%s/%d", n.gateway6(), n.subnet6.Bits()), "dev", "cni0", "nodad")
		pod := func(args ...string) { run(t, append([]string{"ip", "-n", n.pod, "-6"}, args...)...) }
		pod("addr", "add", fmt.Sprintf("%s/%d", n.podIP6(), n.subnet6.Bits()), "dev", "eth0", "nodad")
		pod("route", "add", "default", "via", n.gateway6().String())
	}
	addRoutes(t, ipv6, *a, *b)
	for _, name := range []string{a.ns, a.pod, b.ns, b.pod} {
		settle(t, name)
	}
}

// settle waits until no address in the namespace is tentative: the
// link-local ones the kernel gave the devices as they came up are, for
// about a second, and neighbour solicitations (which need one as source)
// are not sent before, so the first packets to an unresolved neighbour
// would wait a second or more: longer than traceroute waits.
func settle(t *testing.T, ns string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		out := run(t, "ip", "-n", ns, "-6", "addr", "show", "tentative")
		if strings.TrimSpace(out) == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("addresses in %s still tentative after 10 s:\n%s", ns, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// tcpEcho6 sends size bytes over a TCP connection from's pod opens to an
// echo server in to's pod, and checks that the same bytes come back. The
// sockets are made on threads inside the pods' namespaces; it gives up
// after 10 s.
func tcpEcho6(t *testing.T, from, to node, size int) error {
	t.Helper()
	var ln net.Listener
	var err error
	testutil.DoIn(t, to.pod, func() { ln, err = net.Listen("tcp6", net.JoinHostPort(to.podIP6().String(), "0")) })
	if err != nil {
		return fmt.Errorf("listen in %s: %w", to.pod, err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		io.Copy(c, c)
	}()
	var conn net.Conn
	testutil.DoIn(t, from.pod, func() {
		d := net.Dialer{Timeout: 5 * time.Second}
		conn, err = d.DialContext(context.Background(), "tcp6", ln.Addr().String())
	})
	if err != nil {
		return fmt.Errorf("connect %s -> %s: %w", from.podIP6(), ln.Addr(), err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	sent := make([]byte, size)
	for i := range sent {
		sent[i] = byte(i * 31)
	}
	go conn.Write(sent)
	got := make([]byte, size)
	if _, err := io.ReadFull(conn, got); err != nil {
		return fmt.Errorf("read the echo back: %w", err)
	}
	if !bytes.Equal(got, sent) {
		return fmt.Errorf("the echo differs from what was sent")
	}
	return nil
}

// IPv6 ping and TCP between the pods of two nodes on the fast path: with
// the kernel's IPv6 routes removed, only the programs can carry them.
func TestIPv6FastPathCarriesPingAndTCP(t *testing.T) {
	for _, mode := range []datapath.Mode{datapath.ModeTCX, datapath.ModeTC} {
		t.Run(string(mode), func(t *testing.T) {
			a, b := seed(t)
			dualStack(t, &a, &b)
			takeOver(t, ipv6, a, b, mode)
			// b knows its pod: packets for it go straight in with
			// bpf_redirect_peer; a's pod gets them through a's bridge.
			knowPod6(t, b)

			const count = 5
			if err := ipv6.ping(a, b, count); err != nil {
				t.Fatalf("IPv6 with programs attached and no kernel routes: %v", err)
			}
			if err := tcpEcho6(t, a, b, 1<<20); err != nil {
				t.Fatalf("IPv6 TCP with programs attached and no kernel routes: %v", err)
			}
			// The TCP transfer alone is hundreds of segments.
			for name, got := range map[string]uint64{
				"a from_pods redirect":          counted(t, a, "ipv6", datapath.FromPods, "redirect"),
				"a from_underlay redirect":      counted(t, a, "ipv6", datapath.FromUnderlay, "redirect"),
				"b from_pods redirect":          counted(t, b, "ipv6", datapath.FromPods, "redirect"),
				"b from_underlay redirect_peer": counted(t, b, "ipv6", datapath.FromUnderlay, "redirect_peer"),
			} {
				if got < count+10 {
					t.Errorf("%s: %d IPv6 packets, want > %d", name, got, count+10)
				}
			}
			// IPv4 still works beside it, on its own counters.
			if err := ipv4.ping(a, b, 2); err != nil {
				t.Errorf("IPv4 beside IPv6: %v", err)
			}

			fallBack(t, ipv6, a, b)
		})
	}
}

// knowPod6 writes n's pod's IPv6 endpoint entry, as hgw-cni would: its
// host-side veth, its MAC, the bridge's MAC.
func knowPod6(t *testing.T, n node) {
	t.Helper()
	var podMAC net.HardwareAddr
	testutil.DoIn(t, n.pod, func() { podMAC = link(t, "eth0").Attrs().HardwareAddr })
	testutil.DoIn(t, n.ns, func() {
		veth, br := link(t, "veth0"), link(t, "cni0")
		withMaps(t, n, func(maps *datapath.Maps) error {
			return maps.Endpoints().Put(datapath.Endpoint{IP: n.podIP6(), Ifindex: uint32(veth.Attrs().Index),
				PodMAC: podMAC, GatewayMAC: br.Attrs().HardwareAddr})
		})
	})
}

// The hop limit is handled as a router handles it: traceroute6 sees three
// hops, the first node's gateway, the second node, the pod.
func TestTraceroute6ShowsThreeHops(t *testing.T) {
	a, b := seed(t)
	dualStack(t, &a, &b)
	attachBoth(t, a, b, datapath.ModeAuto)
	expired := counted(t, a, "ipv6", datapath.FromPods, "ttl_expired")
	expectThreeHops(t, ipv6, a, b)
	// Hop 1 expired at a's from_pods (the kernel answered it).
	if d := counted(t, a, "ipv6", datapath.FromPods, "ttl_expired") - expired; d < 1 {
		t.Errorf("a's from_pods counted %d IPv6 probes as ttl_expired, want >= 1", d)
	}
}

// A packet over the egress MTU is left to the kernel, which answers the
// pod with ICMPv6 packet too big (IPv6 routers never fragment); one that
// fits takes the fast path.
func TestOverMTUIPv6GetsPacketTooBig(t *testing.T) {
	a, b := seed(t)
	dualStack(t, &a, &b)
	for _, n := range []node{a, b} {
		run(t, "ip", "-n", n.ns, "link", "set", "eth0", "mtu", "1400")
	}
	attachBoth(t, a, b, datapath.ModeAuto)
	tooBig := counted(t, a, "ipv6", datapath.FromPods, "too_big")
	// 40 + 8 + 1402 = 1450 bytes: over eth0's 1400, within the pod's 1500.
	out, _ := exec.Command("ip", "netns", "exec", a.pod, "ping", "-6", "-n", "-c", "1", "-W", "2", "-M", "do",
		"-s", "1402", b.podIP6().String()).CombinedOutput()
	if want := "From " + a.gateway6().String() + " icmp_seq=1 Packet too big: mtu=1400"; !strings.Contains(string(out), want) {
		t.Errorf("a 1450-byte IPv6 packet through a 1400-byte underlay: want %q (the node's ICMPv6 packet too big), got\n%s", want, out)
	}
	if d := counted(t, a, "ipv6", datapath.FromPods, "too_big") - tooBig; d < 1 {
		t.Errorf("a's from_pods counted %d IPv6 packets as too_big, want >= 1", d)
	}
	// The pod learned the path MTU: its next big ping is sent in fragments
	// (the kernel's, from_pods leaves fragments to it), and small ones are
	// fast.
	before, _ := redirected(t, a, "ipv6")
	if err := ipv6.ping(a, b, 3); err != nil {
		t.Fatal(err)
	}
	if after, _ := redirected(t, a, "ipv6"); after-before < 3 {
		t.Errorf("from_pods on a redirected %d small IPv6 pings, want >= 3", after-before)
	}
}
