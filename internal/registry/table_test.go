package registry

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// A lease comes out of the table as it went in, whatever it carries: the
// compact form loses nothing.
func TestTableRoundTrip(t *testing.T) {
	exp := time.Now().Add(time.Hour).Round(0)
	leases := []Lease{
		{Key: "/p/subnets/10.244.1.0-24", Subnet: netip.MustParsePrefix("10.244.1.0/24"), PublicIP: netip.MustParseAddr("198.18.0.11"),
			Attrs: LeaseAttrs{PublicIP: "198.18.0.11", BackendType: "host-gw"}, LeaseID: 7, Expiration: exp, ModRevision: 3},
		{Key: "/p/subnets/10.244.2.0-24", Subnet: netip.MustParsePrefix("10.244.2.0/24"), PublicIP: netip.MustParseAddr("198.18.0.12"),
			Attrs: LeaseAttrs{PublicIP: "198.18.0.12"}, Reservation: true, ModRevision: 4},
		{Key: "/p/subnets/10.244.3.0-24&fd00:10:244:3::-64", Subnet: netip.MustParsePrefix("10.244.3.0/24"),
			IPv6Subnet: netip.MustParsePrefix("fd00:10:244:3::/64"), PublicIP: netip.MustParseAddr("198.18.0.13"),
			PublicIPv6: netip.MustParseAddr("fd00::13"), LeaseID: 7, Expiration: exp, ModRevision: 5,
			Attrs: LeaseAttrs{PublicIP: "198.18.0.13", PublicIPv6: "fd00::13", BackendType: "vxlan",
				BackendData: json.RawMessage(`{"VNI":1}`), BackendV6Data: json.RawMessage(`{"VNI":2}`)}},
		// Written otherwise than Go writes the address.
		{Key: "/p/subnets/10.244.4.0-24&fd00:10:244:4::-64", Subnet: netip.MustParsePrefix("10.244.4.0/24"),
			IPv6Subnet: netip.MustParsePrefix("fd00:10:244:4::/64"), PublicIP: netip.MustParseAddr("198.18.0.14"),
			PublicIPv6: netip.MustParseAddr("fd00::14"), Attrs: LeaseAttrs{PublicIP: "198.18.0.14", PublicIPv6: "FD00:0::14"},
			Reservation: true},
		// Not from a registry: nothing but a key (and no panic).
		{Key: "/p/subnets/odd", Reservation: true},
		{Key: "/p/subnets/odd6", Subnet: netip.MustParsePrefix("fd00::/64"), PublicIP: netip.MustParseAddr("fd00::1"), Reservation: true},
		// An IPv6 address in the value without an IPv6 subnet in the key.
		{Key: "/p/subnets/10.244.5.0-24", Subnet: netip.MustParsePrefix("10.244.5.0/24"), PublicIP: netip.MustParseAddr("198.18.0.15"),
			PublicIPv6: netip.MustParseAddr("fd00::15"), Attrs: LeaseAttrs{PublicIP: "198.18.0.15", PublicIPv6: "fd00::15"}, Reservation: true},
	}
	tab := NewTable()
	for _, l := range slices.Backward(leases) {
		tab.Put(l)
	}
	for _, l := range leases {
		got, ok := tab.Get(l.Key)
		if !ok || !reflect.DeepEqual(got, l) {
			t.Errorf("Get(%s):\n got %+v\nwant %+v", l.Key, got, l)
		}
	}
	slices.SortFunc(leases, func(a, b Lease) int { return strings.Compare(a.Key, b.Key) })
	if got := tab.Snapshot().Leases; !reflect.DeepEqual(got, leases) {
		t.Errorf("Snapshot:\n got %+v\nwant %+v", got, leases)
	}
}

