package peers_test

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hgw-ebpf/hgw-ebpf/internal/peers"
	"github.com/hgw-ebpf/hgw-ebpf/internal/registry"
)

const subnetsDir = "/coreos.com/network/subnets/"

func lease(subnet, publicIP string) registry.Lease {
	return registry.Lease{Key: key(subnet), Subnet: netip.MustParsePrefix(subnet), PublicIP: netip.MustParseAddr(publicIP)}
}

// node is the Input of a node 198.18.0.11 owning 10.244.1.0/24.
func node(leases ...registry.Lease) peers.Input {
	return peers.Input{
		Own:      netip.MustParsePrefix("10.244.1.0/24"),
		Network:  netip.MustParsePrefix("10.244.0.0/16"),
		OnLink:   []netip.Prefix{netip.MustParsePrefix("198.18.0.0/24")},
		PublicIP: netip.MustParseAddr("198.18.0.11"),
		Leases:   leases,
	}
}

// outcome is Desired's verdict on one lease: "peer" or the skip reason.
type outcome map[string]string

func outcomes(t *testing.T, in peers.Input) outcome {
	t.Helper()
	peerList, skipped := peers.Desired(in)
	got := outcome{}
	for _, p := range peerList {
		if _, dup := got[p.Key]; dup {
			t.Errorf("%s returned twice", p.Key)
		}
		got[p.Key] = "peer"
	}
	for _, s := range skipped {
		if _, dup := got[s.Key]; dup {
			t.Errorf("%s both a peer and skipped, or skipped twice", s.Key)
		}
		if s.Err == nil {
			t.Errorf("%s skipped (%s) without an error to log", s.Key, s.Reason)
		}
		got[s.Key] = s.Reason
	}
	return got
}

// key is flannel's lease key of subnet: <prefix>/subnets/10.244.1.0-24.
func key(subnet string) string {
	p := netip.MustParsePrefix(subnet)
	return fmt.Sprintf("%s%s-%d", subnetsDir, p.Addr(), p.Bits())
}

func TestDesired(t *testing.T) {
	self := lease("10.244.1.0/24", "198.18.0.11")
	for _, tc := range []struct {
		name   string
		leases []registry.Lease
		want   outcome // keys absent from want must be absent from the result
	}{
		{
			name:   "ourselves excluded, peers kept",
			leases: []registry.Lease{self, lease("10.244.2.0/24", "198.18.0.12"), lease("10.244.3.0/24", "198.18.0.13")},
			want:   outcome{key("10.244.2.0/24"): "peer", key("10.244.3.0/24"): "peer"},
		},
		{
			name:   "our PublicIP with another subnet",
			leases: []registry.Lease{self, lease("10.244.7.0/24", "198.18.0.11")},
			want:   outcome{key("10.244.7.0/24"): "own_public_ip"},
		},
		{
			name:   "our PublicIP wins over every other reason",
			leases: []registry.Lease{lease("10.245.0.0/24", "198.18.0.11")},
			want:   outcome{key("10.245.0.0/24"): "own_public_ip"},
		},
		{
			name: "overlapping our subnet",
			leases: []registry.Lease{
				lease("10.244.1.0/24", "198.18.0.12"), // our subnet, another node
				lease("10.244.0.0/23", "198.18.0.13"), // contains ours
				lease("10.244.1.128/25", "198.18.0.14"),
			},
			want: outcome{key("10.244.1.0/24"): "own_subnet", key("10.244.0.0/23"): "own_subnet", key("10.244.1.128/25"): "own_subnet"},
		},
		{
			name: "outside the network",
			leases: []registry.Lease{
				lease("10.245.2.0/24", "198.18.0.12"),
				lease("10.242.0.0/15", "198.18.0.13"), // starts outside
				lease("10.244.0.0/15", "198.18.0.14"), // wider than the network, so also around our subnet: that is checked first
				lease("10.244.200.0/24", "198.18.0.15"),
			},
			want: outcome{
				key("10.245.2.0/24"): "outside_network", key("10.242.0.0/15"): "outside_network",
				key("10.244.0.0/15"): "own_subnet", key("10.244.200.0/24"): "peer",
			},
		},
		{
			name:   "PublicIP not on-link",
			leases: []registry.Lease{lease("10.244.2.0/24", "198.19.0.12"), lease("10.244.3.0/24", "198.18.1.13")},
			want:   outcome{key("10.244.2.0/24"): "not_on_link", key("10.244.3.0/24"): "not_on_link"},
		},
		{
			name: "overlapping peers: smaller key wins, shorter prefix first",
			// "…/10.244.2.0-23" < "…/10.244.3.0-24": the /23 wins.
			leases: []registry.Lease{lease("10.244.3.0/24", "198.18.0.13"), lease("10.244.2.0/23", "198.18.0.12")},
			want:   outcome{key("10.244.2.0/23"): "peer", key("10.244.3.0/24"): "overlap"},
		},
		{
			name: "overlapping peers: smaller key wins, longer prefix first",
			// "…/10.244.10.0-24" < "…/10.244.8.0-21": the /24 wins and
			// the /21 around it is refused.
			leases: []registry.Lease{lease("10.244.8.0/21", "198.18.0.18"), lease("10.244.10.0/24", "198.18.0.20")},
			want:   outcome{key("10.244.10.0/24"): "peer", key("10.244.8.0/21"): "overlap"},
		},
		{
			name: "same subnet under two keys (dual-stack and plain)",
			leases: []registry.Lease{
				{Key: subnetsDir + "10.244.4.0-24&fd00:10:244:4::-64", Subnet: netip.MustParsePrefix("10.244.4.0/24"), PublicIP: netip.MustParseAddr("198.18.0.15")},
				lease("10.244.4.0/24", "198.18.0.14"),
			},
			want: outcome{key("10.244.4.0/24"): "peer", subnetsDir + "10.244.4.0-24&fd00:10:244:4::-64": "overlap"},
		},
		{
			name: "a skipped lease reserves nothing",
			// The smaller key is refused (not on-link), so it must not
			// make the routable one an "overlap".
			leases: []registry.Lease{lease("10.244.2.0/23", "192.0.2.1"), lease("10.244.3.0/24", "198.18.0.13")},
			want:   outcome{key("10.244.2.0/23"): "not_on_link", key("10.244.3.0/24"): "peer"},
		},
		{
			name:   "no leases",
			leases: nil,
			want:   outcome{},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := outcomes(t, node(tc.leases...)); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Desired:\n got %v\nwant %v", got, tc.want)
			}
		})
	}
}

