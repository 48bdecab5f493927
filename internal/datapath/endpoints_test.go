package datapath_test

// The endpoint fast path: from_underlay hands packets for a known local pod
// straight to its namespace (bpf_redirect_peer) with the MACs its gateway
// would write, and from_pods takes a known pod's packets at its own veth.

import (
	"bytes"
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
)

var (
	macGateway = macHost // cni0's
	macPod2    = mac{0x02, 0x42, 0x0a, 0xf4, 0x01, 0x06}
)

// addEndpoint adds a host-side veth stub to the test namespace and an
// endpoint entry for ip behind it, and returns the entry.
func (e *runEnv) addEndpoint(t testing.TB, dev string, ip netip.Addr, pod mac) datapath.Endpoint {
	t.Helper()
	ep := datapath.Endpoint{
		IP: ip, Ifindex: uint32(e.ns.addLink(t, stubDev(dev, 1500))),
		PodMAC: net.HardwareAddr(pod[:]), GatewayMAC: net.HardwareAddr(macGateway[:]),
	}
	e.putEndpoint(t, ep)
	return ep
}

// putEndpoint writes ep from inside the namespace, where Put looks at its
// veth, as the agent and hgw-cni do in the node's.
func (e *runEnv) putEndpoint(t testing.TB, ep datapath.Endpoint) {
	t.Helper()
	e.ns.do(t, func() {
		if err := e.dp.Endpoints().Put(ep); err != nil {
			t.Fatal(err)
		}
	})
}

// peerDelivered is what from_underlay makes of frame for a known pod:
// TTL-1, fresh checksum, destination the pod's MAC, source the gateway's.
func peerDelivered(frame []byte, pod mac) []byte {
	out := routed(frame)
	copy(out[0:6], pod[:])
	copy(out[6:12], macGateway[:])
	return out
}

func TestDeliversToKnownPodWithRedirectPeer(t *testing.T) {
	e := newRunEnv(t, true)
	e.addEndpoint(t, "vethpod1", localPod, macPod)

	for _, frame := range [][]byte{
		udpFrame(peerPod, localPod),
		ipFrame(ipv4Header{Src: peerPod, Dst: localPod, TTL: 63, Protocol: protoTCP}, tcp(80, 40000, 0x12)),
		ipFrame(ipv4Header{Src: peerPod, Dst: localPod, TTL: 2, Protocol: protoICMP}, icmpEchoMsg(icmpEcho, 7, 3)),
	} {
		want := peerDelivered(frame, macPod)
		out := e.expect(t, datapath.FromUnderlay, frame, nil, tcActRedirect, "redirect_peer")
		if !bytes.Equal(out, want) {
			t.Errorf("delivered frame differs from MACs rewritten + TTL-1 + fresh checksum:\n got % x\nwant % x", out, want)
		}
		if sum := onesSum(ipHeaderOf(out)); sum != 0xffff {
			t.Errorf("delivered header sums to %#04x, not 0xffff: checksum invalid", sum)
		}
	}

	// Router duties come first: a packet whose TTL would expire is the
	// kernel's, untouched, even for a known pod.
	e.pass(t, datapath.FromUnderlay, udpFrame(peerPod, localPod, ttl(1)), "ttl_expired")
	// The gateway address is the host's even if someone put it in the map.
	if err := e.dp.Endpoints().Put(datapath.Endpoint{IP: gateway, Ifindex: 1,
		PodMAC: net.HardwareAddr(macPod[:]), GatewayMAC: net.HardwareAddr(macGateway[:])}); err != nil {
		t.Fatal(err)
	}
	e.pass(t, datapath.FromUnderlay, udpFrame(peerPod, gateway), "local_dest")
}

// An unknown local pod keeps the bridge path, with its MACs untouched: the
// map only ever makes delivery faster, never possible.
func TestUnknownLocalPodTakesTheBridgePath(t *testing.T) {
	e := newRunEnv(t, true)
	e.addEndpoint(t, "vethpod1", localPod, macPod)
	e.forward(t, datapath.FromUnderlay, udpFrame(peerPod, localPod2))

	// A deleted endpoint falls back the same way.
	if err := e.dp.Endpoints().Delete(localPod); err != nil {
		t.Fatal(err)
	}
	e.forward(t, datapath.FromUnderlay, udpFrame(peerPod, localPod))
	if err := e.dp.Endpoints().Delete(localPod); err != nil {
		t.Errorf("deleting a missing endpoint: %v", err)
	}
}

