package datapath_test

// Hand-built frames for the BPF_PROG_TEST_RUN tests: Ethernet, IPv4 (with
// its checksum), UDP, TCP, ICMP, ARP, IPv6 and 802.1Q. Built byte by byte so
// that a test can break exactly one field of an otherwise valid packet.

import (
	"encoding/binary"
	"net/netip"
	"testing"
)

const (
	etherTypeIPv4 = 0x0800
	etherTypeARP  = 0x0806
	etherTypeVLAN = 0x8100
	etherTypeIPv6 = 0x86dd

	protoICMP = 1
	protoTCP  = 6
	protoUDP  = 17

	ethLen  = 14
	ipv4Len = 20
)

type mac [6]byte

var (
	// The MAC of cni0 and eth0 in the test namespace, where test runs
	// happen: frames to it are PACKET_HOST. It is the pods' gateway MAC,
	// as a bridge's MAC is.
	macHost      = mac{0x02, 0x42, 0x0a, 0xf4, 0x01, 0x01}
	macBroadcast = mac{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	macForeign   = mac{0x02, 0x00, 0x5e, 0x10, 0x20, 0x30}
	macPod       = mac{0x02, 0x42, 0x0a, 0xf4, 0x01, 0x05}
)

// ether frames payload behind an Ethernet header.
func ether(dst, src mac, etherType uint16, payload []byte) []byte {
	b := make([]byte, ethLen, ethLen+len(payload))
	copy(b[0:6], dst[:])
	copy(b[6:12], src[:])
	binary.BigEndian.PutUint16(b[12:14], etherType)
	return append(b, payload...)
}

// ipv4Header holds the fields a test sets; the rest are derived (version 4,
// IHL from the options, total length, checksum).
type ipv4Header struct {
	Src, Dst netip.Addr
	TTL      uint8
	Protocol uint8
	TOS      uint8
	ID       uint16
	FragOff  uint16 // flags (0x4000 DF, 0x2000 MF) | offset in 8-byte units
	Options  []byte // a multiple of 4 bytes
}

// ipv4 returns header + payload with a correct total length and checksum.
func ipv4(h ipv4Header, payload []byte) []byte {
	hl := ipv4Len + len(h.Options)
	b := make([]byte, hl, hl+len(payload))
	b[0] = 4<<4 | byte(hl/4)
	b[1] = h.TOS
	binary.BigEndian.PutUint16(b[2:4], uint16(hl+len(payload)))
	binary.BigEndian.PutUint16(b[4:6], h.ID)
	binary.BigEndian.PutUint16(b[6:8], h.FragOff)
	b[8] = h.TTL
	b[9] = h.Protocol
	src, dst := h.Src.As4(), h.Dst.As4()
	copy(b[12:16], src[:])
	copy(b[16:20], dst[:])
	copy(b[20:], h.Options)
	binary.BigEndian.PutUint16(b[10:12], ipChecksum(b[:hl]))
	return append(b, payload...)
}

// onesSum is the RFC 1071 one's complement sum of b, folded to 16 bits.
func onesSum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return uint16(sum)
}

// ipChecksum computes the header checksum from scratch, ignoring whatever
// the checksum field (bytes 10-11) holds.
func ipChecksum(hdr []byte) uint16 {
	c := make([]byte, len(hdr))
	copy(c, hdr)
	c[10], c[11] = 0, 0
	return ^onesSum(c)
}

// ipHeaderOf returns the IPv4 header of an Ethernet frame, options included.
func ipHeaderOf(frame []byte) []byte {
	ihl := int(frame[ethLen]&0x0f) * 4
	return frame[ethLen : ethLen+ihl]
}

// refreshChecksum rewrites the IPv4 checksum of frame after a test broke a
// field on purpose, so that only that field is wrong.
func refreshChecksum(frame []byte) {
	hdr := ipHeaderOf(frame)
	binary.BigEndian.PutUint16(hdr[10:12], ipChecksum(hdr))
}

func udp(sport, dport uint16, data []byte) []byte {
	b := make([]byte, 8, 8+len(data))
	binary.BigEndian.PutUint16(b[0:2], sport)
	binary.BigEndian.PutUint16(b[2:4], dport)
	binary.BigEndian.PutUint16(b[4:6], uint16(8+len(data)))
	// Checksum 0: "none", legal for UDP over IPv4; the programs never read it.
	return append(b, data...)
}

func tcp(sport, dport uint16, flags uint8) []byte {
	b := make([]byte, 20)
	binary.BigEndian.PutUint16(b[0:2], sport)
	binary.BigEndian.PutUint16(b[2:4], dport)
	binary.BigEndian.PutUint32(b[4:8], 0x01020304) // sequence number
	b[12] = 5 << 4                                 // data offset
	b[13] = flags
	binary.BigEndian.PutUint16(b[14:16], 64240) // window
	return b
}

const (
	icmpEchoReply   = 0
	icmpUnreachable = 3
	icmpEcho        = 8
	icmpTimeExceed  = 11
)

// icmp builds an ICMP message; rest is the 4 bytes after the checksum (id
// and sequence of an echo) followed by the body.
func icmp(typ, code uint8, rest []byte) []byte {
	b := make([]byte, 4, 4+len(rest))
	b[0], b[1] = typ, code
	b = append(b, rest...)
	binary.BigEndian.PutUint16(b[2:4], ^onesSum(b))
	return b
}

