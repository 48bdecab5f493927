package peers_test

import (
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/hgw-ebpf/hgw-ebpf/internal/peers"
)

// On a flat network the underlay's prefix (here 10.0.0.0/8 on eth0) holds
// the pod subnets. A subnet inside a local prefix is routed as any other,
// so a change to it is applied on its own, without a full comparison; only
// a subnet that covers a local prefix goes to the full run, which refuses
// to route it.
func TestRunChangesOnAFlatNetwork(t *testing.T) {
	forModes(t, func(t *testing.T, e *env) {
		addr, err := netlink.ParseAddr(e.tr("10.0.0.11/8"))
		if err != nil {
			t.Fatal(err)
		}
		addr.Flags = unix.IFA_F_NODAD
		if err := e.h.AddrAdd(e.link, addr); err != nil {
			t.Fatalf("address eth0: %v", err)
		}
		peerList := e.threePeers()
		r, _, _ := e.running(t, peerList)
		lists := e.rm.listed()

		joined := e.peer("10.244.5.0/24", "198.18.0.15")
		r.Change([]peers.PeerChange{{Peer: joined}})
		next := append(peerList[:len(peerList):len(peerList)], joined)
		waitFor(t, 2*time.Second, "converge after Change", func() bool { return e.converged(t, next) })
		if n := e.rm.listed(); n != lists {
			t.Errorf("a subnet inside the underlay's prefix went to the full comparison (%d listings)", n-lists)
		}

		// 10.0.0.0/24 covers the node's own 10.0.0.11: never routed.
		covering := e.peer("10.0.0.0/24", "198.18.0.16")
		r.Change([]peers.PeerChange{{Peer: covering}})
		waitFor(t, 2*time.Second, "the full comparison", func() bool { return e.rm.listed() > lists })
		time.Sleep(50 * time.Millisecond)
		e.assertConverged(t, next) // and nothing for the covering subnet
	})
}
