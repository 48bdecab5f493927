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

// Input is everything the desired state depends on.
type Input struct {
	Own      netip.Prefix   // our own pod subnet
	Network  netip.Prefix   // the cluster network
	OnLink   []netip.Prefix // the underlay device's IPv4 networks
	PublicIP netip.Addr     // our own public IP
	Leases   []registry.Lease
}

// Desired is the one place the desired state is computed: every other
// node's lease whose PublicIP is directly reachable on the underlay. Leases
// that cannot be routed are returned as skipped, with a stable reason.
// Among overlapping subnets the one with the smaller key wins (stable
// across nodes and restarts).
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
	for _, l := range leases {
		switch {
		case l.PublicIP == in.PublicIP && l.Subnet == in.Own:
			continue // ourselves
		case l.PublicIP == in.PublicIP:
			skip(l, "own_public_ip", "another lease (%s) names our own public IP %s", l.Subnet, l.PublicIP)
			continue
		case l.Subnet.Overlaps(in.Own):
			skip(l, "own_subnet", "subnet %s overlaps our own %s", l.Subnet, in.Own)
			continue
		case !in.Network.Contains(l.Subnet.Addr()) || l.Subnet.Bits() < in.Network.Bits():
			skip(l, "outside_network", "subnet %s is outside the network %s", l.Subnet, in.Network)
			continue
		case !onLink(in.OnLink, l.PublicIP):
			skip(l, "not_on_link", "PublicIP %s is not on the underlay link %v (host-gw needs L2 adjacency)", l.PublicIP, in.OnLink)
			continue
		}
		if other, ok := overlapping(taken, lengths, l.Subnet); ok {
			skip(l, "overlap", "subnet %s overlaps %s's", l.Subnet, other)
			continue
		}
		taken[l.Subnet] = l.Key
		lengths[l.Subnet.Bits()] = true
		peers = append(peers, Peer{Subnet: l.Subnet, NextHop: l.PublicIP, Key: l.Key})
	}
	return peers, skipped
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
