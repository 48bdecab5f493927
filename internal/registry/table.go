package registry

import (
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"
	"unique"
)

// Table is a subnet manager's current leases and skipped entries, by key,
// with the keys kept in order. It is the one copy of the leases the agent
// holds: Watch hands it over with every Change instead of a sorted copy
// per event, and a lease is stored in a few dozen bytes (the parts most
// leases share are stored once), not as a Lease.
type Table struct {
	rev    int64
	leases map[string]stored
	keys   []string // the leases' keys in order, unless unordered
	// unordered: keys is not kept since a key came out of order;
	// ordered() sorts them once when asked.
	unordered bool
	skipped   map[string]Skipped
	expiry    map[int64]expiry // by etcd lease ID: when it ends, for Lease.Expiration
	// last is the backend Put stored last: the next lease most likely
	// has the same, and comparing with it costs no copy of the bytes
	// (unique.Make would take the key's strings, copied, every time).
	last backendHandle
}

type backendHandle struct {
	v backend
	h unique.Handle[backend]
}

// stored is one lease in a Table: 48 bytes where a Lease takes 280. A
// lease's IPv4 subnet and PublicIP are 4 bytes each here.
type stored struct {
	leaseID, modRev int64
	backend         unique.Handle[backend]
	more            *storedMore // nil for an IPv4-only lease whose PublicIP is written as Go writes it
	subnet          [4]byte
	publicIP        [4]byte
	bits            uint8
}

// backend is the part of a lease's value that most leases of a network
// share.
type backend struct {
	typ, data, v6data string
}

// storedMore is what few leases have: an IPv6 half, or a PublicIP
// written in another form than Go's; and whatever does not fit stored
// (a subnet or PublicIP that is not IPv4: not from a registry).
type storedMore struct {
	ipv6Subnet             netip.Prefix
	publicIPv6             netip.Addr
	publicIPText, ipv6Text string
	ownText                bool // Attrs.PublicIP is publicIPText (even if empty), not the address's text
	odd                    bool // subnet and publicIP are these
	subnet                 netip.Prefix
	publicIP               netip.Addr
}

// expiry is when an etcd lease ends, and how many stored leases are
// bound to it.
type expiry struct {
	at   time.Time
	refs int
}

// NewTable is an empty table.
func NewTable() *Table {
	return &Table{leases: map[string]stored{}, skipped: map[string]Skipped{}, expiry: map[int64]expiry{}}
}

// Revision is the registry revision the table reflects (etcd's; 0 for a
// source without one).
func (t *Table) Revision() int64 { return t.rev }

// Len is how many leases the table holds (skipped entries not counted).
func (t *Table) Len() int { return len(t.leases) }

// Get is the lease of key, if the table has one.
func (t *Table) Get(key string) (Lease, bool) {
	s, ok := t.leases[key]
	if !ok {
		return Lease{}, false
	}
	return t.lease(key, s), true
}

// Skip is the skipped entry of key, if the table has one.
func (t *Table) Skip(key string) (Skipped, bool) {
	s, ok := t.skipped[key]
	return s, ok
}

// Each calls fn with every lease in key order until fn returns false.
// The table must not change meanwhile.
func (t *Table) Each(fn func(Lease) bool) {
	for _, k := range t.ordered() {
		if !fn(t.lease(k, t.leases[k])) {
			return
		}
	}
}

// Skipped is every skipped entry in key order (nil if none).
func (t *Table) Skipped() []Skipped { return byKey(t.skipped) }

// Snapshot is a copy of the table: every lease and skipped entry, in key
// order (for tools and tests; the agent reads the table itself).
func (t *Table) Snapshot() Snapshot {
	s := Snapshot{Revision: t.rev, Skipped: t.Skipped()}
	if len(t.leases) > 0 {
		s.Leases = make([]Lease, 0, len(t.leases))
		t.Each(func(l Lease) bool { s.Leases = append(s.Leases, l); return true })
	}
	return s
}

func (t *Table) lease(key string, s stored) Lease {
	b := s.backend.Value()
	l := Lease{Key: key, Subnet: netip.PrefixFrom(netip.AddrFrom4(s.subnet), int(s.bits)), PublicIP: netip.AddrFrom4(s.publicIP),
		Reservation: s.leaseID == 0, LeaseID: s.leaseID, ModRevision: s.modRev, Expiration: t.expiry[s.leaseID].at,
		Attrs: LeaseAttrs{BackendType: b.typ, BackendData: RawJSON(b.data), BackendV6Data: RawJSON(b.v6data)}}
	if m := s.more; m != nil {
		if m.odd {
			l.Subnet, l.PublicIP = m.subnet, m.publicIP
		}
		l.IPv6Subnet, l.PublicIPv6 = m.ipv6Subnet, m.publicIPv6
		l.Attrs.PublicIP = m.publicIPText
		l.Attrs.PublicIPv6 = m.ipv6Text
		if m.ipv6Text == "" && m.publicIPv6.IsValid() {
			l.Attrs.PublicIPv6 = m.publicIPv6.String()
		}
	}
	if s.more == nil || !s.more.ownText {
		l.Attrs.PublicIP = l.PublicIP.String()
	}
	return l
}

