package datapath_test

// BPF_PROG_TEST_RUN tests of both programs for IPv6: every verdict, the
// packet left behind (hop limit one less, nothing else changed) and the one
// counter each decision moves, under family ipv6. The IPv4 tests of the
// same rules are in prog_test.go and flow_test.go.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
)

// Each IPv6 test address is the twin of an IPv4 one, so that the two
// families' tests read alike: fd00:10:244:1::5 for 10.244.1.5,
// fd00:10:244:1::/64 for 10.244.1.0/24 (lpmWide6, fd00:10:245::/48, leaves
// through eth1 and lpmNarrow6, fd00:10:245:3::/64, through eth0, as their
// twins do).
var (
	podSubnet6 = twin6Prefix(podSubnet)
	gateway6   = twin6(gateway)
	localPod6  = twin6(localPod)
	localPod6b = twin6(localPod2)
	peerPod6   = twin6(peerPod)
	lpmWide6   = twin6Prefix(lpmWide)
	lpmNarrow6 = twin6Prefix(lpmNarrow)
	nodeIP6    = twin6(nodeIP)
	peerNode6  = twin6(peerNode)
)

// twin6 is fd00:a:b:c::d for a.b.c.d.
func twin6(a netip.Addr) netip.Addr {
	b := a.As4()
	return netip.MustParseAddr(fmt.Sprintf("fd00:%d:%d:%d::%d", b[0], b[1], b[2], b[3]))
}

// twin6Prefix is the twin of an IPv4 prefix of whole octets: 16 bits for
// fd00, then 16 for each octet.
func twin6Prefix(p netip.Prefix) netip.Prefix {
	return netip.PrefixFrom(twin6(p.Addr()), 16+2*p.Bits())
}