// At a pod's host-side veth the pod's frames carry the gateway's MAC, not
// the veth's, so the kernel marks them PACKET_OTHERHOST. from_pods forwards
// them when a known pod sends them from its own veth, with its own address,
// to its gateway's MAC; a pod sending as another address goes to the
// kernel whatever MAC it sends to.
func TestFromPodsAtTheVethOfAKnownPod(t *testing.T) {
	e := newRunEnv(t, true)
	ep := e.addEndpoint(t, "vethpod1", localPod, macPod)
	other := e.addEndpoint(t, "vethpod2", localPod2, macPod2)
	atVeth := &skbContext{Ifindex: ep.Ifindex}
	toMAC := func(src netip.Addr, dst mac) []byte {
		f := udpFrame(src, peerPod)
		copy(f[0:6], dst[:])
		return f
	}
	veth, err := e.ns.h.LinkByIndex(int(ep.Ifindex))
	if err != nil {
		t.Fatal(err)
	}
	var vethMAC mac
	copy(vethMAC[:], veth.Attrs().HardwareAddr)

	e.forwardCtx(t, datapath.FromPods, toMAC(localPod, macGateway), atVeth)
	// To the veth's own MAC (PACKET_HOST: the bridge hands it up to the
	// host, which routes it) is the same as to the gateway's.
	e.forwardCtx(t, datapath.FromPods, toMAC(localPod, vethMAC), atVeth)
	// Another pod's address from this veth, to either MAC: spoofed.
	e.passCtx(t, datapath.FromPods, toMAC(localPod2, macGateway), atVeth, "spoofed_src")
	e.passCtx(t, datapath.FromPods, toMAC(localPod2, vethMAC), atVeth, "spoofed_src")
	// An address the map does not know, a remote pod's, the gateway's.
	for _, src := range []string{"10.244.1.77", "10.244.2.5", "10.244.1.1"} {
		e.passCtx(t, datapath.FromPods, toMAC(netip.MustParseAddr(src), macGateway), atVeth, "spoofed_src")
	}
	// The pod's own address, but to some other MAC on the bridge: a pod on
	// this node, the bridge's business.
	e.passCtx(t, datapath.FromPods, toMAC(localPod, macForeign), atVeth, "not_for_host")
	// Broadcast is never for the host's router.
	e.passCtx(t, datapath.FromPods, toMAC(localPod, macBroadcast), atVeth, "not_for_host")
	// The other pod at its own veth is fine.
	e.forwardCtx(t, datapath.FromPods, toMAC(localPod2, macGateway), &skbContext{Ifindex: other.Ifindex})

	// Both directions of one flow: the pod's packet out at its veth, the
	// reply in from the underlay, straight into the pod.
	out := ipFrame(ipv4Header{Src: localPod, Dst: peerPod, TTL: 64, Protocol: protoTCP}, tcp(40000, 80, 0x02))
	copy(out[0:6], macGateway[:])
	e.forwardCtx(t, datapath.FromPods, out, atVeth)
	back := ipFrame(ipv4Header{Src: peerPod, Dst: localPod, TTL: 64, Protocol: protoTCP}, tcp(80, 40000, 0x12))
	e.expect(t, datapath.FromUnderlay, back, nil, tcActRedirect, "redirect_peer")
}

// A pod whose veth carries a root qdisc that shapes what it receives (the
// bandwidth plugin's ingress limit: tbf) gets its packets through cni0 and
// the veth, where the qdisc applies: bpf_redirect_peer would skip it. Put
// finds the qdisc out, whatever the caller says.
func TestShapedPodGetsItsPacketsThroughTheBridge(t *testing.T) {
	e := newRunEnv(t, true)
	ep := e.addEndpoint(t, "vethpod1", localPod, macPod)
	tbf := &netlink.Tbf{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: int(ep.Ifindex), Handle: netlink.MakeHandle(1, 0),
		Parent: netlink.HANDLE_ROOT}, Rate: 1250000, Limit: 65536, Buffer: 100000}
	if err := e.ns.h.QdiscAdd(tbf); err != nil {
		t.Fatalf("add tbf to the pod's veth: %v", err)
	}
	back := udpFrame(peerPod, localPod)
	// The entry written before the qdisc came still says redirect_peer;
	// written again (as the agent and hgw-cni write it), it knows.
	e.expect(t, datapath.FromUnderlay, back, nil, tcActRedirect, "redirect_peer")
	e.putEndpoint(t, ep)
	if got, _, err := e.dp.Endpoints().Get(localPod); err != nil || !got.Shaped {
		t.Fatalf("entry after Put with a tbf on the veth: %+v, %v; want Shaped", got, err)
	}
	e.forward(t, datapath.FromUnderlay, back)
	// Its own packets out are not shaped by that qdisc: still fast.
	out := udpFrame(localPod, peerPod)
	e.forwardCtx(t, datapath.FromPods, out, &skbContext{Ifindex: ep.Ifindex})

	if err := e.ns.h.QdiscDel(tbf); err != nil {
		t.Fatal(err)
	}
	e.putEndpoint(t, ep)
	e.expect(t, datapath.FromUnderlay, back, nil, tcActRedirect, "redirect_peer")
}

