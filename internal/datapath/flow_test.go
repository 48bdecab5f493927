package datapath_test

// One path per flow, in both directions: a packet takes the fast path only
// when the other end of its flow is a pod behind a fast path too, so that
// at each node both directions of a flow either skip netfilter or meet it.
// Each case runs both programs: the packet from the local pod (from_pods)
// and the packet to it (from_underlay).

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
)

// The routes of newRunEnv: 10.244.2.0/24, 10.245.0.0/16 and 10.245.3.0/24
// are peers' pod subnets; this node's is 10.244.1.0/24 (gateway .1).
func TestOnePathPerFlow(t *testing.T) {
	e := newRunEnv(t, true)
	// Pods in peer subnets, at the edges of the ranges: inside the /16
	// 10.245.0.255 is no broadcast address, 10.245.255.254 its last pod.
	e.onePath(t, localPod, fastPath, "10.244.2.5", "10.244.2.2", "10.244.2.254", "10.245.3.2", "10.245.0.255",
		"10.245.255.254")
	// The peer nodes themselves: their subnet's network, gateway (cni0)
	// and broadcast address; 10.245.3.0 because the /24 wins over the /16.
	e.onePath(t, localPod, peerNodeAddr, "10.245.3.0", "10.244.2.0", "10.244.2.1", "10.244.2.255", "10.245.0.1",
		"10.245.255.255")
	// Node IPs, external clients, subnets no peer has.
	e.onePath(t, localPod, noPeerRoute, "198.18.0.12", "198.18.0.11", "8.8.8.8", "10.244.3.5")
	// This node's own subnet, arriving from the underlay: only the bridge
	// may carry it (spoofed, or a loop).
	e.onePath(t, localPod, ownSubnet, "10.244.1.6")
}

// onePathWant is how both directions of a flow between a local pod and a
// remote address are passed on: the reasons, "" for the fast path.
type onePathWant struct{ out, back string }

var (
	fastPath     = onePathWant{}
	peerNodeAddr = onePathWant{"dst_not_pod", "src_not_pod"} // a peer node's own address in its subnet
	noPeerRoute  = onePathWant{"no_route", "src_not_pod"}
	ownSubnet    = onePathWant{"local_dest", "src_not_pod"}
)

// onePath runs a TCP, UDP and ICMP echo flow between local and each of
// remotes through both programs, out from the pod and back to it, and
// expects want of each.
func (e *runEnv) onePath(t *testing.T, local netip.Addr, want onePathWant, remotes ...string) {
	for _, r := range remotes {
		remote := netip.MustParseAddr(r)
		t.Run(r, func(t *testing.T) {
			for _, proto := range []uint8{protoTCP, protoUDP, icmpProtoOf(local)} {
				out := flowFrame(proto, local, remote, false)
				back := flowFrame(proto, remote, local, true)
				if want == fastPath {
					e.forward(t, datapath.FromPods, out)
					e.forward(t, datapath.FromUnderlay, back)
				} else {
					e.pass(t, datapath.FromPods, out, want.out)
					e.pass(t, datapath.FromUnderlay, back, want.back)
				}
			}
		})
	}
}

// flowFrame is one packet of a TCP, UDP or ICMP echo flow (ICMPv6 echo for
// protoICMPv6) between src and dst, of their family; reply is the direction
// from the server.
func flowFrame(proto uint8, src, dst netip.Addr, reply bool) []byte {
	sport, dport := uint16(40000), uint16(80)
	if reply {
		sport, dport = dport, sport
	}
	var l4 []byte
	switch proto {
	case protoTCP:
		flags := uint8(0x02) // SYN
		if reply {
			flags = 0x12 // SYN-ACK
		}
		l4 = tcp(sport, dport, flags)
	case protoUDP:
		l4 = udp(sport, dport, []byte("flow"))
	case protoICMPv6:
		typ := uint8(icmp6EchoRequest)
		if reply {
			typ = icmp6EchoReply
		}
		l4 = icmpEchoMsg(typ, 9, 1)
	default:
		typ := uint8(icmpEcho)
		if reply {
			typ = icmpEchoReply
		}
		l4 = icmpEchoMsg(typ, 9, 1)
	}
	return ipPacket(proto, src, dst, l4)
}