// newRunEnv6 is newRunEnv with the node's IPv6 pod subnet configured and
// the twins of its three routes beside them.
func newRunEnv6(t testing.TB, opts ...datapath.Options) *runEnv {
	t.Helper()
	e := newRunEnv(t, true, opts...)
	e.cfg.PodSubnet6, e.cfg.Gateway6 = podSubnet6, gateway6
	if err := e.dp.SetConfig(e.cfg); err != nil {
		t.Fatal(err)
	}
	for _, r := range e.peerRoutes() {
		r.Subnet, r.NextHop = twin6Prefix(r.Subnet), twin6(r.NextHop)
		if err := e.dp.Routes6().Put(r); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

type frame6Opt func(h *ipv6Header)

func hops(v uint8) frame6Opt { return func(h *ipv6Header) { h.HopLimit = v } }

func frame6(h ipv6Header, l4 []byte) []byte {
	return ether(macHost, macPod, etherTypeIPv6, ipv6(h, l4))
}

// udp6Frame is a UDP datagram from src to dst, padded so that the frame is
// size bytes when size is larger than the headers need.
func udp6Frame(src, dst netip.Addr, size int, opts ...frame6Opt) []byte {
	h := ipv6Header{Src: src, Dst: dst, HopLimit: 64, NextHeader: protoUDP, TrafficClass: 0xb8, FlowLabel: 0x12345}
	for _, o := range opts {
		o(&h)
	}
	return frame6(h, udp(40000, 5201, udpPayload(size-ethLen-ipv6Len)))
}

const protoICMPv6 = 58

// routed6 is what a router makes of an IPv6 frame: hop limit one less,
// nothing else (IPv6 has no header checksum).
func routed6(frame []byte) []byte {
	out := bytes.Clone(frame)
	out[ethLen+7]--
	return out
}

func TestForwardsIPv6ToRemotePodSubnet(t *testing.T) {
	e := newRunEnv6(t)
	e.forward(t, datapath.FromPods, udp6Frame(localPod6, peerPod6, 0))
	e.forward(t, datapath.FromPods, flowFrame(protoTCP, localPod6, peerPod6, false))
	e.forward(t, datapath.FromPods, flowFrame(protoICMPv6, localPod6, peerPod6, false))
	e.forward(t, datapath.FromPods, flowFrame(protoICMPv6, localPod6, peerPod6, true))
	// A frame longer than its payload length (padding after the packet):
	// the padding is not part of the packet and stays.
	padded := append(udp6Frame(localPod6, peerPod6, 0), 0xee, 0xee, 0xee, 0xee)
	e.forward(t, datapath.FromPods, padded)
}

func TestForwardsIPv6ToLocalPods(t *testing.T) {
	e := newRunEnv6(t)
	e.forward(t, datapath.FromUnderlay, udp6Frame(peerPod6, localPod6, 0))
	e.forward(t, datapath.FromUnderlay, udp6Frame(peerPod6, netip.MustParseAddr("fd00:10:244:1:ffff:ffff:ffff:ffff"), 0))
	e.forward(t, datapath.FromUnderlay, flowFrame(protoTCP, peerPod6, localPod6, true))
	// From a pod behind the wide route, whose own subnet has no entry.
	e.forward(t, datapath.FromUnderlay, frame6(ipv6Header{Src: netip.MustParseAddr("fd00:10:245:77::9"), Dst: localPod6,
		HopLimit: 2, NextHeader: protoICMPv6}, icmpEchoMsg(icmp6EchoRequest, 7, 3)))
}

// A known pod gets its packets with bpf_redirect_peer and the MACs its
// gateway would write; an unknown one through the bridge.
func TestDeliversIPv6ToKnownPodWithRedirectPeer(t *testing.T) {
	e := newRunEnv6(t)
	e.addEndpoint(t, "vethpod1", localPod6, macPod)
	for _, f := range [][]byte{
		udp6Frame(peerPod6, localPod6, 0),
		flowFrame(protoTCP, peerPod6, localPod6, true),
		flowFrame(protoICMPv6, peerPod6, localPod6, false),
	} {
		want := routed6(f)
		copy(want[0:6], macPod[:])
		copy(want[6:12], macGateway[:])
		out := e.expect(t, datapath.FromUnderlay, f, nil, tcActRedirect, "redirect_peer")
		if !bytes.Equal(out, want) {
			t.Errorf("delivered frame differs from MACs rewritten + hop limit - 1:\n got % x\nwant % x", out, want)
		}
	}
	e.forward(t, datapath.FromUnderlay, udp6Frame(peerPod6, localPod6b, 0))
	// The IPv4 entry of the same pod is another entry.
	e.forward(t, datapath.FromUnderlay, udpFrame(peerPod, localPod))
	e.pass(t, datapath.FromUnderlay, udp6Frame(peerPod6, localPod6, 0, hops(1)), "ttl_expired")
}

// At its veth a dual-stack pod sends from either of its own addresses,
// each vouched for by its own endpoint entry.
func TestFromPodsAtTheVethOfADualStackPod(t *testing.T) {
	e := newRunEnv6(t)
	ep := e.addEndpoint(t, "vethpod1", localPod6, macPod)
	e.putEndpoint(t, datapath.Endpoint{IP: localPod, Ifindex: ep.Ifindex, PodMAC: ep.PodMAC, GatewayMAC: ep.GatewayMAC})
	other := e.addEndpoint(t, "vethpod2", localPod6b, macPod2)
	atVeth := &skbContext{Ifindex: ep.Ifindex}
	toGateway := func(f []byte) []byte {
		copy(f[0:6], macGateway[:])
		return f
	}
	e.forwardCtx(t, datapath.FromPods, toGateway(udp6Frame(localPod6, peerPod6, 0)), atVeth)
	e.forwardCtx(t, datapath.FromPods, toGateway(udpFrame(localPod, peerPod)), atVeth)
	// The other pod's address, an unknown one, the gateway's: spoofed.
	for _, src := range []netip.Addr{localPod6b, netip.MustParseAddr("fd00:10:244:1::77"), gateway6, peerPod6} {
		e.passCtx(t, datapath.FromPods, toGateway(udp6Frame(src, peerPod6, 0)), atVeth, "spoofed_src")
	}
	// To another MAC on the bridge: switching, not routing.
	f := udp6Frame(localPod6, peerPod6, 0)
	copy(f[0:6], macForeign[:])
	e.passCtx(t, datapath.FromPods, f, atVeth, "not_for_host")
	e.forwardCtx(t, datapath.FromPods, toGateway(udp6Frame(localPod6b, peerPod6, 0)), &skbContext{Ifindex: other.Ifindex})
}

// fd00:10:245:3::/64 goes out of eth0 (MTU 1500), the rest of
// fd00:10:245::/48 out of eth1 (MTU 1400): a 1450-byte packet fits only the
// first, so the verdict shows which entry the lookup returned.
func TestLongestPrefixMatchIPv6(t *testing.T) {
	e := newRunEnv6(t)
	const size = ethLen + 1450
	narrow, wide := netip.MustParseAddr("fd00:10:245:3::7"), netip.MustParseAddr("fd00:10:245:4::7")
	e.forward(t, datapath.FromPods, udp6Frame(localPod6, narrow, size))
	e.pass(t, datapath.FromPods, udp6Frame(localPod6, wide, size), "too_big")
	e.forward(t, datapath.FromPods, udp6Frame(localPod6, wide, 0))
	if err := e.dp.Routes6().Delete(lpmNarrow6); err != nil {
		t.Fatal(err)
	}
	e.pass(t, datapath.FromPods, udp6Frame(localPod6, narrow, size), "too_big")
	if err := e.dp.Routes6().Delete(lpmWide6); err != nil {
		t.Fatal(err)
	}
	e.pass(t, datapath.FromPods, udp6Frame(localPod6, narrow, 0), "no_route")
}

// Hop limit 1 or 0 would expire here: the kernel answers time exceeded.
// Every other value leaves with one less, through both programs.
func TestHopLimit(t *testing.T) {
	e := newRunEnv6(t)
	for _, v := range []uint8{1, 0} {
		e.pass(t, datapath.FromPods, udp6Frame(localPod6, peerPod6, 0, hops(v)), "ttl_expired")
		e.pass(t, datapath.FromUnderlay, udp6Frame(peerPod6, localPod6, 0, hops(v)), "ttl_expired")
	}
	for _, v := range []uint8{2, 3, 64, 128, 254, 255} {
		e.forward(t, datapath.FromPods, udp6Frame(localPod6, peerPod6, 0, hops(v)))
		e.forward(t, datapath.FromUnderlay, udp6Frame(peerPod6, localPod6, 0, hops(v)))
	}
}

func TestMTUIPv6(t *testing.T) {
	e := newRunEnv6(t)
	e.forward(t, datapath.FromPods, udp6Frame(localPod6, peerPod6, 1514))
	e.pass(t, datapath.FromPods, udp6Frame(localPod6, peerPod6, 1515), "too_big")
	e.forward(t, datapath.FromUnderlay, udp6Frame(peerPod6, localPod6, 1514))
	e.pass(t, datapath.FromUnderlay, udp6Frame(peerPod6, localPod6, 1515), "too_big")

	// A GRO'd packet is checked per segment: 40 + 8 + 1452 = 1500 fits.
	gso := &skbContext{GSOSegs: 2, GSOSize: 1452}
	e.forwardCtx(t, datapath.FromPods, udp6Frame(localPod6, peerPod6, 3000), gso)
	e.forwardCtx(t, datapath.FromUnderlay, udp6Frame(peerPod6, localPod6, 3000), gso)
	e.passCtx(t, datapath.FromPods, udp6Frame(localPod6, peerPod6, 3000), &skbContext{GSOSegs: 2, GSOSize: 1453}, "too_big")
	// TCP: 40 + 20 + 1440.
	tcpSeg := func(src, dst netip.Addr, n int) []byte {
		return frame6(ipv6Header{Src: src, Dst: dst, HopLimit: 64, NextHeader: protoTCP}, append(tcp(40000, 80, 0x10), make([]byte, n)...))
	}
	e.forwardCtx(t, datapath.FromPods, tcpSeg(localPod6, peerPod6, 2880), &skbContext{GSOSegs: 2, GSOSize: 1440})
	e.passCtx(t, datapath.FromUnderlay, tcpSeg(peerPod6, localPod6, 2882), &skbContext{GSOSegs: 2, GSOSize: 1441}, "too_big")

	// A route to a device that no longer exists: the kernel decides.
	gone := netip.MustParsePrefix("fd00:10:244:9::/64")
	if err := e.dp.Routes6().Put(datapath.Route{Subnet: gone, NextHop: netip.MustParseAddr("fd00:198:18::19"), Ifindex: 999}); err != nil {
		t.Fatal(err)
	}
	e.pass(t, datapath.FromPods, udp6Frame(localPod6, netip.MustParseAddr("fd00:10:244:9::9"), 0), "too_big")
}

// BIG TCP: a GSO packet beyond 64 KB says payload length 0. Without GSO a
// TCP, UDP or ICMPv6 packet of length 0 has no L4 header: corrupt.
func TestPayloadLengthZero(t *testing.T) {
	e := newRunEnv6(t)
	f := udp6Frame(localPod6, peerPod6, 1600)
	binary.BigEndian.PutUint16(f[ethLen+4:], 0)
	e.pass(t, datapath.FromPods, f, "malformed")
	e.forwardCtx(t, datapath.FromPods, f, &skbContext{GSOSegs: 2, GSOSize: 1400})
}

func TestMalformedIPv6(t *testing.T) {
	e := newRunEnv6(t)
	v4in6 := udp6Frame(localPod6, peerPod6, 0)
	v4in6[ethLen] = 4<<4 | v4in6[ethLen]&0x0f
	longer := udp6Frame(localPod6, peerPod6, 0)
	binary.BigEndian.PutUint16(longer[ethLen+4:], uint16(len(longer)-ethLen-ipv6Len+1))
	// 2 bytes of TCP: conntrack's lookup needs both ports.
	tcp2 := frame6(ipv6Header{Src: localPod6, Dst: peerPod6, HopLimit: 64, NextHeader: protoTCP}, tcp(40000, 80, 0x02)[:2])
	for name, f := range map[string][]byte{
		"version 4 in an IPv6 frame":        v4in6,
		"payload length beyond the frame":   longer,
		"payload length 0 without GSO":      frame6(ipv6Header{Src: localPod6, Dst: peerPod6, HopLimit: 64, NextHeader: protoUDP}, nil),
		"ICMPv6 without a header (padding)": append(frame6(ipv6Header{Src: localPod6, Dst: peerPod6, HopLimit: 64, NextHeader: protoICMPv6}, nil), 0),
		"2 bytes of TCP":                    tcp2,
	} {
		t.Run(name, func(t *testing.T) {
			e.pass(t, datapath.FromPods, f, "malformed")
			g := bytes.Clone(f)
			copy(g[ethLen+8:], peerPod6.AsSlice())
			copy(g[ethLen+24:], localPod6.AsSlice())
			e.pass(t, datapath.FromUnderlay, g, "malformed")
		})
	}
	// Without the lookup the ports are never read: a router forwards what
	// it does not need to look into.
	e.setConfig(t, func(c *datapath.NodeConfig) { c.Conntrack, c.IgnoreConntrack = false, true })
	e.forward(t, datapath.FromPods, tcp2)
}

// Extension headers and fragments go to the kernel, whatever follows them:
// the first next header decides.
func TestExtensionHeadersAndFragments(t *testing.T) {
	e := newRunEnv6(t)
	payload := udp(40000, 5201, []byte("behind an extension header"))
	for _, c := range []struct {
		name   string
		next   uint8
		chain  []byte
		reason string
	}{
		{"hop-by-hop", 0, extHeader(protoUDP, payload), "ext_header"},
		{"routing", 43, extHeader(protoUDP, payload), "ext_header"},
		{"destination options", 60, extHeader(protoUDP, payload), "ext_header"},
		{"ESP", 50, make([]byte, 24), "ext_header"},
		{"AH", 51, extHeader(protoUDP, payload), "ext_header"},
		{"no next header", 59, nil, "ext_header"},
		{"mobility", 135, extHeader(59, nil), "ext_header"},
		{"HIP", 139, extHeader(59, nil), "ext_header"},
		{"shim6", 140, extHeader(59, nil), "ext_header"},
		{"experimental 253", 253, extHeader(protoUDP, payload), "ext_header"},
		{"experimental 254", 254, extHeader(protoUDP, payload), "ext_header"},
		{"hop-by-hop, routing, UDP", 0, extHeader(43, extHeader(protoUDP, payload)), "ext_header"},
		{"destination options, fragment, TCP", 60, extHeader(44, fragmentHeader(protoTCP, 0, true, 7, tcp(1, 2, 0x02))), "ext_header"},
		{"first fragment", 44, fragmentHeader(protoUDP, 0, true, 7, payload), "fragment"},
		{"later fragment", 44, fragmentHeader(protoUDP, 185, false, 7, []byte("rest of it")), "fragment"},
		{"atomic fragment", 44, fragmentHeader(protoUDP, 0, false, 7, payload), "fragment"},
		{"fragment, then hop-by-hop", 44, fragmentHeader(0, 0, true, 7, extHeader(protoUDP, payload)), "fragment"},
	} {
		t.Run(c.name, func(t *testing.T) {
			out := frame6(ipv6Header{Src: localPod6, Dst: peerPod6, HopLimit: 64, NextHeader: c.next}, c.chain)
			in := frame6(ipv6Header{Src: peerPod6, Dst: localPod6, HopLimit: 64, NextHeader: c.next}, c.chain)
			e.pass(t, datapath.FromPods, out, c.reason)
			e.pass(t, datapath.FromUnderlay, in, c.reason)
		})
	}
	// Even with the conntrack check off they stay the kernel's.
	e.setConfig(t, func(c *datapath.NodeConfig) { c.Conntrack, c.IgnoreConntrack = false, true })
	e.pass(t, datapath.FromPods, frame6(ipv6Header{Src: localPod6, Dst: peerPod6, HopLimit: 64, NextHeader: 43},
		extHeader(protoUDP, payload)), "ext_header")
}

// An IPv4-only node (no IPv6 pod subnet written) passes every IPv6 frame
// on, under a reason of its own, before looking at it.
func TestNoIPv6Config(t *testing.T) {
	e := newRunEnv(t, true)
	ns := frame6(ipv6Header{Src: netip.MustParseAddr("fe80::5"), Dst: netip.MustParseAddr("ff02::1:ff00:1"), HopLimit: 255,
		NextHeader: protoICMPv6}, icmp(icmp6NeighSol, 0, make([]byte, 20)))
	for _, p := range []datapath.Program{datapath.FromPods, datapath.FromUnderlay} {
		e.pass(t, p, udp6Frame(localPod6, peerPod6, 0), "no_ipv6_config")
		e.pass(t, p, udp6Frame(peerPod6, localPod6, 0), "no_ipv6_config")
		e.pass(t, p, ns, "no_ipv6_config")
	}
	// IPv4 is unaffected.
	e.forward(t, datapath.FromPods, udpFrame(localPod, peerPod))
	// Written and cleared again.
	e.setConfig(t, func(c *datapath.NodeConfig) { c.PodSubnet6, c.Gateway6 = podSubnet6, gateway6 })
	if err := e.dp.Routes6().Put(datapath.Route{Subnet: netip.MustParsePrefix("fd00:10:244:2::/64"), NextHop: peerNode6,
		Ifindex: uint32(e.eth0)}); err != nil {
		t.Fatal(err)
	}
	e.forward(t, datapath.FromPods, udp6Frame(localPod6, peerPod6, 0))
	e.setConfig(t, func(c *datapath.NodeConfig) { c.PodSubnet6, c.Gateway6 = netip.Prefix{}, netip.Addr{} })
	e.pass(t, datapath.FromPods, udp6Frame(localPod6, peerPod6, 0), "no_ipv6_config")
}

// The gate comes first for IPv6 as for IPv4, counted under family ipv6; a
// frame that is not IP at all under family other.
func TestGateCountsPerFamily(t *testing.T) {
	e := newRunEnv6(t)
	v6 := udp6Frame(localPod6, peerPod6, 0)
	e.setConfig(t, func(c *datapath.NodeConfig) { c.StepAside = true })
	e.pass(t, datapath.FromPods, v6, "step_aside")
	e.pass(t, datapath.FromUnderlay, udp6Frame(peerPod6, localPod6, 0), "step_aside")
	e.pass(t, datapath.FromPods, arpRequest(localPod, gateway), "step_aside")
	e.setConfig(t, func(c *datapath.NodeConfig) { c.StepAside, c.Conntrack = false, false })
	e.pass(t, datapath.FromPods, v6, "no_conntrack")
	e.pass(t, datapath.FromUnderlay, udp6Frame(peerPod6, localPod6, 0), "no_conntrack")
	e.setConfig(t, func(c *datapath.NodeConfig) { c.Conntrack = true })
	e.forward(t, datapath.FromPods, v6)
	e.pass(t, datapath.FromPods, arpRequest(localPod, gateway), "not_ip")

	got, ok, err := e.dp.Config()
	if err != nil || !ok || got != e.cfg {
		t.Errorf("config read back %+v (%v, %v), wrote %+v", got, ok, err, e.cfg)
	}
	// No config at all: IPv6 is counted as such too.
	z := newRunEnv(t, false)
	z.pass(t, datapath.FromPods, v6, "no_config")
	z.pass(t, datapath.FromUnderlay, v6, "no_config")
}

// One path per flow, in both directions, as TestOnePathPerFlow for IPv4.
func TestOnePathPerFlowIPv6(t *testing.T) {
	e := newRunEnv6(t)
	e.onePath(t, localPod6, fastPath, "fd00:10:244:2::5", "fd00:10:244:2::2", "fd00:10:244:2:ffff:ffff:ffff:ffff",
		"fd00:10:245:3::2", "fd00:10:245:ffff:ffff:ffff:ffff:ffff",
		"fd00:10:245:0:1::1") // in the /48, host part not 1
	// The /64 wins over the /48; the peer's subnet-router anycast address
	// and its gateway.
	e.onePath(t, localPod6, peerNodeAddr, "fd00:10:245:3::", "fd00:10:244:2::", "fd00:10:244:2::1", "fd00:10:245::1")
	// Node addresses, outside the cluster, a subnet no peer has.
	e.onePath(t, localPod6, noPeerRoute, "fd00:198:18::12", "fd00:198:18::11", "2001:db8::1", "fd00:10:244:3::5")
	e.onePath(t, localPod6, ownSubnet, "fd00:10:244:1::6")
	// /127 and /128 subnets have no node addresses: every address is a pod.
	for _, p := range []string{"fd00:10:246::/127", "fd00:10:247::1/128"} {
		pfx := netip.MustParsePrefix(p)
		if err := e.dp.Routes6().Put(datapath.Route{Subnet: pfx, NextHop: peerNode6, Ifindex: uint32(e.eth0)}); err != nil {
			t.Fatal(err)
		}
		e.forward(t, datapath.FromPods, udp6Frame(localPod6, pfx.Addr(), 0))
		e.forward(t, datapath.FromUnderlay, udp6Frame(pfx.Addr(), localPod6, 0))
	}
}

// Sources no router forwards go to the kernel, from either side.
func TestMartianSourcesIPv6(t *testing.T) {
	e := newRunEnv6(t)
	ep := e.addEndpoint(t, "vethpod1", localPod6, macPod)
	for _, src := range []string{"::", "::1", "ff02::1", "ff05::2", "fe80::1", "febf::1", "::ffff:10.244.1.5", "::ffff:127.0.0.1"} {
		a := netip.MustParseAddr(src)
		e.pass(t, datapath.FromPods, udp6Frame(a, peerPod6, 0), "martian_src")
		e.pass(t, datapath.FromUnderlay, udp6Frame(a, localPod6, 0), "martian_src")
		atVeth := udp6Frame(a, peerPod6, 0)
		copy(atVeth[0:6], macGateway[:])
		e.passCtx(t, datapath.FromPods, atVeth, &skbContext{Ifindex: ep.Ifindex}, "martian_src")
	}
	// Neighbours of those that are fine: fec0::/10 (old site-local) and
	// ::2 are not the kernel's martians.
	if err := e.dp.Routes6().Put(datapath.Route{Subnet: netip.MustParsePrefix("fec0::/64"), NextHop: peerNode6,
		Ifindex: uint32(e.eth0)}); err != nil {
		t.Fatal(err)
	}
	e.forward(t, datapath.FromUnderlay, udp6Frame(netip.MustParseAddr("fec0::5"), localPod6b, 0))
}

// At cni0 an IPv6 source must be a pod of this node.
func TestSpoofedSourcesAtTheBridgeIPv6(t *testing.T) {
	e := newRunEnv6(t)
	for _, src := range []string{"fd00:10:244:2::5", "fd00:10:244:1::1", "fd00:10:244:1::", "fd00:198:18::11", "2001:db8::1"} {
		e.pass(t, datapath.FromPods, udp6Frame(netip.MustParseAddr(src), peerPod6, 0), "spoofed_src")
	}
	for _, src := range []string{"fd00:10:244:1::2", "fd00:10:244:1:ffff:ffff:ffff:ffff"} {
		e.forward(t, datapath.FromPods, udp6Frame(netip.MustParseAddr(src), peerPod6, 0))
	}
}

// Link-local and multicast destinations (neighbour and router discovery,
// MLD, a pod talking to its gateway's fe80:: address) are for the node;
// discovery frames sent to L2 multicast are not for the host to route.
func TestLinkScopeAndDiscoveryIPv6(t *testing.T) {
	e := newRunEnv6(t)
	nsTo := func(src, dst netip.Addr, l2 mac) []byte {
		f := frame6(ipv6Header{Src: src, Dst: dst, HopLimit: 255, NextHeader: protoICMPv6}, icmp(icmp6NeighSol, 0, make([]byte, 20)))
		copy(f[0:6], l2[:])
		return f
	}
	llPod, llGw := netip.MustParseAddr("fe80::42:aff:fef4:105"), netip.MustParseAddr("fe80::42:aff:fef4:101")
	solicited := mac{0x33, 0x33, 0xff, 0xf4, 0x01, 0x01}
	for _, p := range []datapath.Program{datapath.FromPods, datapath.FromUnderlay} {
		// Solicited-node multicast, at L2 too.
		e.pass(t, p, nsTo(llPod, netip.MustParseAddr("ff02::1:fff4:101"), solicited), "not_for_host")
		// Unicast at L2, to a link-local or multicast address.
		e.pass(t, p, nsTo(llPod, llGw, macHost), "local_dest")
		e.pass(t, p, udp6Frame(localPod6, netip.MustParseAddr("ff02::1"), 0), "local_dest")
		e.pass(t, p, udp6Frame(peerPod6, netip.MustParseAddr("fe80::1"), 0), "local_dest")
	}
	// The gateway's global address is on this node too.
	e.pass(t, datapath.FromPods, nsTo(localPod6, gateway6, macHost), "local_dest")
	e.pass(t, datapath.FromUnderlay, udp6Frame(peerPod6, gateway6, 0), "local_dest")
	e.pass(t, datapath.FromUnderlay, udp6Frame(peerPod6, netip.MustParseAddr("fd00:10:244:1::"), 0), "local_dest")
	// Discovery messages between global addresses: not echo, not an error.
	for _, typ := range []uint8{icmp6RouterSol, icmp6NeighSol, icmp6NeighAdv, icmp6Redirect, 130 /* MLD query */} {
		e.pass(t, datapath.FromUnderlay, frame6(ipv6Header{Src: peerPod6, Dst: localPod6, HopLimit: 255, NextHeader: protoICMPv6},
			icmp(typ, 0, make([]byte, 20))), "icmp_error")
		e.pass(t, datapath.FromPods, frame6(ipv6Header{Src: localPod6, Dst: peerPod6, HopLimit: 255, NextHeader: protoICMPv6},
			icmp(typ, 0, make([]byte, 20))), "icmp_error")
	}
}

// Conntrack with the IPv6 tuple: a flow the namespace's conntrack tracks
// stays with the kernel both ways; an unknown one is fast.
func TestConntrackIPv6(t *testing.T) {
	e := newRunEnv6(t)
	udpOut := udp6Frame(localPod6, peerPod6, 0)
	udpBack := frame6(ipv6Header{Src: peerPod6, Dst: localPod6, HopLimit: 64, NextHeader: protoUDP}, udp(5201, 40000, []byte("hgw-ebpf")))
	tcpOut := flowFrame(protoTCP, localPod6, peerPod6, false)

	e.unknownThenTracked(t, localPod6, peerPod6, udpOut, udpBack, tcpOut)
	// The same ports in IPv4 are another flow.
	e.forward(t, datapath.FromPods, udpFrame(localPod, peerPod))

	e.ns.track(t, localPod6, peerPod6, protoTCP, 40000, 80)
	e.pass(t, datapath.FromPods, tcpOut, "ct_tracked")
	e.pass(t, datapath.FromUnderlay, flowFrame(protoTCP, peerPod6, localPod6, true), "ct_tracked")

	e.setConfig(t, func(c *datapath.NodeConfig) { c.Conntrack, c.IgnoreConntrack = false, true })
	e.forward(t, datapath.FromPods, udpOut)
	e.forward(t, datapath.FromUnderlay, udpBack)
}

// With conntrack checking on, protocols the lookup cannot key go to the
// kernel; with the check ignored they are forwarded, as in IPv4.
func TestProtocolsConntrackCannotKeyIPv6(t *testing.T) {
	e := newRunEnv6(t)
	for _, proto := range []uint8{132 /* SCTP */, 47 /* GRE */, 4 /* IPv4 in IPv6 */, 41 /* IPv6 in IPv6 */} {
		e.pass(t, datapath.FromPods, frame6(ipv6Header{Src: localPod6, Dst: peerPod6, HopLimit: 64, NextHeader: proto}, make([]byte, 12)), "ct_other_proto")
		e.pass(t, datapath.FromUnderlay, frame6(ipv6Header{Src: peerPod6, Dst: localPod6, HopLimit: 64, NextHeader: proto}, make([]byte, 12)), "ct_other_proto")
	}
	e.setConfig(t, func(c *datapath.NodeConfig) { c.Conntrack, c.IgnoreConntrack = false, true })
	e.forward(t, datapath.FromPods, frame6(ipv6Header{Src: localPod6, Dst: peerPod6, HopLimit: 64, NextHeader: 132}, make([]byte, 12)))
}

// ICMPv6 errors go the way of the flow they quote, as ICMP errors do:
// about a pod-to-pod flow conntrack does not track, fast (packet too big
// above all: without it path MTU discovery fails); else the kernel's.
func TestICMPv6ErrorsFollowTheirFlow(t *testing.T) {
	e := newRunEnv6(t)
	flow := newICMPErrorFlow(localPod6, peerPod6)
	out, toPod, fromPod := flow.out, flow.toPod, flow.fromPod

	e.forward(t, datapath.FromUnderlay, toPod(peerPod6, icmp6Unreachable, 4, out))
	e.forward(t, datapath.FromUnderlay, toPod(peerNode6, icmp6TooBig, 0, out))
	e.forward(t, datapath.FromUnderlay, toPod(peerNode6, icmp6TimeExceed, 0, out))
	e.forward(t, datapath.FromUnderlay, toPod(netip.MustParseAddr("2001:db8::1"), icmp6ParamProb, 0, out))
	e.forward(t, datapath.FromPods, fromPod)
	e.forward(t, datapath.FromUnderlay, toPod(peerNode6, icmp6TimeExceed, 0, flowFrame(protoICMPv6, localPod6, peerPod6, false)))

	for name, quoted := range map[string][]byte{
		"a flow to a node":              udp6Frame(localPod6, nodeIP6, 0),
		"a flow to outside the cluster": udp6Frame(localPod6, netip.MustParseAddr("2001:db8::1"), 0),
		"a flow to a peer's gateway":    udp6Frame(localPod6, netip.MustParseAddr("fd00:10:244:2::1"), 0),
		"another pod's flow":            udp6Frame(localPod6b, peerPod6, 0),
		"an SCTP flow":                  frame6(ipv6Header{Src: localPod6, Dst: peerPod6, HopLimit: 64, NextHeader: 132}, make([]byte, 8)),
		"a flow with a routing header":  frame6(ipv6Header{Src: localPod6, Dst: peerPod6, HopLimit: 64, NextHeader: 43}, extHeader(protoUDP, udp(1, 2, nil))),
	} {
		t.Run(name, func(t *testing.T) {
			e.pass(t, datapath.FromUnderlay, toPod(peerNode6, icmp6TimeExceed, 0, quoted), "icmp_error")
		})
	}
	// An IPv4 header, as long as an IPv6 one would be.
	v4 := append(udpFrame(localPod, peerPod), make([]byte, ipv6Len)...)
	e.pass(t, datapath.FromUnderlay, frame6(ipv6Header{Src: peerNode6, Dst: localPod6, HopLimit: 64, NextHeader: protoICMPv6},
		icmp(icmp6TimeExceed, 0, append(make([]byte, 4), v4[ethLen:ethLen+ipv6Len+8]...))), "icmp_error")
	// A quote cut short of the ports, or of the IPv6 header.
	full := toPod(peerPod6, icmp6Unreachable, 4, out)
	for _, n := range []int{8 + ipv6Len + 2, 8 + 30} {
		f := bytes.Clone(full[:ethLen+ipv6Len+n])
		binary.BigEndian.PutUint16(f[ethLen+4:], uint16(n))
		e.pass(t, datapath.FromUnderlay, f, "icmp_error")
	}
	e.pass(t, datapath.FromUnderlay, toPod(netip.MustParseAddr("fe80::1"), icmp6TooBig, 0, out), "martian_src")
	e.pass(t, datapath.FromUnderlay, toPod(localPod6b, icmp6TooBig, 0, out), "src_not_pod")

	e.trackedFlowErrors(t, flow, toPod(peerNode6, icmp6TooBig, 0, out))
}

// A receiving device that summed the packet (CHECKSUM_COMPLETE) must find
// the sum still right after the hop limit changed: the kernel checks it
// after the run (BPF_F_TEST_SKB_CHECKSUM_COMPLETE) and fails the run with
// EBADMSG otherwise. IPv4's TTL and checksum change cancel out in the sum.
func TestChecksumCompleteStaysValid(t *testing.T) {
	e := newRunEnv6(t)
	e.addEndpoint(t, "vethpod1", localPod6, macPod)
	for _, c := range []struct {
		p      datapath.Program
		frame  []byte
		reason string
	}{
		{datapath.FromPods, udp6Frame(localPod6, peerPod6, 0), "redirect"},
		{datapath.FromPods, udp6Frame(localPod6, peerPod6, 0, hops(255)), "redirect"},
		{datapath.FromUnderlay, udp6Frame(peerPod6, localPod6b, 0, hops(2)), "redirect"},
		{datapath.FromUnderlay, udp6Frame(peerPod6, localPod6, 0), "redirect_peer"},
		{datapath.FromPods, udpFrame(localPod, peerPod), "redirect"},
		{datapath.FromUnderlay, udpFrame(peerPod, localPod), "redirect"},
	} {
		t.Run(fmt.Sprintf("%s %s %s", c.p, familyOf(c.frame), c.reason), func(t *testing.T) {
			prog, err := e.dp.Program(c.p)
			if err != nil {
				t.Fatal(err)
			}
			before := e.stats(t)
			opts := &ebpf.RunOptions{Data: c.frame, DataOut: make([]byte, len(c.frame)+256),
				Context: e.onDevice(c.p, nil), Flags: unix.BPF_F_TEST_SKB_CHECKSUM_COMPLETE}
			var verdict uint32
			e.ns.do(t, func() { verdict, err = prog.Run(opts) })
			if errors.Is(err, unix.EBADMSG) {
				t.Fatalf("the skb's CHECKSUM_COMPLETE sum no longer matches the packet after %s", c.reason)
			}
			if err != nil {
				t.Fatal(err)
			}
			delta := moved(before, e.stats(t))
			if verdict != tcActRedirect || len(delta) != 1 || delta[0].Reason != c.reason {
				t.Errorf("verdict %d, counters %+v; want a redirect counted as %s", verdict, delta, c.reason)
			}
		})
	}
}

// Pass-through verdicts leave every IPv6 byte where it was.
func TestPassThroughIsByteExactIPv6(t *testing.T) {
	e := newRunEnv6(t)
	for i := range 30 {
		f := udp6Frame(localPod6, netip.MustParseAddr("2001:db8::4"), 100+40*i)
		for j := ethLen + ipv6Len + 8; j < len(f); j++ {
			f[j] = byte(j * 7)
		}
		e.pass(t, datapath.FromPods, f, "no_route")
		g := bytes.Clone(f)
		copy(g[ethLen+24:], localPod6b.AsSlice())
		e.pass(t, datapath.FromPods, g, "local_dest")
	}
}

// The node config round-trips with its IPv6 half, and SetConfig refuses
// an IPv6 half that does not hold together.
func TestNodeConfigIPv6(t *testing.T) {
	e := newRunEnv6(t)
	got, ok, err := e.dp.Config()
	if err != nil || !ok || got.PodSubnet6 != podSubnet6 || got.Gateway6 != gateway6 {
		t.Fatalf("config read back %+v (%v, %v)", got, ok, err)
	}
	for name, change := range map[string]func(*datapath.NodeConfig){
		"IPv4 as IPv6 subnet":    func(c *datapath.NodeConfig) { c.PodSubnet6 = netip.MustParsePrefix("10.244.9.0/24") },
		"gateway outside":        func(c *datapath.NodeConfig) { c.Gateway6 = netip.MustParseAddr("fd00:10:244:2::1") },
		"gateway without subnet": func(c *datapath.NodeConfig) { c.PodSubnet6 = netip.Prefix{} },
		"subnet without gateway": func(c *datapath.NodeConfig) { c.Gateway6 = netip.Addr{} },
		"v4-mapped subnet":       func(c *datapath.NodeConfig) { c.PodSubnet6 = netip.MustParsePrefix("::ffff:10.244.1.0/120") },
	} {
		c := e.cfg
		change(&c)
		if err := e.dp.SetConfig(c); err == nil {
			t.Errorf("%s: SetConfig(%+v) accepted", name, c)
		}
	}
	if got, _, _ := e.dp.Config(); got != e.cfg {
		t.Errorf("a refused SetConfig changed the config: %+v", got)
	}
}

// The routes6 map has the routes map's methods, for IPv6 only.
func TestRoute6Map(t *testing.T) {
	e := newRunEnv(t, false)
	r6 := e.dp.Routes6()
	a := datapath.Route{Subnet: netip.MustParsePrefix("fd00:10:244:2::/64"), NextHop: peerNode6, Ifindex: 3}
	b := datapath.Route{Subnet: netip.MustParsePrefix("fd00:10:245::/48"), NextHop: netip.MustParseAddr("fd00:198:18::13"), Ifindex: 4}
	if err := r6.Put(a); err != nil {
		t.Fatal(err)
	}
	if n, err := r6.PutBatch([]datapath.Route{b}); err != nil || n != 1 {
		t.Fatalf("PutBatch = %d, %v", n, err)
	}
	// Longest-prefix match: an address inside answers with its subnet's
	// entry, named by what was asked.
	got, ok, err := r6.Match(netip.MustParsePrefix("fd00:10:245:7::9/128"))
	if err != nil || !ok || got.NextHop != b.NextHop || got.Ifindex != 4 {
		t.Errorf("Match inside %s = %+v, %v, %v", b.Subnet, got, ok, err)
	}
	if _, ok, err := r6.Match(netip.MustParsePrefix("fd00:10:246::/64")); err != nil || ok {
		t.Errorf("Match outside every entry = %v, %v", ok, err)
	}
	list, err := r6.List()
	if err != nil || len(list) != 2 {
		t.Fatalf("List = %+v, %v", list, err)
	}
	for _, r := range list {
		if r != a && r != b {
			t.Errorf("listed %+v, not one put", r)
		}
	}
	// The families stay apart.
	if v4, err := e.dp.Routes().List(); err != nil || len(v4) != 0 {
		t.Errorf("routes (IPv4) map = %+v, %v; want empty", v4, err)
	}
	for name, bad := range map[string]datapath.Route{
		"IPv4 subnet":        {Subnet: netip.MustParsePrefix("10.244.2.0/24"), NextHop: peerNode6},
		"IPv4 next hop":      {Subnet: a.Subnet, NextHop: peerNode},
		"v4-mapped next hop": {Subnet: a.Subnet, NextHop: netip.MustParseAddr("::ffff:198.18.0.12")},
		"zoned next hop":     {Subnet: a.Subnet, NextHop: netip.MustParseAddr("fe80::1%eth0")},
		"no next hop":        {Subnet: a.Subnet},
		"v4-mapped subnet":   {Subnet: netip.MustParsePrefix("::ffff:10.244.2.0/120"), NextHop: peerNode6},
		"invalid subnet":     {NextHop: peerNode6},
	} {
		if err := r6.Put(bad); err == nil {
			t.Errorf("%s: routes6 Put(%+v) accepted", name, bad)
		}
		if n, err := r6.PutBatch([]datapath.Route{a, bad}); err == nil || n != 0 {
			t.Errorf("%s: PutBatch = %d, %v; want nothing written and an error", name, n, err)
		}
	}
	if err := e.dp.Routes().Put(a); err == nil {
		t.Errorf("routes (IPv4) map took %+v", a)
	}
	if err := r6.Delete(a.Subnet); err != nil {
		t.Fatal(err)
	}
	if err := r6.Delete(a.Subnet); err != nil {
		t.Errorf("deleting a missing entry: %v", err)
	}
	if list, _ := r6.List(); len(list) != 1 || list[0] != b {
		t.Errorf("after Delete: %+v, want [%+v]", list, b)
	}
	if err := r6.Delete(netip.MustParsePrefix("10.244.2.0/24")); err == nil {
		t.Error("routes6 Delete of an IPv4 prefix accepted")
	}
}

// Endpoints of both families live side by side; an IPv6 address and the
// IPv4 address with the same leading bytes are different keys.
func TestEndpointMapBothFamilies(t *testing.T) {
	e := newRunEnv(t, false)
	eps := e.dp.Endpoints()
	hw := net.HardwareAddr(macPod[:])
	v4 := datapath.Endpoint{IP: netip.MustParseAddr("10.0.0.1"), Ifindex: 7, PodMAC: hw, GatewayMAC: net.HardwareAddr(macGateway[:])}
	// 0a00:0001:: starts with the same 4 bytes as 10.0.0.1.
	v6 := datapath.Endpoint{IP: netip.MustParseAddr("a00:1::"), Ifindex: 8, PodMAC: hw, GatewayMAC: v4.GatewayMAC}
	e.putEndpoint(t, v4)
	e.putEndpoint(t, v6)
	for _, want := range []datapath.Endpoint{v4, v6} {
		got, ok, err := eps.Get(want.IP)
		if err != nil || !ok || !got.Equal(want) {
			t.Errorf("Get(%s) = %+v, %v, %v; want %+v", want.IP, got, ok, err, want)
		}
	}
	list, err := eps.List()
	if err != nil || len(list) != 2 {
		t.Fatalf("List = %+v, %v", list, err)
	}
	if ok, err := eps.DeleteIf(v6); err != nil || !ok {
		t.Errorf("DeleteIf(v6) = %v, %v", ok, err)
	}
	if _, ok, _ := eps.Get(v4.IP); !ok {
		t.Error("deleting the IPv6 entry took the IPv4 one")
	}
}

// The clash of a new flow with a NATed flow's reply (TestConntrackClash),
// with IPv6 tuples: the reversed IPv6 tuple is asked about too.
func TestConntrackClashIPv6(t *testing.T) {
	e := newRunEnv6(t)
	vip := netip.MustParseAddr("fd00:10:96::a")
	// localPod6:40200 -> the service:80, DNATed to peerPod6:8080.
	e.ns.trackNAT(t, tuple(localPod6, vip, protoTCP, 40200, 80), tuple(peerPod6, localPod6, protoTCP, 8080, 40200))
	e.ns.trackNAT(t, tuple(localPod6, vip, protoUDP, 40201, 53), tuple(peerPod6, localPod6, protoUDP, 5353, 40201))
	// peerPod6:40300 -> this node's hostPort, DNATed to localPod6:8080.
	e.ns.trackNAT(t, tuple(peerPod6, nodeIP6, protoTCP, 40300, 30080), tuple(localPod6, peerPod6, protoTCP, 8080, 40300))
	seg := func(src, dst netip.Addr, sport, dport uint16, flags byte) []byte {
		return frame6(ipv6Header{Src: src, Dst: dst, HopLimit: 64, NextHeader: protoTCP}, tcp(sport, dport, flags))
	}
	e.pass(t, datapath.FromPods, seg(localPod6, peerPod6, 40200, 8080, 0x02), "ct_clash")
	e.pass(t, datapath.FromPods, frame6(ipv6Header{Src: localPod6, Dst: peerPod6, HopLimit: 64, NextHeader: protoUDP},
		udp(40201, 5353, []byte("q"))), "ct_clash")
	e.pass(t, datapath.FromUnderlay, seg(peerPod6, localPod6, 40300, 8080, 0x02), "ct_clash")
	// Past the handshake, or other ports: fast.
	e.forward(t, datapath.FromPods, seg(localPod6, peerPod6, 40200, 8080, 0x10))
	e.forward(t, datapath.FromPods, seg(localPod6, peerPod6, 40202, 8080, 0x02))
	// The same ports in IPv4 clash with nothing.
	e.forward(t, datapath.FromPods, ipFrame(ipv4Header{Src: localPod, Dst: peerPod, TTL: 64, Protocol: protoTCP}, tcp(40200, 8080, 0x02)))
}

// Entries written in a batch carry their prefix length too: the programs
// need it to tell a peer's pods from the peer node's own addresses.
func TestBatchWrittenRoutesKnowTheirNodeAddresses(t *testing.T) {
	e := newRunEnv6(t)
	if n, err := e.dp.Routes().PutBatch([]datapath.Route{{Subnet: netip.MustParsePrefix("10.244.7.0/24"), NextHop: peerNode,
		Ifindex: uint32(e.eth0)}}); err != nil || n != 1 {
		t.Fatalf("PutBatch = %d, %v", n, err)
	}
	if n, err := e.dp.Routes6().PutBatch([]datapath.Route{{Subnet: netip.MustParsePrefix("fd00:10:244:7::/64"), NextHop: peerNode6,
		Ifindex: uint32(e.eth0)}}); err != nil || n != 1 {
		t.Fatalf("PutBatch = %d, %v", n, err)
	}
	e.pass(t, datapath.FromPods, udpFrame(localPod, netip.MustParseAddr("10.244.7.1")), "dst_not_pod")
	e.forward(t, datapath.FromPods, udpFrame(localPod, netip.MustParseAddr("10.244.7.5")))
	e.pass(t, datapath.FromPods, udp6Frame(localPod6, netip.MustParseAddr("fd00:10:244:7::1"), 0), "dst_not_pod")
	e.forward(t, datapath.FromPods, udp6Frame(localPod6, netip.MustParseAddr("fd00:10:244:7::5"), 0))
}
