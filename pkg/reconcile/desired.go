// Package reconcile keeps the kernel routes and the BPF routes map equal to
// the desired peers: level-triggered, idempotent, on every change, on a
// timer, and at once when one of its routes is deleted.
package reconcile

import (
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
	// ReasonNoIPv6 is a lease without an IPv6 subnet or PublicIPv6 (a
	// node without IPv6) in the IPv6 desired state: routed in IPv4 only.
	ReasonNoIPv6 = "no_ipv6"
)

// Input is everything the desired state of one family depends on: with
// Family IPv6, the IPv6 halves of the leases, of the network and of this
// node.
type Input struct {
	Family  Family         // IPv4 if zero
	Own     netip.Prefix   // our own pod subnet
	Network netip.Prefix   // the cluster network
	OnLink  []netip.Prefix // the underlay device's networks
	// Local is this node's own prefixes (Reconciler.LocalPrefixes): its
	// addresses and networks on every device (cni0's subnet, the
	// underlay's) and connected or local routes that are not ours. A
	// route to a lease covering one would take the node's own traffic
	// elsewhere, or replace the route it has (a Network wider than it
	// should be, a subnet cni0 still holds after the node's changed).
	Local    []netip.Prefix
	PublicIP netip.Addr // our own public IP (PublicIPv6 for IPv6)
	Leases   []registry.Lease
}

// Desired is the one place the desired state is computed: every other
// node's lease whose PublicIP is directly reachable on the underlay (inside
// one of Input.OnLink). Our own lease (our PublicIP and subnet) is simply
// not a peer. Leases that cannot be routed are returned as skipped with a
// Reason* constant, checked in this order: no_ipv6 (IPv6 only),
// own_public_ip, own_subnet, outside_network, local_prefix, not_on_link,
// overlap.
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
		taken   = newPrefixMap[string](len(in.Leases)) // accepted subnet -> key
		lengths []int                                  // the prefix lengths accepted: normally one, SubnetLen
	)
	skip := func(l *registry.Lease, reason, format string, args ...any) {
		skipped = append(skipped, registry.Skipped{Key: l.Key, Reason: reason, Err: fmt.Errorf(format, args...)})
	}
	fam := in.Family
	if fam == 0 {
		fam = IPv4
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
		subnet, nexthop := fam.lease(l)
		subnet = subnet.Masked() // as the kernel and the map hold it
		ours := nexthop.IsValid() && nexthop == in.PublicIP
		switch {
		case fam == IPv6 && (!subnet.IsValid() || !nexthop.IsValid()):
			skip(l, ReasonNoIPv6, "lease has no IPv6 subnet with a PublicIPv6 (a node without IPv6): routed in IPv4 only")
			continue
		case ours && subnet == own:
			continue // ourselves
		case ours:
			skip(l, ReasonOwnPublicIP, "another lease (%s) names our own public IP %s", subnet, nexthop)
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
		case !onLink(in.OnLink, nexthop):
			skip(l, ReasonNotOnLink, "%s %s is not on the underlay link %v (host-gw needs L2 adjacency)", fam.publicIPField(), nexthop, in.OnLink)
			continue
		}
		if other, ok := overlapping(taken, lengths, subnet); ok {
			skip(l, ReasonOverlap, "subnet %s overlaps %s's", subnet, other)
			continue
		}
		taken.set(subnet, l.Key)
		if !slices.Contains(lengths, subnet.Bits()) {
			lengths = append(lengths, subnet.Bits())
		}
		peers = append(peers, Peer{Subnet: subnet, NextHop: nexthop, Key: l.Key})
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

// overlapping finds an accepted subnet overlapping p, checking only the
// prefix lengths in use (normally one: SubnetLen), not every pair.
func overlapping(taken prefixMap[string], lengths []int, p netip.Prefix) (string, bool) {
	for _, bits := range lengths {
		if bits <= p.Bits() {
			if key, ok := taken.get(netip.PrefixFrom(p.Addr(), bits).Masked()); ok {
				return key, true
			}
			continue
		}
		// A longer accepted prefix inside p.
		var found string
		taken.each(func(q netip.Prefix, key string) bool {
			if q.Bits() == bits && p.Contains(q.Addr()) {
				found = key
			}
			return found == ""
		})
		if found != "" {
			return found, true
		}
	}
	return "", false
}
