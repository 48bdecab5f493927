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

// Config is <prefix>/config, as flannel writes and reads it.
type Config struct {
	Network     netip.Prefix
	SubnetLen   int // default 24
	SubnetMin   netip.Addr
	SubnetMax   netip.Addr
	BackendType string
}

// LeaseAttrs is the JSON value of a lease key, field for field as flanneld
// writes it, so leases round-trip between flanneld and us.
type LeaseAttrs struct {
	PublicIP      string          `json:"PublicIP,omitempty"`
	PublicIPv6    string          `json:"PublicIPv6,omitempty"`
	BackendType   string          `json:"BackendType,omitempty"`
	BackendData   json.RawMessage `json:"BackendData,omitempty"`
	BackendV6Data json.RawMessage `json:"BackendV6Data,omitempty"`
}

// Lease is one node's claim on a pod subnet.
type Lease struct {
	Key        string       // full etcd key
	Subnet     netip.Prefix // IPv4 pod subnet
	IPv6Subnet netip.Prefix // zero if the key has no IPv6 part
	PublicIP   netip.Addr   // parsed Attrs.PublicIP
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
	Reason string // stable, metric-friendly: "bad_key", "bad_json", "bad_public_ip", "outside_network", "backend", or a reconcile reason
	Err    error
}