// A lease covering one of the node's own prefixes is not a peer: a
// Network that also covers the underlay (ParseConfig accepts even
// 0.0.0.0/0), or a subnet cni0 still holds after the node's own subnet
// changed. Routing it would replace the connected route or pull the
// node's own traffic to a peer.
func TestDesiredSkipsLocalPrefixes(t *testing.T) {
	in := node(
		lease("10.244.7.0/24", "198.18.0.17"),  // cni0's connected subnet (the node's old one)
		lease("198.18.0.0/24", "198.18.0.18"),  // the underlay's network
		lease("10.244.9.0/24", "198.18.0.19"),  // a peer like any other
		lease("10.244.64.0/18", "198.18.0.20"), // around a local route's prefix
	)
	in.Network = netip.MustParsePrefix("0.0.0.0/0")
	in.Local = []netip.Prefix{
		netip.MustParsePrefix("10.244.7.1/32"), netip.MustParsePrefix("10.244.7.0/24"), // cni0
		netip.MustParsePrefix("198.18.0.11/32"), netip.MustParsePrefix("198.18.0.0/24"), // eth0
		netip.MustParsePrefix("10.244.100.0/25"), // a connected route of another device
		netip.MustParsePrefix("127.0.0.0/8"),
	}
	want := outcome{
		key("10.244.7.0/24"): "local_prefix", key("198.18.0.0/24"): "local_prefix",
		key("10.244.9.0/24"): "peer", key("10.244.64.0/18"): "local_prefix",
	}
	if got := outcomes(t, in); !reflect.DeepEqual(got, want) {
		t.Errorf("Desired:\n got %v\nwant %v", got, want)
	}

	// A flat network: pods in 10.244.0.0/16, nodes on a 10.0.0.0/8 that
	// holds it. The underlay's wider prefix is not in the way (the kernel
	// prefers the longer route); the node's own address still is.
	flat := node(
		lease("10.244.9.0/24", "10.1.0.19"),
		lease("10.1.0.0/24", "10.1.0.20"), // holds this node's address
	)
	flat.Network = netip.MustParsePrefix("10.0.0.0/8")
	flat.OnLink = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	flat.Local = []netip.Prefix{netip.MustParsePrefix("10.1.0.11/32"), netip.MustParsePrefix("10.0.0.0/8")}
	want = outcome{key("10.244.9.0/24"): "peer", key("10.1.0.0/24"): "local_prefix"}
	if got := outcomes(t, flat); !reflect.DeepEqual(got, want) {
		t.Errorf("Desired on a flat network:\n got %v\nwant %v", got, want)
	}
	_, skipped := peers.Desired(in)
	for _, s := range skipped {
		if s.Key == key("10.244.7.0/24") && !strings.Contains(s.Err.Error(), "10.244.7") {
			t.Errorf("skip of cni0's subnet does not name the local prefix: %v", s.Err)
		}
	}
}

