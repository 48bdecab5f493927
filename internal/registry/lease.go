// Package registry speaks flannel's etcd schema: the network config, this
// node's subnet lease, and the leases of every other node.
package registry

import (
	"encoding/json"
	"net/netip"
	"time"
)

// DefaultPrefix is flannel's default etcd prefix.
const DefaultPrefix = "/coreos.com/network"

// Config is <prefix>/config, as flannel writes and reads it. With
// EnableIPv6 every lease holds an IPv6 subnet of IPv6Network besides its
// IPv4 one; without it the IPv6 fields are zero.
type Config struct {
	EnableIPv4    bool // always true: flannel's etcd leases cannot be IPv6 only
	EnableIPv6    bool
	Network       netip.Prefix
	SubnetLen     int // default 24
	SubnetMin     netip.Addr
	SubnetMax     netip.Addr
	IPv6Network   netip.Prefix
	IPv6SubnetLen int // default 64
	IPv6SubnetMin netip.Addr
	IPv6SubnetMax netip.Addr
	BackendType   string
}

// LeaseAttrs is the JSON value of a lease key, field for field as flanneld
// writes it, so leases round-trip between flanneld and us. PublicIPv6 is
// "" when the value has none (flanneld writes null).
type LeaseAttrs struct {
	PublicIP      string          `json:"PublicIP,omitempty"`
	PublicIPv6    string          `json:"PublicIPv6,omitempty"`
	BackendType   string          `json:"BackendType,omitempty"`
	BackendData   json.RawMessage `json:"BackendData,omitempty"`
	BackendV6Data json.RawMessage `json:"BackendV6Data,omitempty"`
}

// flanneldAttrs is flanneld's lease.LeaseAttrs on the wire: its PublicIP
// (an ip.IP4) is never omitted, and its PublicIPv6 is a pointer without
// omitempty, so an IPv4-only lease says "PublicIPv6":null. flanneld cannot
// parse "" there: it would ignore the whole lease. These two fields hide
// the embedded ones of the same name; the rest are LeaseAttrs' as they
// are.
type flanneldAttrs struct {
	PublicIP   string
	PublicIPv6 *string
	plainAttrs
}

// plainAttrs is LeaseAttrs without its MarshalJSON.
type plainAttrs LeaseAttrs

// MarshalJSON writes the bytes flanneld writes for the same lease:
// {"PublicIP":"198.18.0.11","PublicIPv6":null,"BackendType":"host-gw"},
// or with "PublicIPv6":"fd00::11" on a dual-stack node.
func (a LeaseAttrs) MarshalJSON() ([]byte, error) {
	w := flanneldAttrs{PublicIP: a.PublicIP, plainAttrs: plainAttrs(a)}
	if a.PublicIPv6 != "" {
		w.PublicIPv6 = &a.PublicIPv6
	}
	return json.Marshal(w)
}

// Lease is one node's claim on a pod subnet.
type Lease struct {
	Key        string       // full etcd key
	Subnet     netip.Prefix // IPv4 pod subnet
	IPv6Subnet netip.Prefix // zero if the key has no IPv6 part
	PublicIP   netip.Addr   // parsed Attrs.PublicIP
	// PublicIPv6 is the parsed Attrs.PublicIPv6, the next hop of the
	// IPv6 subnet; zero if the value has none (then the IPv6 subnet, if
	// any, cannot be routed).
	PublicIPv6 netip.Addr
	Attrs      LeaseAttrs
	// Reservation is a key bound to no etcd lease: honoured, never
	// expired, as in flannel.
	Reservation bool
	// Expiration is when the etcd lease ends, as etcd said when the key
	// was read (its owner's renewals move it later without an event);
	// zero for a reservation.
	Expiration time.Time
	// LeaseID is the etcd lease the key is bound to (0: reservation).
	LeaseID int64
	// ModRevision of the key when read.
	ModRevision int64
}

// Snapshot is the complete set of leases at one etcd revision.
type Snapshot struct {
	Revision int64
	Leases   []Lease
	Skipped  []Skipped
}

// Skipped is an etcd entry that is not a usable lease, with the reason.
type Skipped struct {
	Key    string
	Reason string // stable, metric-friendly: one of the Reason constants, or a reconcile reason
	Err    error
}

// Why an entry is not a lease (Skipped.Reason).
const (
	ReasonBadKey         = "bad_key"
	ReasonBadJSON        = "bad_json"
	ReasonBadPublicIP    = "bad_public_ip"
	ReasonOutsideNetwork = "outside_network"
	ReasonBackend        = "backend" // of another backend than the network's
)

// ParsePublicIP parses a lease's IPv4 next hop.
func ParsePublicIP(s string) (netip.Addr, bool) {
	ip, err := netip.ParseAddr(s)
	return ip, err == nil && ip.Is4()
}

// ParsePublicIPv6 parses a lease's IPv6 next hop (see PlainIPv6).
func ParsePublicIPv6(s string) (netip.Addr, bool) {
	ip, err := netip.ParseAddr(s)
	return ip, err == nil && PlainIPv6(ip)
}

// PlainIPv6 reports whether ip can be an IPv6 next hop in a lease: IPv6,
// not IPv4-mapped, no zone.
func PlainIPv6(ip netip.Addr) bool { return ip.Is6() && !ip.Is4In6() && ip.Zone() == "" }

// InNetwork reports whether subnet lies in network.
func InNetwork(network, subnet netip.Prefix) bool {
	return network.Contains(subnet.Addr()) && subnet.Bits() >= network.Bits()
}

// OtherBackend reports whether a lease of backend is to be ignored: as
// flanneld's host-gw, which ignores leases of other backends (a vxlan
// node has no route to offer).
func (c Config) OtherBackend(backend string) bool {
	return c.BackendType != "" && backend != "" && backend != c.BackendType
}

// RawJSON is a JSON value as a lease holds it: nil if empty.
func RawJSON(s string) json.RawMessage {
	if s == "" {
		return nil
	}
	return json.RawMessage(s)
}
