// Package reconcile keeps the kernel routes and the BPF routes map equal to
// the desired peers: level-triggered, idempotent, on every change, on a
// timer, and at once when one of its routes is deleted.
package reconcile

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/hgw-ebpf/hgw-ebpf/pkg/registry"
)

// Peer is another node whose pod subnet we route to.
type Peer struct {
	Subnet  netip.Prefix
	NextHop netip.Addr // the peer's PublicIP
	Key     string     // its etcd key, for logs
}

// Skip reasons Desired gives, stable for logs and metrics.
const (
	ReasonOwnSubnet      = "own_subnet"      // overlaps our subnet, another PublicIP
	ReasonOwnPublicIP    = "own_public_ip"   // our PublicIP with a subnet not ours (a stale lease of ours)
	ReasonOutsideNetwork = "outside_network" // not inside the cluster Network
	ReasonLocal          = "local_prefix"    // covers one of this node's addresses or local routes
	ReasonNotOnLink      = "not_on_link"     // PublicIP not on the underlay: host-gw needs L2 adjacency
	ReasonOverlap        = "overlap"         // overlaps another peer's subnet that won
)

// Input is everything the desired state depends on.
type Input struct {
	Own     netip.Prefix   // our own pod subnet
	Network netip.Prefix   // the cluster network
	OnLink  []netip.Prefix // the underlay device's IPv4 networks
	// Local is this node's own prefixes (Reconciler.LocalPrefixes): its
	// addresses and networks on every device (cni0's subnet, the
	// underlay's) and connected or local routes that are not ours. A
	// route to a lease covering one would take the node's own traffic
	// elsewhere, or replace the route it has (a Network wider than it
	// should be, a subnet cni0 still holds after the node's changed).
	Local    []netip.Prefix
	PublicIP netip.Addr // our own public IP
	Leases   []registry.Lease
}

// Desired is the one place the desired state is computed: every other
// node's lease whose PublicIP is directly reachable on the underlay (inside
// one of Input.OnLink). Our own lease (our PublicIP and subnet) is simply
// not a peer. Leases that cannot be routed are returned as skipped with a
// Reason* constant, checked in this order: own_public_ip, own_subnet,
// outside_network, local_prefix, not_on_link, overlap.
//
// Overlapping peer subnets: leases are taken in etcd key order and a
// subnet overlapping one already taken is skipped, so the smaller key
// wins. Every node sees the same keys, so every node picks the same
// winner, whatever order etcd listed them in; a lease that is skipped for
// another reason reserves nothing. Peers come back in key order.
func Desired(in Input) ([]Peer, []registry.Skipped) {
	// Runs on every lease change: no copy of the leases (the registry's
	// snapshot is in key order already: then no sort either), the
	// accepted subnets in one pre-sized map.
	order := keyOrder(in.Leases)
	var (
		peers   = make([]Peer, 0, len(in.Leases))
		skipped []registry.Skipped
		taken   = make(map[v4prefix]string, len(in.Leases)) // accepted subnet -> key
		lengths []int                                       // the prefix lengths accepted: normally one, SubnetLen
	)
	skip := func(l *registry.Lease, reason, format string, args ...any) {
		skipped = append(skipped, registry.Skipped{Key: l.Key, Reason: reason, Err: fmt.Errorf(format, args...)})
	}
	own := in.Own.Masked()
	// Only local prefixes inside the network can overlap a lease that
	// passed the network check: normally cni0's subnet alone.
	var local []netip.Prefix
	for _, p := range in.Local {
		if p.Overlaps(in.Network) {
			local = append(local, p.Masked())
		}
	}
	for i := range in.Leases {
		l := &in.Leases[i]
		if order != nil {
			l = &in.Leases[order[i]]
		}
		subnet := l.Subnet.Masked() // as the kernel and the map hold it
		ours := l.PublicIP.IsValid() && l.PublicIP == in.PublicIP
		switch {
		case ours && subnet == own:
			continue // ourselves
		case ours:
			skip(l, ReasonOwnPublicIP, "another lease (%s) names our own public IP %s", subnet, l.PublicIP)
			continue
		case subnet.Overlaps(own):
			skip(l, ReasonOwnSubnet, "subnet %s overlaps our own %s", subnet, own)
			continue
		case !in.Network.Contains(subnet.Addr()) || subnet.Bits() < in.Network.Bits():
			skip(l, ReasonOutsideNetwork, "subnet %s is outside the network %s", subnet, in.Network)
			continue
		case coveredLocal(local, subnet).IsValid():
			skip(l, ReasonLocal, "subnet %s covers this node's local prefix %s", subnet, coveredLocal(local, subnet))
			continue
		case !onLink(in.OnLink, l.PublicIP):
			skip(l, ReasonNotOnLink, "PublicIP %s is not on the underlay link %v (host-gw needs L2 adjacency)", l.PublicIP, in.OnLink)
			continue
		}
		if other, ok := overlapping(taken, lengths, subnet); ok {
			skip(l, ReasonOverlap, "subnet %s overlaps %s's", subnet, other)
			continue
		}
		taken[v4key(subnet)] = l.Key
		if !slices.Contains(lengths, subnet.Bits()) {
			lengths = append(lengths, subnet.Bits())
		}
		peers = append(peers, Peer{Subnet: subnet, NextHop: l.PublicIP, Key: l.Key})
	}
	return peers, skipped
}