// ipPacket is a frame of src's family from src to dst carrying l4 of
// protocol proto, TTL (hop limit) 64.
func ipPacket(proto uint8, src, dst netip.Addr, l4 []byte) []byte {
	if src.Is6() {
		return frame6(ipv6Header{Src: src, Dst: dst, HopLimit: 64, NextHeader: proto}, l4)
	}
	return ipFrame(ipv4Header{Src: src, Dst: dst, TTL: 64, Protocol: proto}, l4)
}

// icmpProtoOf is the ICMP protocol of a's family.
func icmpProtoOf(a netip.Addr) uint8 {
	if a.Is6() {
		return protoICMPv6
	}
	return protoICMP
}

// Sources no router forwards go to the kernel (which drops them), from
// either side.
func TestMartianSources(t *testing.T) {
	e := newRunEnv(t, true)
	ep := e.addEndpoint(t, "vethpod1", localPod, macPod)
	for _, src := range []string{"0.0.0.0", "0.1.2.3", "127.0.0.1", "127.255.0.9", "224.0.0.5", "239.1.1.1",
		"240.0.0.1", "255.255.255.255"} {
		a := netip.MustParseAddr(src)
		e.pass(t, datapath.FromPods, udpFrame(a, peerPod), "martian_src")
		e.pass(t, datapath.FromUnderlay, udpFrame(a, localPod), "martian_src")
		atVeth := udpFrame(a, peerPod)
		copy(atVeth[0:6], macGateway[:])
		e.passCtx(t, datapath.FromPods, atVeth, &skbContext{Ifindex: ep.Ifindex}, "martian_src")
	}
}

// At cni0 a packet's source must be a pod of this node: not a remote pod's
// or any other address, not the gateway's (the host's own), not the
// subnet's network or broadcast address.
func TestSpoofedSourcesAtTheBridge(t *testing.T) {
	e := newRunEnv(t, true)
	for _, src := range []string{"10.244.2.5", "10.244.1.1", "10.244.1.0", "10.244.1.255", "198.18.0.11", "8.8.8.8"} {
		e.pass(t, datapath.FromPods, udpFrame(netip.MustParseAddr(src), peerPod), "spoofed_src")
	}
	for _, src := range []string{"10.244.1.2", "10.244.1.254"} {
		e.forward(t, datapath.FromPods, udpFrame(netip.MustParseAddr(src), peerPod))
	}
}

// With conntrack checking on, protocols the lookup cannot key (anything but
// TCP, UDP and ICMP echo) go to the kernel, which may have NATed them
// (SCTP services, hostPorts); with the check ignored they are forwarded.
func TestProtocolsConntrackCannotKey(t *testing.T) {
	e := newRunEnv(t, true)
	const sctp, gre = 132, 47
	for _, proto := range []uint8{sctp, gre, 50 /* ESP */, 4 /* IP in IP */} {
		out := ipFrame(ipv4Header{Src: localPod, Dst: peerPod, TTL: 64, Protocol: proto}, make([]byte, 12))
		back := ipFrame(ipv4Header{Src: peerPod, Dst: localPod, TTL: 64, Protocol: proto}, make([]byte, 12))
		e.pass(t, datapath.FromPods, out, "ct_other_proto")
		e.pass(t, datapath.FromUnderlay, back, "ct_other_proto")
	}
	// A payload too short for any L4 header is no different: the lookup
	// cannot key it either.
	e.pass(t, datapath.FromPods, ipFrame(ipv4Header{Src: localPod, Dst: peerPod, TTL: 64, Protocol: sctp}, nil), "ct_other_proto")

	e.setConfig(t, func(c *datapath.NodeConfig) { c.Conntrack, c.IgnoreConntrack = false, true })
	for _, proto := range []uint8{sctp, gre} {
		e.forward(t, datapath.FromPods, ipFrame(ipv4Header{Src: localPod, Dst: peerPod, TTL: 64, Protocol: proto}, make([]byte, 12)))
		e.forward(t, datapath.FromUnderlay, ipFrame(ipv4Header{Src: peerPod, Dst: localPod, TTL: 64, Protocol: proto}, make([]byte, 12)))
	}
}