// Put stores l under l.Key, replacing what the key had (lease or skipped
// entry). Expiration is kept per etcd lease: the latest read of any key
// bound to it. Put, PutSkipped and Remove are the subnet manager's: a
// consumer only reads the table.
func (t *Table) Put(l Lease) {
	if old, ok := t.leases[l.Key]; ok {
		t.unbind(old) // the key stays where it is in the order
	} else {
		delete(t.skipped, l.Key)
		t.addKey(l.Key)
	}
	s := stored{leaseID: l.LeaseID, modRev: l.ModRevision, backend: t.backendOf(&l)}
	var buf [48]byte
	canonical := l.PublicIP.IsValid() && string(l.PublicIP.AppendTo(buf[:0])) == l.Attrs.PublicIP // no string made
	odd := !l.Subnet.Addr().Is4() || !l.PublicIP.Is4()
	if !odd {
		s.subnet, s.publicIP, s.bits = l.Subnet.Addr().As4(), l.PublicIP.As4(), uint8(l.Subnet.Bits())
	}
	if odd || l.IPv6Subnet.IsValid() || l.PublicIPv6.IsValid() || !canonical || l.Attrs.PublicIPv6 != "" {
		m := &storedMore{ipv6Subnet: l.IPv6Subnet, publicIPv6: l.PublicIPv6, odd: odd, subnet: l.Subnet, publicIP: l.PublicIP}
		if !canonical {
			m.publicIPText, m.ownText = l.Attrs.PublicIP, true
		}
		if !l.PublicIPv6.IsValid() || l.Attrs.PublicIPv6 != l.PublicIPv6.String() {
			m.ipv6Text = l.Attrs.PublicIPv6
		}
		s.more = m
	}
	t.leases[l.Key] = s
	if l.LeaseID != 0 {
		e := t.expiry[l.LeaseID]
		if !l.Expiration.IsZero() {
			e.at = l.Expiration
		}
		e.refs++
		t.expiry[l.LeaseID] = e
	}
}

// backendOf is the handle of l's backend attributes.
func (t *Table) backendOf(l *Lease) unique.Handle[backend] {
	a, b := &l.Attrs, &t.last
	if b.h == (unique.Handle[backend]{}) || a.BackendType != b.v.typ || string(a.BackendData) != b.v.data || string(a.BackendV6Data) != b.v.v6data {
		b.v = backend{typ: a.BackendType, data: string(a.BackendData), v6data: string(a.BackendV6Data)}
		b.h = unique.Make(b.v)
	}
	return b.h
}

// PutSkipped stores s under s.Key, replacing what the key had.
func (t *Table) PutSkipped(s Skipped) {
	t.Remove(s.Key)
	t.skipped[s.Key] = s
}

// Remove drops key, lease or skipped entry.
func (t *Table) Remove(key string) {
	delete(t.skipped, key)
	s, ok := t.leases[key]
	if !ok {
		return
	}
	delete(t.leases, key)
	t.unbind(s)
	if n := len(t.keys); !t.unordered && n > 0 && t.keys[n-1] == key {
		t.keys = t.keys[:n-1]
	} else {
		t.unordered = true
	}
}

// unbind forgets that s is bound to its etcd lease.
func (t *Table) unbind(s stored) {
	if s.leaseID == 0 {
		return
	}
	if e := t.expiry[s.leaseID]; e.refs <= 1 {
		delete(t.expiry, s.leaseID)
	} else {
		e.refs--
		t.expiry[s.leaseID] = e
	}
}

// addKey keeps the keys in order while they come in order, as etcd
// lists them. A key added out of order (a new lease, an informer's list)
// or removed from the middle leaves them to ordered(), which sorts them
// when a reader next wants the order: changes are read key by key, and a
// burst of them costs one sort, not a copy of the keys each.
func (t *Table) addKey(key string) {
	if t.unordered {
		return
	}
	if n := len(t.keys); n == 0 || t.keys[n-1] < key {
		t.keys = append(t.keys, key)
		return
	}
	t.unordered = true
}

// ordered is the leases' keys in order.
func (t *Table) ordered() []string {
	if t.unordered {
		t.keys = slices.AppendSeq(t.keys[:0], maps.Keys(t.leases))
		slices.SortFunc(t.keys, strings.Compare)
		t.unordered = false
	}
	return t.keys
}