// keyOrder is the index order that sorts leases by key, or nil if they
// are in key order already.
func keyOrder(leases []registry.Lease) []int {
	if slices.IsSortedFunc(leases, func(a, b registry.Lease) int { return strings.Compare(a.Key, b.Key) }) {
		return nil
	}
	order := make([]int, len(leases))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(i, j int) int { return strings.Compare(leases[i].Key, leases[j].Key) })
	return order
}

// coveredLocal is the first of this node's prefixes that lies inside p
// (or is p): a route to p would replace that route or pull the node's own
// addresses to a peer. A local prefix wider than p is not in the way: the
// kernel picks the longer prefix, so a flat network (pods in 10.244.0.0/16
// on a 10.0.0.0/8 underlay) is routed as flanneld routes it.
func coveredLocal(prefixes []netip.Prefix, p netip.Prefix) netip.Prefix {
	for _, q := range prefixes {
		if p.Bits() <= q.Bits() && p.Contains(q.Addr()) {
			return q
		}
	}
	return netip.Prefix{}
}

func onLink(prefixes []netip.Prefix, ip netip.Addr) bool {
	for _, p := range prefixes {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// v4prefix is an IPv4 prefix as one number (address << 8 | length): a
// cheap map key (netip.Prefix hashes 32 bytes and holds a pointer), on
// every lease of every change.
type v4prefix uint64

func v4key(p netip.Prefix) v4prefix {
	a := p.Addr().As4()
	return v4prefix(binary.BigEndian.Uint32(a[:]))<<8 | v4prefix(p.Bits())
}

func (k v4prefix) prefix() netip.Prefix {
	var a [4]byte
	binary.BigEndian.PutUint32(a[:], uint32(k>>8))
	return netip.PrefixFrom(netip.AddrFrom4(a), int(k&0xff))
}

// overlapping finds an accepted subnet overlapping p, checking only the
// prefix lengths in use (normally one: SubnetLen), not every pair.
func overlapping(taken map[v4prefix]string, lengths []int, p netip.Prefix) (string, bool) {
	for _, bits := range lengths {
		if bits <= p.Bits() {
			if key, ok := taken[v4key(netip.PrefixFrom(p.Addr(), bits).Masked())]; ok {
				return key, true
			}
			continue
		}
		// A longer accepted prefix inside p.
		for q, key := range taken {
			if qp := q.prefix(); qp.Bits() == bits && p.Contains(qp.Addr()) {
				return key, true
			}
		}
	}
	return "", false
}
