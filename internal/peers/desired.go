// Package reconcile keeps the kernel routes and the BPF routes map equal to
// the desired peers: level-triggered, idempotent, on every change, on a
// timer, and at once when one of its routes is deleted.
package peers

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/hgw-ebpf/hgw-ebpf/internal/registry"
)

// Peer is another node whose pod subnet we route to.
type Peer struct {
	Subnet  netip.Prefix
	NextHop netip.Addr // the peer's PublicIP
	Key     string     // its etcd key, for logs
}

// Skip reasons Desired gives, stable for logs and metrics.
const (
	ReasonOwnSubnet      = "own_subnet"                  // overlaps our subnet, another PublicIP
	ReasonOwnPublicIP    = "own_public_ip"               // our PublicIP with a subnet not ours (a stale lease of ours)
	ReasonOutsideNetwork = registry.ReasonOutsideNetwork // not inside the cluster Network (one reason wherever found)
	ReasonLocal          = "local_prefix"                // covers one of this node's addresses or local routes
	ReasonNotOnLink      = "not_on_link"                 // PublicIP not on the underlay: host-gw needs L2 adjacency
	ReasonOverlap        = "overlap"                     // overlaps another peer's subnet that won
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
//
// DesiredSet keeps the same answer up to date lease by lease.
func Desired(in Input) ([]Peer, []registry.Skipped) {
	var d DesiredSet
	return d.full(newRules(in), sliceLeases(in.Leases), true)
}

// LeaseSet is the leases a DesiredSet reads: *registry.Table is one.
type LeaseSet interface {
	// Each calls fn with every lease in key order until fn returns false.
	Each(fn func(registry.Lease) bool)
	Get(key string) (registry.Lease, bool)
	// Skip is the registry's skipped entry of key: routed in no family.
	Skip(key string) (registry.Skipped, bool)
	Skipped() []registry.Skipped
}

// DesiredSet is one family's desired peers, kept up to date lease by
// lease with Desired's rules: a lease that changed is judged on its own
// (Changed), unless its subnet overlaps another lease's, where the key
// order decides, or the node's side changed; then every lease is judged
// again in key order (Full). The zero value is empty: Full first.
type DesiredSet struct {
	rules   rules
	ruled   bool              // rules set by a Full
	byKey   map[string]packed // every lease and registry skip, by key
	reasons []string          // packed reasons: index -> reason ("" at 0: routed)
	subnets prefixMap[int32]  // eligible subnets: how many leases hold each
	lengths map[int]int       // their prefix lengths: how many subnets each
	skips   map[string]int    // skip reason (Desired's and the registry's) -> leases
	peers   int
}

// verdict is what became of one lease: routed (subnet), skipped for a
// reason, or our own.
type verdict struct {
	subnet   netip.Prefix // the family's subnet, masked: set when eligible
	reason   string       // "" routed; a Reason*; reasonSelf; the registry's reason
	eligible bool         // passes every rule but the overlap one
	registry bool         // the registry skipped it (it logs that)
}

// reasonSelf marks our own lease: neither a peer nor skipped.
const reasonSelf = "self"

// packed is a verdict as a DesiredSet keeps it for every lease: 19 bytes
// where a verdict takes 56 (a netip.Prefix holds a pointer and padding).
type packed struct {
	addr   [16]byte // the subnet's address (IPv4 in the last 4)
	bits   uint8
	reason uint8 // in DesiredSet.reasons
	flags  uint8
}

const (
	packedEligible = 1 << iota
	packedRegistry
)

// maxReasons bounds the reasons a DesiredSet tells apart (there are a
// dozen): more, from a registry, are kept as "skipped".
const maxReasons = 255

func (d *DesiredSet) pack(v verdict) packed {
	p := packed{addr: v.subnet.Addr().As16(), bits: uint8(v.subnet.Bits())}
	if !v.subnet.IsValid() {
		p = packed{}
	}
	if len(d.reasons) == 0 {
		d.reasons = []string{""} // routed, at 0
	}
	i := slices.Index(d.reasons, v.reason)
	if i < 0 {
		i = min(len(d.reasons), maxReasons)
		if i < maxReasons {
			d.reasons = append(d.reasons, v.reason)
		}
	}
	p.reason = uint8(i)
	if v.eligible {
		p.flags |= packedEligible
	}
	if v.registry {
		p.flags |= packedRegistry
	}
	return p
}

func (d *DesiredSet) reasonAt(i uint8) string {
	if int(i) < len(d.reasons) {
		return d.reasons[i]
	}
	return "skipped"
}

// get is key's verdict, if it has one.
func (d *DesiredSet) get(key string) (verdict, bool) {
	p, ok := d.byKey[key]
	if !ok {
		return verdict{}, false
	}
	v := verdict{eligible: p.flags&packedEligible != 0, registry: p.flags&packedRegistry != 0, reason: d.reasonAt(p.reason)}
	if v.eligible {
		a := netip.AddrFrom16(p.addr)
		if d.rules.fam == IPv4 {
			a = a.Unmap()
		}
		v.subnet = netip.PrefixFrom(a, int(p.bits))
	}
	return v, true
}

// PeerChange is one subnet's change in the desired peers: routed through
// Peer now, or (Removed) not any more.
type PeerChange struct {
	Peer
	Removed bool
}

// Peers is how many peers the set routes.
func (d *DesiredSet) Peers() int { return d.peers }

// Skips calls fn with every skip reason and how many leases have it
// (the registry's reasons too).
func (d *DesiredSet) Skips(fn func(reason string, n int)) {
	for r, n := range d.skips {
		fn(r, n)
	}
}

// Full judges every lease again: the peers (in key order) and the leases
// skipped now that were not skipped for the same reason before.
func (d *DesiredSet) Full(in Input, leases LeaseSet) ([]Peer, []registry.Skipped) {
	return d.full(newRules(in), leases, false)
}

// Changed judges the leases of keys again (added, changed or removed in
// leases) and returns the peers' changes and the leases newly skipped.
// ok is false when that could decide another lease's fate (a subnet
// overlapping another lease's: the key order decides), or when in's
// node side differs from the last Full's: then the caller calls Full,
// and nothing this returned counts.
func (d *DesiredSet) Changed(in Input, keys []string, leases LeaseSet) (changes []PeerChange, skipped []registry.Skipped, ok bool) {
	if !d.ruled || !d.rules.equal(newRules(in)) {
		return nil, nil, false
	}
	// What this call overwrote, put back when it gives up: Full compares
	// with it to report only new skips.
	type was struct {
		key string
		v   verdict
		had bool
	}
	var undo []was
	giveUp := func() ([]PeerChange, []registry.Skipped, bool) {
		for _, u := range slices.Backward(undo) {
			if u.had {
				d.byKey[u.key] = d.pack(u.v)
			} else {
				delete(d.byKey, u.key)
			}
		}
		d.ruled = false // the counts are off: Full only, from now
		return nil, nil, false
	}
	for _, k := range keys {
		old, had := d.get(k)
		undo = append(undo, was{k, old, had})
		l, isLease := leases.Get(k)
		var nv verdict
		switch {
		case isLease:
			nv = d.rules.judge(&l)
		default:
			sk, isSkip := leases.Skip(k)
			if !isSkip {
				break
			}
			nv = verdict{reason: sk.Reason, registry: true}
		}
		present := isLease || nv.registry
		if had && old.eligible {
			d.unhold(old.subnet)
			if d.overlapsHeld(old.subnet) {
				return giveUp() // it decided another's fate, or another decided its
			}
		}
		if nv.eligible {
			if d.overlapsHeld(nv.subnet) {
				return giveUp()
			}
			d.hold(nv.subnet)
		}
		d.forget(old, had)
		if present {
			d.note(k, nv)
		} else {
			delete(d.byKey, k)
		}
		if had && old.reason == "" && (nv.reason != "" || !present || nv.subnet != old.subnet) {
			changes = append(changes, PeerChange{Peer: Peer{Subnet: old.subnet, Key: k}, Removed: true})
		}
		if present && nv.reason == "" {
			_, nexthop := d.rules.fam.lease(&l)
			changes = append(changes, PeerChange{Peer: Peer{Subnet: nv.subnet, NextHop: nexthop, Key: k}})
		}
		if present && nv.skipped() && (!had || old.reason != nv.reason || old.registry) {
			skipped = append(skipped, registry.Skipped{Key: k, Reason: nv.reason, Err: d.rules.explain(&l, nv.reason)})
		}
	}
	return changes, skipped, true
}

// skipped tells a verdict Desired reports as skipped (not the
// registry's, which it logged itself).
func (v verdict) skipped() bool { return v.reason != "" && v.reason != reasonSelf && !v.registry }

// note records key's verdict and counts it.
func (d *DesiredSet) note(key string, v verdict) {
	p := d.pack(v)
	d.byKey[key] = p
	v.reason = d.reasonAt(p.reason) // as get will read it
	switch v.reason {
	case "":
		d.peers++
	case reasonSelf:
	default:
		d.skips[v.reason]++
	}
}

// forget uncounts a verdict (had: there was one); its entry is
// overwritten or deleted by the caller.
func (d *DesiredSet) forget(v verdict, had bool) {
	if !had {
		return
	}
	switch v.reason {
	case "":
		d.peers--
	case reasonSelf:
	default:
		if d.skips[v.reason]--; d.skips[v.reason] == 0 {
			delete(d.skips, v.reason)
		}
	}
}

func (d *DesiredSet) hold(p netip.Prefix) {
	n, _ := d.subnets.get(p)
	d.subnets.set(p, n+1)
	if n == 0 {
		d.lengths[p.Bits()]++
	}
}

func (d *DesiredSet) unhold(p netip.Prefix) {
	n, _ := d.subnets.get(p)
	if n > 1 {
		d.subnets.set(p, n-1)
		return
	}
	d.subnets.delete(p)
	if d.lengths[p.Bits()]--; d.lengths[p.Bits()] <= 0 {
		delete(d.lengths, p.Bits())
	}
}

// overlapsHeld tells whether p overlaps an eligible subnet.
func (d *DesiredSet) overlapsHeld(p netip.Prefix) bool {
	for bits := range d.lengths {
		if _, ok := findOverlap(d.subnets, bits, p); ok {
			return true
		}
	}
	return false
}

// full judges every lease in key order. all: report every skipped lease
// (Desired), else only those whose reason is new.
func (d *DesiredSet) full(r rules, leases LeaseSet, all bool) ([]Peer, []registry.Skipped) {
	old := *d
	n := len(old.byKey)
	*d = DesiredSet{rules: r, ruled: true, byKey: make(map[string]packed, n), reasons: old.reasons, subnets: newPrefixMap[int32](n),
		lengths: map[int]int{}, skips: map[string]int{}}
	var (
		peers   = make([]Peer, 0, n)
		skipped []registry.Skipped
		taken   = newPrefixMap[string](n) // routed subnet -> key
		lengths []int                     // the prefix lengths routed: normally one, SubnetLen
	)
	report := func(l *registry.Lease, v verdict, err error) {
		if o, had := old.get(l.Key); all || !had || o.reason != v.reason || o.registry {
			if err == nil {
				err = r.explain(l, v.reason)
			}
			skipped = append(skipped, registry.Skipped{Key: l.Key, Reason: v.reason, Err: err})
		}
	}
	leases.Each(func(l registry.Lease) bool {
		v := r.judge(&l)
		if v.eligible {
			d.hold(v.subnet)
			if other, ok := overlapping(taken, lengths, v.subnet); ok {
				v.reason = ReasonOverlap
				d.note(l.Key, v)
				report(&l, v, fmt.Errorf("subnet %s overlaps %s's", v.subnet, other))
				return true
			}
			taken.set(v.subnet, l.Key)
			if !slices.Contains(lengths, v.subnet.Bits()) {
				lengths = append(lengths, v.subnet.Bits())
			}
			_, nexthop := r.fam.lease(&l)
			peers = append(peers, Peer{Subnet: v.subnet, NextHop: nexthop, Key: l.Key})
		} else if v.skipped() {
			report(&l, v, nil)
		}
		d.note(l.Key, v)
		return true
	})
	for _, sk := range leases.Skipped() {
		d.note(sk.Key, verdict{reason: sk.Reason, registry: true})
	}
	return peers, skipped
}

// rules is one family's side of Desired: everything but the leases.
type rules struct {
	fam      Family
	own      netip.Prefix // masked
	network  netip.Prefix
	onLink   []netip.Prefix
	local    []netip.Prefix // this node's prefixes inside the network, masked
	publicIP netip.Addr
}

func newRules(in Input) rules {
	r := rules{fam: in.Family, own: in.Own.Masked(), network: in.Network, onLink: in.OnLink, publicIP: in.PublicIP}
	if r.fam == 0 {
		r.fam = IPv4
	}
	// Only local prefixes inside the network can overlap a lease that
	// passed the network check: normally cni0's subnet alone.
	for _, p := range in.Local {
		if p.Overlaps(in.Network) {
			r.local = append(r.local, p.Masked())
		}
	}
	return r
}

func (r rules) equal(o rules) bool {
	return r.fam == o.fam && r.own == o.own && r.network == o.network && r.publicIP == o.publicIP &&
		slices.Equal(r.onLink, o.onLink) && slices.Equal(r.local, o.local)
}

// judge applies every rule but the overlap one to l.
func (r rules) judge(l *registry.Lease) verdict {
	subnet, nexthop := r.fam.lease(l)
	subnet = subnet.Masked() // as the kernel and the map hold it
	ours := nexthop.IsValid() && nexthop == r.publicIP
	switch {
	case r.fam == IPv6 && (!subnet.IsValid() || !nexthop.IsValid()):
		return verdict{reason: ReasonNoIPv6}
	case ours && subnet == r.own:
		return verdict{reason: reasonSelf}
	case ours:
		return verdict{reason: ReasonOwnPublicIP}
	case subnet.Overlaps(r.own):
		return verdict{reason: ReasonOwnSubnet}
	case !registry.InNetwork(r.network, subnet):
		return verdict{reason: ReasonOutsideNetwork}
	case coveredLocal(r.local, subnet).IsValid():
		return verdict{reason: ReasonLocal}
	case !onLink(r.onLink, nexthop):
		return verdict{reason: ReasonNotOnLink}
	}
	return verdict{subnet: subnet, eligible: true}
}

// explain is the error logged for a lease judge skipped for reason.
func (r rules) explain(l *registry.Lease, reason string) error {
	subnet, nexthop := r.fam.lease(l)
	subnet = subnet.Masked()
	switch reason {
	case ReasonNoIPv6:
		return errors.New("lease has no IPv6 subnet with a PublicIPv6 (a node without IPv6): routed in IPv4 only")
	case ReasonOwnPublicIP:
		return fmt.Errorf("another lease (%s) names our own public IP %s", subnet, nexthop)
	case ReasonOwnSubnet:
		return fmt.Errorf("subnet %s overlaps our own %s", subnet, r.own)
	case ReasonOutsideNetwork:
		return fmt.Errorf("subnet %s is outside the network %s", subnet, r.network)
	case ReasonLocal:
		return fmt.Errorf("subnet %s covers this node's local prefix %s", subnet, coveredLocal(r.local, subnet))
	case ReasonNotOnLink:
		return fmt.Errorf("%s %s is not on the underlay link %v (host-gw needs L2 adjacency)", r.fam.publicIPField(), nexthop, r.onLink)
	}
	return fmt.Errorf("subnet %s: %s", subnet, reason)
}

// sliceLeases is a slice of leases as a LeaseSet, in key order whatever
// the slice's (no copy when it is sorted already, as a registry's
// snapshot is).
type sliceLeases []registry.Lease

func (s sliceLeases) Each(fn func(registry.Lease) bool) {
	order := keyOrder(s)
	for i := range s {
		j := i
		if order != nil {
			j = order[i]
		}
		if !fn(s[j]) {
			return
		}
	}
}

func (s sliceLeases) Get(key string) (registry.Lease, bool) {
	for _, l := range s {
		if l.Key == key {
			return l, true
		}
	}
	return registry.Lease{}, false
}

func (sliceLeases) Skip(string) (registry.Skipped, bool) { return registry.Skipped{}, false }
func (sliceLeases) Skipped() []registry.Skipped          { return nil }

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
		if registry.InNetwork(p, q) { // q lies in p
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
		if key, ok := findOverlap(taken, bits, p); ok {
			return key, true
		}
	}
	return "", false
}

// findOverlap finds an entry of m of prefix length bits that overlaps p:
// the one covering p (one lookup), or one inside p, by looking up each
// prefix of that length inside p where they are fewer than m's entries
// (a /16 holds 512 /25s), else by walking m.
func findOverlap[V any](m prefixMap[V], bits int, p netip.Prefix) (V, bool) {
	if bits <= p.Bits() {
		return m.get(netip.PrefixFrom(p.Addr(), bits).Masked())
	}
	var none V
	if span := bits - p.Bits(); span < 20 && 1<<span < m.len() {
		q := netip.PrefixFrom(p.Masked().Addr(), bits)
		for range 1 << span {
			if v, ok := m.get(q); ok {
				return v, true
			}
			q = registry.NextPrefix(q)
		}
		return none, false
	}
	var found V
	hit := false
	m.each(func(q netip.Prefix, v V) bool {
		if q.Bits() == bits && p.Contains(q.Addr()) {
			found, hit = v, true
		}
		return !hit
	})
	return found, hit
}