func TestDesiredPeerFields(t *testing.T) {
	l := lease("10.244.2.0/24", "198.18.0.12")
	peerList, skipped := peers.Desired(node(l))
	want := []peers.Peer{{Subnet: l.Subnet, NextHop: l.PublicIP, Key: l.Key}}
	if !reflect.DeepEqual(peerList, want) || len(skipped) != 0 {
		t.Fatalf("Desired = %v, %v; want %v and nothing skipped", peerList, skipped, want)
	}
}

// Every node must compute the same result from the same leases, in
// whatever order etcd listed them, and the caller's slice stays as it was.
func TestDesiredStableOrder(t *testing.T) {
	var leases []registry.Lease
	for i := 2; i < 40; i++ {
		leases = append(leases, lease(fmt.Sprintf("10.244.%d.0/24", i), fmt.Sprintf("198.18.0.%d", 100+i)))
	}
	leases = append(leases,
		lease("10.244.1.0/24", "198.18.0.11"), lease("10.244.8.0/21", "198.18.0.99"),
		lease("10.245.0.0/24", "198.18.0.98"), lease("10.244.50.0/24", "203.0.113.1"))
	wantPeers, wantSkipped := peers.Desired(node(leases...))
	if len(wantPeers) == 0 || len(wantSkipped) == 0 {
		t.Fatalf("fixture should give peers and skips: %d, %d", len(wantPeers), len(wantSkipped))
	}
	for i := 1; i < len(wantPeers); i++ {
		if wantPeers[i-1].Key >= wantPeers[i].Key {
			t.Fatalf("peers not in key order at %d: %s then %s", i, wantPeers[i-1].Key, wantPeers[i].Key)
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for round := 0; round < 20; round++ {
		shuffled := append([]registry.Lease(nil), leases...)
		rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		before := append([]registry.Lease(nil), shuffled...)
		peerList, skipped := peers.Desired(node(shuffled...))
		if !reflect.DeepEqual(peerList, wantPeers) {
			t.Fatalf("round %d: peers depend on input order:\n got %v\nwant %v", round, peerList, wantPeers)
		}
		if !reflect.DeepEqual(skipKeys(skipped), skipKeys(wantSkipped)) {
			t.Fatalf("round %d: skipped depend on input order:\n got %v\nwant %v", round, skipKeys(skipped), skipKeys(wantSkipped))
		}
		if !reflect.DeepEqual(shuffled, before) {
			t.Fatalf("round %d: Desired reordered the caller's leases", round)
		}
	}
}

func skipKeys(s []registry.Skipped) []string {
	out := make([]string, len(s))
	for i, x := range s {
		out[i] = x.Key + " " + x.Reason
	}
	return out
}

// A large cluster: 5000 leases in a /8 of /24s, plus a few /23s so the
// mixed-length overlap path runs too. The time is logged, not asserted.
func TestDesiredManyLeases(t *testing.T) {
	const n = 5000
	in := peers.Input{
		Own:      netip.MustParsePrefix("10.0.0.0/24"),
		Network:  netip.MustParsePrefix("10.0.0.0/8"),
		OnLink:   []netip.Prefix{netip.MustParsePrefix("198.18.0.0/15")},
		PublicIP: netip.MustParseAddr("198.18.0.1"),
	}
	for i := 0; i < n; i++ {
		in.Leases = append(in.Leases, lease(fmt.Sprintf("10.%d.%d.0/24", 1+i/256, i%256), fmt.Sprintf("198.18.%d.%d", 1+i/250, 1+i%250)))
	}
	// Each /23 covers two /24s leased above: with its smaller key it is
	// accepted and both /24s become overlaps.
	const wide = 10
	for i := 0; i < wide; i++ {
		in.Leases = append(in.Leases, lease(fmt.Sprintf("10.10.%d.0/23", 2*i), fmt.Sprintf("198.19.0.%d", 1+i)))
	}
	start := time.Now()
	peerList, skipped := peers.Desired(in)
	elapsed := time.Since(start)
	t.Logf("Desired over %d leases: %v (%d peers, %d skipped)", len(in.Leases), elapsed, len(peerList), len(skipped))

	// 10.10.x is i/256 == 9: leases 9*256 .. 9*256+19 lie under the /23s.
	if want := n + wide - 2*wide; len(peerList) != want {
		t.Errorf("peers = %d, want %d", len(peerList), want)
	}
	if len(skipped) != 2*wide {
		t.Errorf("skipped = %d, want %d", len(skipped), 2*wide)
	}
	for _, s := range skipped {
		if s.Reason != "overlap" {
			t.Errorf("%s skipped as %s, want overlap", s.Key, s.Reason)
		}
	}
}

// dual is a dual-stack lease as flanneld writes it: one key for both
// subnets, PublicIP and PublicIPv6; v6 "" makes an IPv4-only lease (a
// node without IPv6), ip6 "" one without a PublicIPv6.
func dual(v4, ip, v6, ip6 string) registry.Lease {
	l := lease(v4, ip)
	if v6 != "" {
		l.IPv6Subnet = netip.MustParsePrefix(v6)
		l.Key = subnetsDir + registry.DualStackKey(l.Subnet, l.IPv6Subnet)
	}
	if ip6 != "" {
		l.PublicIPv6 = netip.MustParseAddr(ip6)
	}
	return l
}

// node6 is the IPv6 Input of node 198.18.0.11 / fd00:198:18::11 owning
// 10.244.1.0/24 and fd00:10:244:1::/64 in fd00:10:244::/56.
func node6(leases ...registry.Lease) peers.Input {
	return peers.Input{
		Family:   peers.IPv6,
		Own:      netip.MustParsePrefix("fd00:10:244:1::/64"),
		Network:  netip.MustParsePrefix("fd00:10:244::/56"),
		OnLink:   []netip.Prefix{netip.MustParsePrefix("fd00:198:18::/64")},
		PublicIP: netip.MustParseAddr("fd00:198:18::11"),
		Local:    []netip.Prefix{netip.MustParsePrefix("fd00:10:244:1::1/128"), netip.MustParsePrefix("fd00:10:244:1::/64")},
		Leases:   leases,
	}
}

// The IPv6 desired state takes the IPv6 half of each lease through the
// same rules; a lease without one (a flanneld node without IPv6) is
// routed in IPv4 only.
func TestDesiredIPv6(t *testing.T) {
	self := dual("10.244.1.0/24", "198.18.0.11", "fd00:10:244:1::/64", "fd00:198:18::11")
	peer := dual("10.244.2.0/24", "198.18.0.12", "fd00:10:244:2::/64", "fd00:198:18::12")
	v4only := dual("10.244.3.0/24", "198.18.0.13", "", "")
	noIP6 := dual("10.244.4.0/24", "198.18.0.14", "fd00:10:244:4::/64", "")
	offLink := dual("10.244.5.0/24", "198.18.0.15", "fd00:10:244:5::/64", "fd00:198:19::15")
	outside := dual("10.244.6.0/24", "198.18.0.16", "fd00:10:245:6::/64", "fd00:198:18::16")
	ownIP6 := dual("10.244.7.0/24", "198.18.0.17", "fd00:10:244:7::/64", "fd00:198:18::11")
	ownSubnet := dual("10.244.8.0/24", "198.18.0.18", "fd00:10:244:1::/64", "fd00:198:18::18")
	local := dual("10.244.9.0/24", "198.18.0.19", "fd00:10:244:9::/64", "fd00:198:18::19")
	wins := dual("10.244.10.0/24", "198.18.0.20", "fd00:10:244:a::/63", "fd00:198:18::20")
	loses := dual("10.244.11.0/24", "198.18.0.21", "fd00:10:244:b::/64", "fd00:198:18::21")
	leases := []registry.Lease{self, peer, v4only, noIP6, offLink, outside, ownIP6, ownSubnet, local, wins, loses}

	in := node6(leases...)
	in.Local = append(in.Local, netip.MustParsePrefix("fd00:10:244:9::/64")) // cni0's old subnet
	want := outcome{
		peer.Key: "peer", v4only.Key: "no_ipv6", noIP6.Key: "no_ipv6", offLink.Key: "not_on_link",
		outside.Key: "outside_network", ownIP6.Key: "own_public_ip", ownSubnet.Key: "own_subnet",
		local.Key: "local_prefix", wins.Key: "peer", loses.Key: "overlap",
	}
	if got := outcomes(t, in); !reflect.DeepEqual(got, want) {
		t.Errorf("IPv6 Desired:\n got %v\nwant %v", got, want)
	}
	peerList, _ := peers.Desired(in)
	if !slices.Contains(peerList, peers.Peer{Subnet: peer.IPv6Subnet, NextHop: peer.PublicIPv6, Key: peer.Key}) {
		t.Errorf("IPv6 peers %v; want %s via %s", peerList, peer.IPv6Subnet, peer.PublicIPv6)
	}

	// The same leases in IPv4: every one routed through its IPv4 half,
	// the IPv4-only one and those whose IPv6 half is unusable included.
	in4 := node(leases...)
	got4 := outcomes(t, in4)
	for _, l := range leases[1:] {
		if got4[l.Key] != "peer" {
			t.Errorf("IPv4 Desired: %s is %q, want a peer", l.Key, got4[l.Key])
		}
	}
}