func icmpEchoMsg(typ uint8, id, seq uint16) []byte {
	rest := make([]byte, 4, 4+16)
	binary.BigEndian.PutUint16(rest[0:2], id)
	binary.BigEndian.PutUint16(rest[2:4], seq)
	return icmp(typ, 0, append(rest, []byte("hgw-ebpf ping pl")...))
}

// arpRequest is a who-has for target from sender, as a broadcast frame.
func arpRequest(sender, target netip.Addr) []byte {
	b := make([]byte, 28)
	binary.BigEndian.PutUint16(b[0:2], 1)             // Ethernet
	binary.BigEndian.PutUint16(b[2:4], etherTypeIPv4) // protocol
	b[4], b[5] = 6, 4
	binary.BigEndian.PutUint16(b[6:8], 1) // request
	copy(b[8:14], macPod[:])
	s, t := sender.As4(), target.As4()
	copy(b[14:18], s[:])
	copy(b[24:28], t[:])
	return ether(macBroadcast, macPod, etherTypeARP, b)
}

// ipv6Header holds the fields of an IPv6 header a test sets; the version
// and the payload length are derived.
type ipv6Header struct {
	Src, Dst     netip.Addr
	HopLimit     uint8
	NextHeader   uint8
	TrafficClass uint8
	FlowLabel    uint32
}

const ipv6Len = 40

// ipv6 returns header + payload with a correct payload length.
func ipv6(h ipv6Header, payload []byte) []byte {
	b := make([]byte, ipv6Len, ipv6Len+len(payload))
	binary.BigEndian.PutUint32(b[0:4], 6<<28|uint32(h.TrafficClass)<<20|h.FlowLabel&0xfffff)
	binary.BigEndian.PutUint16(b[4:6], uint16(len(payload)))
	b[6] = h.NextHeader
	b[7] = h.HopLimit
	s, d := h.Src.As16(), h.Dst.As16()
	copy(b[8:24], s[:])
	copy(b[24:40], d[:])
	return append(b, payload...)
}

// ipv6UDP is a minimal IPv6 + UDP packet.
func ipv6UDP(src, dst netip.Addr, hopLimit uint8, payload []byte) []byte {
	return ipv6(ipv6Header{Src: src, Dst: dst, HopLimit: hopLimit, NextHeader: protoUDP}, payload)
}

// extHeader is an IPv6 extension header of the common form (next header,
// length in 8-byte units beyond the first 8, then options padded with
// PadN), followed by payload.
func extHeader(next uint8, payload []byte) []byte {
	b := []byte{next, 0, 1, 4, 0, 0, 0, 0} // PadN of 4 bytes fills the 8
	return append(b, payload...)
}

// fragmentHeader is an IPv6 fragment header for the fragment at offset
// (8-byte units) of packet id, followed by payload.
func fragmentHeader(next uint8, offset uint16, more bool, id uint32, payload []byte) []byte {
	b := make([]byte, 8, 8+len(payload))
	b[0] = next
	fo := offset << 3
	if more {
		fo |= 1
	}
	binary.BigEndian.PutUint16(b[2:4], fo)
	binary.BigEndian.PutUint32(b[4:8], id)
	return append(b, payload...)
}

const (
	icmp6Unreachable = 1
	icmp6TooBig      = 2
	icmp6TimeExceed  = 3
	icmp6ParamProb   = 4
	icmp6EchoRequest = 128
	icmp6EchoReply   = 129
	icmp6RouterSol   = 133
	icmp6NeighSol    = 135
	icmp6NeighAdv    = 136
	icmp6Redirect    = 137
)

// familyOf is the counter family of a frame as the programs count it: by
// its EtherType (a test run's frame keeps a VLAN tag in the data).
func familyOf(frame []byte) string {
	switch binary.BigEndian.Uint16(frame[12:14]) {
	case etherTypeIPv4:
		return "ipv4"
	case etherTypeIPv6:
		return "ipv6"
	}
	return "other"
}

// vlanTagged inserts an 802.1Q tag with vid into an Ethernet frame.
func vlanTagged(frame []byte, vid uint16) []byte {
	out := make([]byte, 0, len(frame)+4)
	out = append(out, frame[:12]...)
	out = binary.BigEndian.AppendUint16(out, etherTypeVLAN)
	out = binary.BigEndian.AppendUint16(out, vid&0x0fff)
	return append(out, frame[12:]...)
}

// The checksum is what every forwarding test leans on: check it against a
// header whose checksum is known (the IPv4 header example widely used to
// teach RFC 791/1071, checksum 0xb861).
func TestIPChecksumKnownHeader(t *testing.T) {
	hdr := []byte{
		0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11,
		0xb8, 0x61, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
	}
	if got := ipChecksum(hdr); got != 0xb861 {
		t.Fatalf("ipChecksum = %#04x, want 0xb861", got)
	}
	if got := onesSum(hdr); got != 0xffff {
		t.Fatalf("sum over a valid header = %#04x, want 0xffff", got)
	}
	built := ipv4(ipv4Header{
		Src: netip.MustParseAddr("192.168.0.1"), Dst: netip.MustParseAddr("192.168.0.199"),
		TTL: 64, Protocol: protoUDP, FragOff: 0x4000,
	}, make([]byte, 0x73-ipv4Len))
	if string(built[:ipv4Len]) != string(hdr) {
		t.Fatalf("ipv4() header\n got % x\nwant % x", built[:ipv4Len], hdr)
	}
}