func TestEndpointMapPutListDelete(t *testing.T) {
	e := newRunEnv(t, false)
	eps := e.dp.Endpoints()
	a := datapath.Endpoint{IP: localPod, Ifindex: 7, PodMAC: net.HardwareAddr(macPod[:]), GatewayMAC: net.HardwareAddr(macGateway[:])}
	b := datapath.Endpoint{IP: localPod2, Ifindex: 8, PodMAC: net.HardwareAddr(macPod2[:]), GatewayMAC: net.HardwareAddr(macGateway[:])}
	// Ifindexes no device of the namespace has: nothing to shape.
	for _, ep := range []datapath.Endpoint{a, b} {
		e.putEndpoint(t, ep)
	}
	a.Ifindex = 9 // overwrite in place
	e.putEndpoint(t, a)
	got, ok, err := eps.Get(localPod)
	if err != nil || !ok || got.Ifindex != 9 || got.PodMAC.String() != a.PodMAC.String() || got.GatewayMAC.String() != a.GatewayMAC.String() || got.Shaped {
		t.Errorf("Get(%s) = %+v, %v, %v; want %+v", localPod, got, ok, err, a)
	}
	list, err := eps.List()
	if err != nil {
		t.Fatal(err)
	}
	ips := make([]netip.Addr, 0, len(list))
	for _, ep := range list {
		ips = append(ips, ep.IP)
	}
	slices.SortFunc(ips, netip.Addr.Compare)
	if !slices.Equal(ips, []netip.Addr{localPod, localPod2}) {
		t.Errorf("List = %v, want %v and %v", ips, localPod, localPod2)
	}
	if err := eps.Delete(localPod2); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := eps.Get(localPod2); ok {
		t.Errorf("%s still there after Delete", localPod2)
	}

	// The pinned map is what the CNI plugin and the agent share.
	maps, err := datapath.OpenPinned(e.dp.PinRoot())
	if err != nil {
		t.Fatal(err)
	}
	defer maps.Close()
	if _, ok, err := maps.Endpoints().Get(localPod); err != nil || !ok {
		t.Errorf("endpoint %s not in the pinned map (%v)", localPod, err)
	}

	for name, bad := range map[string]datapath.Endpoint{
		"link-local": {IP: netip.MustParseAddr("fe80::5"), Ifindex: 7, PodMAC: a.PodMAC, GatewayMAC: a.GatewayMAC},
		"v4-mapped":  {IP: netip.MustParseAddr("::ffff:10.244.1.5"), Ifindex: 7, PodMAC: a.PodMAC, GatewayMAC: a.GatewayMAC},
		"zoned":      {IP: netip.MustParseAddr("fd00::5%eth0"), Ifindex: 7, PodMAC: a.PodMAC, GatewayMAC: a.GatewayMAC},
		"invalid":    {Ifindex: 7, PodMAC: a.PodMAC, GatewayMAC: a.GatewayMAC},
		"no ifindex": {IP: localPod, PodMAC: a.PodMAC, GatewayMAC: a.GatewayMAC},
		"short MAC":  {IP: localPod, Ifindex: 7, PodMAC: a.PodMAC[:4], GatewayMAC: a.GatewayMAC},
		"no gw MAC":  {IP: localPod, Ifindex: 7, PodMAC: a.PodMAC},
	} {
		e.ns.do(t, func() {
			if err := eps.Put(bad); err == nil {
				t.Errorf("Put with %s accepted", name)
			}
		})
	}
	if got, _, _ := eps.Get(localPod); got.Ifindex != 9 {
		t.Errorf("a refused Put changed the entry: %+v", got)
	}
}