// StepAside passes every packet on untouched, whatever it is, and only
// no_config comes before it; clearing it brings the fast path back.
func TestStepAside(t *testing.T) {
	e := newRunEnv(t, true)
	e.setConfig(t, func(c *datapath.NodeConfig) { c.StepAside = true })
	for _, f := range [][]byte{udpFrame(localPod, peerPod), arpRequest(localPod, gateway), udpFrame(localPod, peerPod, ttl(1))} {
		e.pass(t, datapath.FromPods, f, "step_aside")
	}
	for _, f := range [][]byte{udpFrame(peerPod, localPod), udpFrame(peerNode, localPod)} {
		e.pass(t, datapath.FromUnderlay, f, "step_aside")
	}
	// Before no_conntrack: the agent's wish is the first thing counted.
	e.setConfig(t, func(c *datapath.NodeConfig) { c.Conntrack = false })
	e.pass(t, datapath.FromPods, udpFrame(localPod, peerPod), "step_aside")
	e.setConfig(t, func(c *datapath.NodeConfig) { c.StepAside, c.Conntrack = false, true })
	e.forward(t, datapath.FromPods, udpFrame(localPod, peerPod))
	e.forward(t, datapath.FromUnderlay, udpFrame(peerPod, localPod))

	got, ok, err := e.dp.Config()
	if err != nil || !ok {
		t.Fatalf("read config back: %v, %v", ok, err)
	}
	if got != e.cfg {
		t.Errorf("config read back %+v, wrote %+v", got, e.cfg)
	}
}

// icmpQuoting is an ICMP (ICMPv6) error of type and code quoting frame's IP
// header and the first 8 bytes of its payload, as routers and hosts send
// them (the minimum; IPv6 ones quote as much as fits).
func icmpQuoting(typ, code uint8, frame []byte) []byte {
	hdr := ipv4Len
	if familyOf(frame) == "ipv6" {
		hdr = ipv6Len
	}
	return icmp(typ, code, append(make([]byte, 4), frame[ethLen:ethLen+hdr+8]...))
}

