// Package reconcile keeps the kernel routes and the BPF routes map equal to
// the desired peers: level-triggered, idempotent, on every change, on a
// timer, and at once when one of its routes is deleted.
package reconcile

import (
	"fmt"
	"net/netip"
	"sort"

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
	ReasonLocal          = "local_prefix"    // overlaps one of this node's addresses or local routes
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
	// route to a lease overlapping one would take the node's own traffic
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
	leases := append([]registry.Lease(nil), in.Leases...)
	sort.Slice(leases, func(i, j int) bool { return leases[i].Key < leases[j].Key })

	var (
		peers   []Peer
		skipped []registry.Skipped
		taken   = map[netip.Prefix]string{} // accepted subnet -> key
		lengths = map[int]bool{}
	)
	skip := func(l registry.Lease, reason, format string, args ...any) {
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
	for _, l := range leases {
		l.Subnet = l.Subnet.Masked() // as the kernel and the map hold it
		ours := l.PublicIP.IsValid() && l.PublicIP == in.PublicIP
		switch {
		case ours && l.Subnet == own:
			continue // ourselves
		case ours:
			skip(l, ReasonOwnPublicIP, "another lease (%s) names our own public IP %s", l.Subnet, l.PublicIP)
			continue
		case l.Subnet.Overlaps(own):
			skip(l, ReasonOwnSubnet, "subnet %s overlaps our own %s", l.Subnet, own)
			continue
		case !in.Network.Contains(l.Subnet.Addr()) || l.Subnet.Bits() < in.Network.Bits():
			skip(l, ReasonOutsideNetwork, "subnet %s is outside the network %s", l.Subnet, in.Network)
			continue
		case overlapsAny(local, l.Subnet):
			skip(l, ReasonLocal, "subnet %s overlaps this node's local prefix %s", l.Subnet, firstOverlap(local, l.Subnet))
			continue
		case !onLink(in.OnLink, l.PublicIP):
			skip(l, ReasonNotOnLink, "PublicIP %s is not on the underlay link %v (host-gw needs L2 adjacency)", l.PublicIP, in.OnLink)
			continue
		}
		if other, ok := overlapping(taken, lengths, l.Subnet); ok {
			skip(l, ReasonOverlap, "subnet %s overlaps %s's", l.Subnet, other)
			continue
		}
		taken[l.Subnet] = l.Key
		lengths[l.Subnet.Bits()] = true
		peers = append(peers, Peer{Subnet: l.Subnet, NextHop: l.PublicIP, Key: l.Key})
	}
	return peers, skipped
}

func overlapsAny(prefixes []netip.Prefix, p netip.Prefix) bool {
	return firstOverlap(prefixes, p).IsValid()
}

func firstOverlap(prefixes []netip.Prefix, p netip.Prefix) netip.Prefix {
	for _, q := range prefixes {
		if q.Overlaps(p) {
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
func overlapping(taken map[netip.Prefix]string, lengths map[int]bool, p netip.Prefix) (string, bool) {
	for bits := range lengths {
		var probe netip.Prefix
		if bits <= p.Bits() {
			probe = netip.PrefixFrom(p.Addr(), bits).Masked()
			if key, ok := taken[probe]; ok {
				return key, true
			}
			continue
		}
		// A longer accepted prefix inside p.
		for q, key := range taken {
			if q.Bits() == bits && p.Contains(q.Addr()) {
				return key, true
			}
		}
	}
	return "", false
}
