package peers_test

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"github.com/hgw-ebpf/hgw-ebpf/internal/peers"
	"github.com/hgw-ebpf/hgw-ebpf/internal/registry"
)

// The incremental answer is always the full one: over many random
// sequences of leases added, changed, removed and skipped by the registry
// (subnets of several lengths that overlap each other, our own subnet and
// public IP, addresses off the link, outside the network, over a local
// prefix, IPv4-only and dual-stack leases), and changes of the node's side,
// a DesiredSet fed each change (Changed, or Full when it says so) routes
// exactly the peers Desired computes from scratch, counts the same skips,
// and has reported every skipped lease with its current reason.
func TestDesiredSetMatchesDesired(t *testing.T) {
	for _, fam := range []peers.Family{peers.IPv4, peers.IPv6} {
		t.Run(fam.String(), func(t *testing.T) {
			var incremental, full int
			for seed := range uint64(300) {
				i, f := randomSequence(t, fam, seed)
				incremental, full = incremental+i, full+f
			}
			t.Logf("%d changes judged on their own, %d in full", incremental, full)
			// The sequences must exercise both paths, the incremental one
			// mostly.
			if incremental < full || full < 1000 {
				t.Errorf("%d incremental and %d full: the test does not exercise both", incremental, full)
			}
		})
	}
}

// universe is what random leases are made of.
var universe = struct {
	v4, v6, ip4, ip6 []string
}{
	v4: []string{
		// Subnets of their own, more than of the rest: most changes are
		// judged on their own.
		"10.244.10.0/24", "10.244.11.0/24", "10.244.12.0/24", "10.244.13.0/24", "10.244.14.0/24", "10.244.15.0/24",
		"10.244.16.0/24", "10.244.17.0/24", "10.244.18.0/24", "10.244.19.0/24", "10.244.20.0/24", "10.244.21.0/24",
		"10.244.22.0/24", "10.244.23.0/24", "10.244.24.0/24", "10.244.25.0/24", "10.244.26.0/24", "10.244.27.0/24",
		"10.244.2.0/24", "10.244.3.0/24", "10.244.4.0/24", "10.244.5.0/24", "10.244.6.0/24", "10.244.7.0/24",
		"10.244.4.0/22", "10.244.6.0/23", "10.244.2.128/25", "10.244.5.64/26", "10.244.0.0/16",
		"10.244.1.0/24", "10.244.1.128/25", // our own, part of it
		"10.245.0.0/24", "10.244.0.0/15", // outside the network
		"10.244.200.0/24", // a local prefix, at times
	},
	v6: []string{
		"", "fd00:10:244:10::/64", "fd00:10:244:11::/64", "fd00:10:244:12::/64", "fd00:10:244:13::/64",
		"fd00:10:244:14::/64", "fd00:10:244:15::/64", "fd00:10:244:16::/64", "fd00:10:244:17::/64",
		"fd00:10:244:18::/64", "fd00:10:244:19::/64", "fd00:10:244:1a::/64", "fd00:10:244:1b::/64",
		"fd00:10:244:2::/64", "fd00:10:244:3::/64", "fd00:10:244:4::/64", "fd00:10:244:4::/62", "fd00:10:244:5::/64",
		"fd00:10:244:1::/64", "fd00:10:245::/64", "fd00:10:244:c8::/64",
	},
	ip4: []string{"198.18.0.11", "198.18.0.12", "198.18.0.13", "198.18.0.14", "198.18.0.15", "198.18.0.16", "198.19.0.5"},
	ip6: []string{"", "fd00::11", "fd00::12", "fd00::13", "fd00::14", "fd99::5"},
}

// sideOf is the node's side of a family, with or without a local prefix
// inside the network, and with our public IP or another's.
func sideOf(fam peers.Family, withLocal, otherIP bool) peers.Input {
	in := peers.Input{Family: fam, Own: netip.MustParsePrefix("10.244.1.0/24"), Network: netip.MustParsePrefix("10.244.0.0/16"),
		OnLink: []netip.Prefix{netip.MustParsePrefix("198.18.0.0/24")}, PublicIP: netip.MustParseAddr("198.18.0.11"),
		Local: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("198.18.0.0/24")}}
	if fam == peers.IPv6 {
		in.Own, in.Network = netip.MustParsePrefix("fd00:10:244:1::/64"), netip.MustParsePrefix("fd00:10:244::/48")
		in.OnLink, in.PublicIP = []netip.Prefix{netip.MustParsePrefix("fd00::/64")}, netip.MustParseAddr("fd00::11")
		in.Local = []netip.Prefix{netip.MustParsePrefix("fd00:10:244:1::/64")}
	}
	if withLocal {
		in.Local = append(in.Local, netip.MustParsePrefix("10.244.200.0/24"), netip.MustParsePrefix("fd00:10:244:c8::/64"))
	}
	if otherIP {
		in.PublicIP = netip.MustParseAddr("198.18.0.12")
		if fam == peers.IPv6 {
			in.PublicIP = netip.MustParseAddr("fd00::12")
		}
	}
	return in
}

