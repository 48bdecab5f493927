package peers_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/hgw-ebpf/hgw-ebpf/internal/peers"
)

// The kernel's replace matches destination, TOS and metric, not the
// protocol: a peer whose subnet another program routes, or which a local
// prefix of the node covers, must be left alone (logged once, counted),
// with no map entry either. flanneld's plain routes are still taken over.
func TestApplyNeverTakesRoutesThatAreNotOurs(t *testing.T) {
	forModes(t, func(t *testing.T, e *env) {
		// cni0 still holds the node's old subnet, 10.244.7.0/24, which
		// now belongs to a peer (the node's subnet changed).
		e.addDevice(t, "cni0", "10.244.7.1/24")
		e.addRoute(t, "10.244.8.0/24", "198.18.0.1", protoStatic) // the admin's route to a peer's subnet
		e.addRoute(t, "10.244.2.0/24", "198.18.0.99", protoBoot)  // flanneld's: ours to take over
		r, logs := e.reconciler(t, e.rm, peers.Options{})
		peerList := []peers.Peer{
			e.peer("10.244.2.0/24", "198.18.0.12"),
			e.peer("10.244.7.0/24", "198.18.0.17"),
			e.peer("10.244.8.0/24", "198.18.0.18"),
			e.peer("10.244.6.0/23", "198.18.0.16"), // overlaps cni0's subnet
		}

		for run := 1; run <= 2; run++ {
			res := apply(t, r, peerList)
			if len(res.Errors) != 0 || res.Blocked != 3 {
				t.Fatalf("run %d: errors %v, %d blocked; want none and 3", run, res.Errors, res.Blocked)
			}
			e.assertConverged(t, peerList[:1])
			if got := e.routesTo(t, "10.244.8.0/24"); len(got) != 1 || got[0].protocol != protoStatic || got[0].via != netip.MustParseAddr(e.tr("198.18.0.1")) {
				t.Errorf("run %d: the static route to 10.244.8.0/24 is now %v", run, got)
			}
			if got := e.routesTo(t, "10.244.7.0/24"); len(got) != 1 || got[0].via.IsValid() || got[0].protocol == peers.RouteProtocol {
				t.Errorf("run %d: cni0's connected route is now %v", run, got)
			}
			var warned []string
			for _, l := range logs.take() {
				if strings.Contains(l, "peer not routed") {
					warned = append(warned, field(l, "subnet"))
				}
			}
			if want := map[int]int{1: 3, 2: 0}[run]; len(warned) != want {
				t.Errorf("run %d: warnings for %v, want %d (each once)", run, warned, want)
			}
		}

		// The admin removes their route: the peer is routed at the next run.
		e.delRoute(t, "10.244.8.0/24")
		if res := apply(t, r, peerList); res.Blocked != 2 || len(res.Errors) != 0 {
			t.Fatalf("after the static route left: %+v", res)
		}
		e.assertConverged(t, []peers.Peer{peerList[0], peerList[2]})
	})
}

// addDevice adds a bridge (as cni0 is) with an address (in the IPv4
// plan), up.
func (e *env) addDevice(t *testing.T, name, cidr string) {
	t.Helper()
	cidr = e.tr(cidr)
	if err := e.h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil {
		t.Fatalf("add %s: %v", name, err)
	}
	l, err := e.h.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	addr, err := netlink.ParseAddr(cidr)
	if err != nil {
		t.Fatal(err)
	}
	addr.Flags = unix.IFA_F_NODAD
	if err := e.h.AddrAdd(l, addr); err != nil {
		t.Fatalf("address %s: %v", name, err)
	}
	if err := e.h.LinkSetUp(l); err != nil {
		t.Fatalf("set %s up: %v", name, err)
	}
}

// LocalPrefixes gives Desired what the node holds: every address and
// network, and connected routes not ours.
func TestLocalPrefixes(t *testing.T) {
	forFamilies(t, func(t *testing.T, fam peers.Family) {
		e := newEnvFamily(t, fam)
		e.addDevice(t, "cni0", "10.244.7.1/24")
		r, _ := e.reconciler(t, e.rm, peers.Options{})
		apply(t, r, e.threePeers())

		got, err := r.LocalPrefixes()
		if err != nil {
			t.Fatal(err)
		}
		have := map[netip.Prefix]bool{}
		for _, p := range got {
			have[p] = true
			if !fam.Has(p.Addr()) {
				t.Errorf("LocalPrefixes of %s has %s", fam, p)
			}
		}
		for _, want := range e.trAll([]string{"10.244.7.1/32", "10.244.7.0/24", "198.18.0.11/32", "198.18.0.0/24"}) {
			if !have[netip.MustParsePrefix(want)] {
				t.Errorf("LocalPrefixes %v lacks %s", got, want)
			}
		}
		for _, p := range e.threePeers() {
			if have[p.Subnet] {
				t.Errorf("LocalPrefixes %v has our own route %s", got, p.Subnet)
			}
		}
	})
}