// ICMP errors go the way of the flow they quote. About a pod-to-pod flow the
// fast path carries (conntrack does not know it), they are fast too, from a
// pod or from a router or node on the way: through the kernel, conntrack
// would meet an error about a flow it never saw, and kube-proxy's INVALID
// rule would drop it. About a flow the kernel carries, or quoting what
// cannot be told, they stay the kernel's, which may have to un-NAT them.
func TestICMPErrorsFollowTheirFlow(t *testing.T) {
	e := newRunEnv(t, true)
	flow := newICMPErrorFlow(localPod, peerPod)
	out, toPod, fromPod := flow.out, flow.toPod, flow.fromPod

	// Port unreachable from the peer pod, time exceeded and frag-needed
	// from the peer node; the local pod's own port unreachable going out.
	e.forward(t, datapath.FromUnderlay, toPod(peerPod, icmpUnreachable, 3, out))
	e.forward(t, datapath.FromUnderlay, toPod(peerNode, icmpTimeExceed, 0, out))
	e.forward(t, datapath.FromUnderlay, toPod(peerNode, icmpUnreachable, 4, out))
	e.forward(t, datapath.FromPods, fromPod)
	// About a ping.
	ping := flowFrame(protoICMP, localPod, peerPod, false)
	e.forward(t, datapath.FromUnderlay, toPod(peerNode, icmpTimeExceed, 0, ping))

	// Not about a fast flow of the pod it goes to.
	for name, quoted := range map[string][]byte{
		"a flow to a node":              udpFrame(localPod, nodeIP),
		"a flow to outside the cluster": udpFrame(localPod, netip.MustParseAddr("8.8.8.8")),
		"a flow to a peer's gateway":    udpFrame(localPod, netip.MustParseAddr("10.244.2.1")),
		"another pod's flow":            udpFrame(localPod2, peerPod),
		"an SCTP flow":                  ipFrame(ipv4Header{Src: localPod, Dst: peerPod, TTL: 64, Protocol: 132}, make([]byte, 8)),
		"a quote with IP options": ipFrame(ipv4Header{Src: localPod, Dst: peerPod, TTL: 64, Protocol: protoUDP,
			Options: []byte{0x94, 0x04, 0x00, 0x00}}, udp(40000, 5201, []byte("x"))),
	} {
		t.Run(name, func(t *testing.T) {
			e.pass(t, datapath.FromUnderlay, toPod(peerNode, icmpTimeExceed, 0, quoted), "icmp_error")
		})
	}
	// A quote cut short of the ports, or of the IP header.
	short := toPod(peerPod, icmpUnreachable, 3, out)
	e.pass(t, datapath.FromUnderlay, truncateIP(short, ipv4Len+8+ipv4Len+2), "icmp_error")
	e.pass(t, datapath.FromUnderlay, truncateIP(short, ipv4Len+8+10), "icmp_error")
	// Not errors: redirects, timestamps.
	for _, typ := range []uint8{5, 13} {
		e.pass(t, datapath.FromUnderlay, toPod(peerPod, typ, 0, out), "icmp_error")
	}
	// The outer source still may not be martian or this node's own subnet.
	e.pass(t, datapath.FromUnderlay, toPod(netip.MustParseAddr("127.0.0.1"), icmpUnreachable, 3, out), "martian_src")
	e.pass(t, datapath.FromUnderlay, toPod(localPod2, icmpUnreachable, 3, out), "src_not_pod")

	e.trackedFlowErrors(t, flow, toPod(peerNode, icmpTimeExceed, 0, out))
}

// icmpErrorFlow is the flow both families' ICMP error tests quote: the
// local pod's UDP flow to the peer pod as it left (out) and its reply as
// it came in (in); fromPod is the local pod's port unreachable about in,
// going out.
type icmpErrorFlow struct {
	local, peer      netip.Addr
	out, in, fromPod []byte
}

func newICMPErrorFlow(local, peer netip.Addr) icmpErrorFlow {
	f := icmpErrorFlow{local: local, peer: peer, in: flowFrame(protoUDP, peer, local, true)}
	unreachable, portUnreachable := uint8(icmpUnreachable), uint8(3)
	if local.Is6() {
		f.out = udp6Frame(local, peer, 0)
		unreachable, portUnreachable = icmp6Unreachable, 4
	} else {
		f.out = udpFrame(local, peer)
	}
	f.fromPod = ipPacket(icmpProtoOf(local), local, peer, icmpQuoting(unreachable, portUnreachable, f.in))
	return f
}

// toPod is an ICMP (ICMPv6) error of type and code from src to the local
// pod, quoting quoted.
func (f icmpErrorFlow) toPod(src netip.Addr, typ, code uint8, quoted []byte) []byte {
	return ipPacket(icmpProtoOf(f.local), src, f.local, icmpQuoting(typ, code, quoted))
}

// trackedFlowErrors tracks f's flow in both directions and expects its
// errors to be the kernel's both ways: toPod coming in, f.fromPod going out.
func (e *runEnv) trackedFlowErrors(t *testing.T, f icmpErrorFlow, toPod []byte) {
	t.Helper()
	e.ns.track(t, f.local, f.peer, protoUDP, 40000, 5201)
	e.pass(t, datapath.FromUnderlay, toPod, "icmp_error")
	e.ns.track(t, f.peer, f.local, protoUDP, 80, 40000)
	e.pass(t, datapath.FromPods, f.fromPod, "icmp_error")
}

// truncateIP cuts frame to an IP packet of n bytes, with tot_len and
// checksum to match.
func truncateIP(frame []byte, n int) []byte {
	out := bytes.Clone(frame[:ethLen+n])
	binary.BigEndian.PutUint16(out[ethLen+2:], uint16(n))
	refreshChecksum(out)
	return out
}