// randomSequence runs one random sequence of changes and returns how many
// were judged incrementally and how many in full.
func randomSequence(t *testing.T, fam peers.Family, seed uint64) (incremental, full int) {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, uint64(fam)))
	pick := func(s []string) string { return s[rng.IntN(len(s))] }
	// Keys in an order unrelated to the subnets: the key order decides
	// overlaps.
	keys := make([]string, 24)
	for i := range keys {
		keys[i] = fmt.Sprintf("/p/subnets/k%02d", rng.IntN(100))
	}
	randomLease := func(k string) registry.Lease {
		l := registry.Lease{Key: k, Subnet: netip.MustParsePrefix(pick(universe.v4)), PublicIP: netip.MustParseAddr(pick(universe.ip4))}
		if v6 := pick(universe.v6); v6 != "" {
			l.IPv6Subnet = netip.MustParsePrefix(v6)
		}
		if ip6 := pick(universe.ip6); ip6 != "" {
			l.PublicIPv6 = netip.MustParseAddr(ip6)
		}
		return l
	}
	withLocal, otherIP := false, false
	table := registry.NewTable()
	var set peers.DesiredSet
	routed := map[netip.Prefix]peers.Peer{} // what the changes built
	reported := map[string]string{}         // key -> the reason it was last reported skipped with

	steps := 40 + rng.IntN(40)
	for step := range steps {
		var changed []string
		for range 1 + rng.IntN(3) {
			k := pick(keys)
			switch r := rng.IntN(10); {
			case r < 6:
				table.Put(randomLease(k))
			case r < 7:
				table.PutSkipped(registry.Skipped{Key: k, Reason: "bad_json"})
			default:
				table.Remove(k)
			}
			changed = append(changed, k)
		}
		if rng.IntN(25) == 0 {
			withLocal = !withLocal
		}
		if rng.IntN(40) == 0 {
			otherIP = !otherIP
		}
		in := sideOf(fam, withLocal, otherIP)
		var (
			skipped []registry.Skipped
			ok      bool
		)
		if step > 0 {
			var changes []peers.PeerChange
			changes, skipped, ok = set.Changed(in, slices.Compact(slices.Sorted(slices.Values(changed))), table)
			for _, c := range changes {
				if c.Removed {
					delete(routed, c.Subnet)
				} else {
					routed[c.Subnet] = c.Peer
				}
			}
		}
		if ok {
			incremental++
		} else {
			full++
			var peerList []peers.Peer
			peerList, skipped = set.Full(in, table)
			clear(routed)
			for _, p := range peerList {
				routed[p.Subnet] = p
			}
		}
		for _, sk := range skipped {
			if sk.Err == nil {
				t.Fatalf("seed %d step %d: %s reported skipped (%s) without an error", seed, step, sk.Key, sk.Reason)
			}
			reported[sk.Key] = sk.Reason
		}

		// The full answer, from scratch.
		in.Leases = table.Snapshot().Leases
		wantPeers, wantSkipped := peers.Desired(in)
		want := map[netip.Prefix]peers.Peer{}
		for _, p := range wantPeers {
			want[p.Subnet] = p
		}
		if !maps.Equal(routed, want) {
			t.Fatalf("seed %d step %d (incremental %v): routed\n%v\nwant\n%v", seed, step, ok, routed, want)
		}
		if set.Peers() != len(wantPeers) {
			t.Fatalf("seed %d step %d: Peers %d, want %d", seed, step, set.Peers(), len(wantPeers))
		}
		wantCounts := map[string]int{}
		stillSkipped := map[string]bool{}
		for _, sk := range wantSkipped {
			wantCounts[sk.Reason]++
			stillSkipped[sk.Key] = true
			if reported[sk.Key] != sk.Reason {
				t.Fatalf("seed %d step %d: %s is skipped (%s), last reported %q", seed, step, sk.Key, sk.Reason, reported[sk.Key])
			}
		}
		for _, sk := range table.Skipped() {
			wantCounts[sk.Reason]++
		}
		counts := map[string]int{}
		set.Skips(func(r string, n int) { counts[r] = n })
		if !maps.Equal(counts, wantCounts) {
			t.Fatalf("seed %d step %d: skip counts %v, want %v", seed, step, counts, wantCounts)
		}
		// A lease no longer skipped must be reported again when it is.
		for k := range reported {
			if !stillSkipped[k] {
				delete(reported, k)
			}
		}
	}
	return incremental, full
}

// Changed says so when the node's side changed since the last Full: the
// leases' verdicts depend on it.
func TestDesiredSetNodeSideChanged(t *testing.T) {
	table := registry.NewTable()
	table.Put(lease("10.244.2.0/24", "198.18.0.12"))
	var set peers.DesiredSet
	if _, _, ok := set.Changed(node(), []string{key("10.244.2.0/24")}, table); ok {
		t.Error("Changed before any Full answered")
	}
	set.Full(node(), table)
	table.Put(lease("10.244.3.0/24", "198.18.0.13"))
	changes, _, ok := set.Changed(node(), []string{key("10.244.3.0/24")}, table)
	if !ok || len(changes) != 1 || changes[0].Subnet != netip.MustParsePrefix("10.244.3.0/24") || changes[0].Removed {
		t.Errorf("a new lease: changes %+v ok %v, want it added", changes, ok)
	}
	moved := node()
	moved.Local = []netip.Prefix{netip.MustParsePrefix("10.244.3.0/24")}
	if _, _, ok := set.Changed(moved, nil, table); ok {
		t.Error("Changed answered after a local prefix appeared in the network")
	}
}
