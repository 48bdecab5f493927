package datapath_test

// Frames on a real wire: what PROG_TEST_RUN cannot show. The kernel refuses
// test runs of IPv4 frames shorter than an IP header, and it never does to a
// test-run skb what a receiving device does before TC ingress (strip an
// 802.1Q tag into the skb's metadata). So these frames are sent from eth0's
// veth peer and meet from_underlay, attached to eth0's ingress, as any
// frame from the underlay would.

import (
	"encoding/binary"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
	"golang.org/x/sys/unix"
)

// wireEnv is an attachEnv with from_underlay attached (in a given mode) to
// eth0 and its veth peer up, ready to send frames into eth0.
type wireEnv struct {
	*attachEnv
	dp      *datapath.Datapath
	peerIdx int
	eth0MAC mac
}

func newWireEnv(t *testing.T, mode datapath.Mode) *wireEnv {
	t.Helper()
	e := &wireEnv{attachEnv: newAttachEnv(t)}
	// No IPv6 in this test namespace: neighbour discovery from the veths
	// coming up would land in the counters and flake the tests.
	e.ns.do(t, func() {
		for _, dev := range []string{"all", "default", "eth0", "eth0-peer"} {
			os.WriteFile("/proc/sys/net/ipv6/conf/"+dev+"/disable_ipv6", []byte("1"), 0o644)
		}
	})
	peer, err := e.ns.h.LinkByName("eth0-peer")
	if err != nil {
		t.Fatal(err)
	}
	if err := e.ns.h.LinkSetUp(peer); err != nil {
		t.Fatal(err)
	}
	e.peerIdx = peer.Attrs().Index
	eth0, err := e.ns.h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	copy(e.eth0MAC[:], eth0.Attrs().HardwareAddr)
	e.dp = e.load(t, mode)
	t.Cleanup(func() { e.dp.Close() })
	if err := e.dp.SetConfig(datapath.NodeConfig{PodSubnet: podSubnet, Gateway: gateway,
		BridgeIfindex: uint32(e.cni0), UnderlayIfindex: uint32(e.eth0), Conntrack: true}); err != nil {
		t.Fatal(err)
	}
	// The frames come from a peer's pod.
	if err := e.dp.Routes().Put(datapath.Route{Subnet: netip.MustParsePrefix("10.244.2.0/24"), NextHop: peerNode,
		Ifindex: uint32(e.eth0)}); err != nil {
		t.Fatal(err)
	}
	e.ns.do(t, func() {
		if _, err := e.dp.Attach("eth0", datapath.FromUnderlay); err != nil {
			t.Fatal(err)
		}
	})
	return e
}

func (e *wireEnv) counters(t *testing.T) []datapath.Counter {
	t.Helper()
	return countersOf(t, e.dp)
}

// send puts frame on eth0-peer, so that it arrives at eth0, and waits until
// from_underlay has counted it: it returns the counters that moved.
func (e *wireEnv) send(t *testing.T, frame []byte) []datapath.Counter {
	t.Helper()
	before := e.counters(t)
	e.ns.do(t, func() {
		// The socket belongs to the namespace it is created in: this one.
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			t.Fatalf("packet socket: %v", err)
		}
		defer unix.Close(fd)
		to := &unix.SockaddrLinklayer{Ifindex: e.peerIdx, Protocol: htons(binary.BigEndian.Uint16(frame[12:14]))}
		if err := unix.Sendto(fd, frame, 0, to); err != nil {
			t.Fatalf("send %d bytes on eth0-peer: %v", len(frame), err)
		}
	})
	deadline := time.Now().Add(2 * time.Second)
	for {
		if d := moved(before, e.counters(t)); len(d) > 0 {
			// Let a late second count show, too.
			time.Sleep(20 * time.Millisecond)
			return moved(before, e.counters(t))
		}
		if time.Now().After(deadline) {
			t.Fatalf("no counter moved within 2s of sending % x", frame)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// expectCounted checks that exactly from_underlay's reason counter moved, by
// one packet of wireLen bytes (what the program saw of the frame), under
// the family of the frame as the device read it (without a VLAN tag).
func (e *wireEnv) expectCounted(t *testing.T, name string, delta []datapath.Counter, family, reason string, wireLen int) {
	t.Helper()
	want := datapath.Counter{Family: family, Program: string(datapath.FromUnderlay), Reason: reason, Packets: 1, Bytes: uint64(wireLen)}
	if len(delta) != 1 || delta[0] != want {
		t.Errorf("%s: counters moved %+v, want exactly %+v", name, delta, want)
	}
}

// PROG_TEST_RUN cannot hand the program an IPv4 frame shorter than an IP
// header (the kernel refuses it): the truncated-header branch meets one here.
func TestWireTruncatedIPv4(t *testing.T) {
	e := newWireEnv(t, datapath.ModeAuto)
	full := udpFrame(peerPod, localPod)
	copy(full[0:6], e.eth0MAC[:])
	truncated := full[:ethLen+10]
	e.expectCounted(t, "Ethernet + 10 bytes of IPv4", e.send(t, truncated), "ipv4", "malformed", len(truncated))
}

// A frame of VLAN 100 for a pod address, arriving on the untagged underlay.
// The kernel would hand it to eth0.100 (none here: it drops it), never route
// it as eth0's own traffic; the fast path must leave it to the kernel too,
// or any host on another VLAN of the trunk reaches the pods directly. The
// receiving device strips the tag into skb metadata before TC ingress, so
// the program sees an IPv4 EtherType and must look at skb->vlan_present.
func TestWireVLANTaggedFrameIsNotForwarded(t *testing.T) {
	e := newWireEnv(t, datapath.ModeAuto)
	plain := udpFrame(peerPod, localPod)
	copy(plain[0:6], e.eth0MAC[:])
	tagged := vlanTagged(plain, 100)

	// The untagged frame is forwarded: the setup can tell the difference.
	e.expectCounted(t, "untagged", e.send(t, plain), "ipv4", "redirect", len(plain))
	// The tag is not part of what the program sees of the frame.
	e.expectCounted(t, "VLAN 100", e.send(t, tagged), "ipv4", "not_ip", len(tagged)-4)
}

func htons(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}

// The IPv6 counterpart: an Ethernet frame with 20 bytes of an IPv6 header
// reaches from_underlay only on a wire.
func TestWireTruncatedIPv6(t *testing.T) {
	e := newWireEnv(t, datapath.ModeAuto)
	if err := e.dp.SetConfig(datapath.NodeConfig{PodSubnet: podSubnet, Gateway: gateway, PodSubnet6: podSubnet6, Gateway6: gateway6,
		BridgeIfindex: uint32(e.cni0), UnderlayIfindex: uint32(e.eth0), Conntrack: true}); err != nil {
		t.Fatal(err)
	}
	full := udp6Frame(peerPod6, localPod6, 0)
	copy(full[0:6], e.eth0MAC[:])
	truncated := full[:ethLen+20]
	e.expectCounted(t, "Ethernet + 20 bytes of IPv6", e.send(t, truncated), "ipv6", "malformed", len(truncated))
}