// The table in key order, Get and Skip agree with a plain map over any
// sequence of puts, skips and removals, in order or not (as etcd lists
// keys, as events and informers bring them).
func TestTableFollowsMap(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 50 {
		tab := NewTable()
		want := map[string]Lease{}
		wantSkip := map[string]Skipped{}
		// Sometimes a fill in key order first, as a listing.
		if round%2 == 0 {
			for i := range 200 {
				l := testLease(i, int64(round))
				tab.Put(l)
				want[l.Key] = l
			}
		}
		for range 300 {
			i := rng.IntN(400)
			k := testLease(i, 0).Key
			switch rng.IntN(4) {
			case 0, 1:
				l := testLease(i, rng.Int64N(3))
				tab.Put(l)
				want[k] = l
				delete(wantSkip, k)
			case 2:
				sk := Skipped{Key: k, Reason: "bad_json"}
				tab.PutSkipped(sk)
				wantSkip[k] = sk
				delete(want, k)
			default:
				tab.Remove(k)
				delete(want, k)
				delete(wantSkip, k)
			}
			if rng.IntN(20) == 0 { // read in order now and then, mid-sequence
				checkTable(t, tab, want, wantSkip)
			}
		}
		checkTable(t, tab, want, wantSkip)
	}
}

func checkTable(t *testing.T, tab *Table, want map[string]Lease, wantSkip map[string]Skipped) {
	t.Helper()
	var keys []string
	tab.Each(func(l Lease) bool {
		keys = append(keys, l.Key)
		if !reflect.DeepEqual(l, want[l.Key]) {
			t.Fatalf("Each: %+v, want %+v", l, want[l.Key])
		}
		return true
	})
	wantKeys := slices.Sorted(func(yield func(string) bool) {
		for k := range want {
			if !yield(k) {
				return
			}
		}
	})
	if !slices.Equal(keys, wantKeys) || tab.Len() != len(want) {
		t.Fatalf("Each in order %q (Len %d), want %q", keys, tab.Len(), wantKeys)
	}
	for k, sk := range wantSkip {
		if got, ok := tab.Skip(k); !ok || got != sk {
			t.Fatalf("Skip(%s) = %+v %v, want %+v", k, got, ok, sk)
		}
		if _, ok := tab.Get(k); ok {
			t.Fatalf("%s both skipped and a lease", k)
		}
	}
	if got := len(tab.Skipped()); got != len(wantSkip) {
		t.Fatalf("%d skipped, want %d", got, len(wantSkip))
	}
}

// testLease is lease i, bound to etcd lease id (0: a reservation) that
// ends at a time of id's own.
func testLease(i int, id int64) Lease {
	s := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i >> 8), byte(i)}), 32)
	ip := netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)})
	l := Lease{Key: fmt.Sprintf("/p/subnets/%s", SubnetKey(s)), Subnet: s, PublicIP: ip, Attrs: LeaseAttrs{PublicIP: ip.String(), BackendType: "host-gw"},
		LeaseID: id, Reservation: id == 0, ModRevision: int64(i)}
	if id != 0 {
		l.Expiration = time.Unix(1e9+id, 0)
	}
	return l
}

// Keys bound to one etcd lease share its expiration, as long as one of
// them is left.
func TestTableExpirationPerEtcdLease(t *testing.T) {
	tab := NewTable()
	a, b := testLease(1, 9), testLease(2, 9)
	b.Expiration = time.Time{} // read without asking etcd again
	tab.Put(a)
	tab.Put(b)
	if got, _ := tab.Get(b.Key); !got.Expiration.Equal(a.Expiration) {
		t.Errorf("second key of etcd lease 9 expires %s, want %s", got.Expiration, a.Expiration)
	}
	tab.Remove(a.Key)
	if got, _ := tab.Get(b.Key); !got.Expiration.Equal(a.Expiration) {
		t.Errorf("after the first key left: %s, want %s", got.Expiration, a.Expiration)
	}
	tab.Remove(b.Key)
	if len(tab.expiry) != 0 {
		t.Errorf("expirations of etcd leases no key is bound to: %v", tab.expiry)
	}
}
