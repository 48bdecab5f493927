package datapath_test

// The world every privileged test of this package runs in: a named network
// namespace of its own (hgwt-dp-<hex>, so a crashed run's leftovers are
// recognisable and swept by testutil), the devices the programs' ifindexes
// point at, and a pin root of its own under /sys/fs/bpf.

import (
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
	"github.com/hgw-ebpf/hgw-ebpf/internal/testutil"
)

// pinPrefix names the pin roots of this package's tests.
const pinPrefix = "hgwt-dp-"

// testNetns is a network namespace owned by one test: its devices, routes
// and conntrack entries go away with it.
type testNetns struct {
	name string
	ns   netns.NsHandle
	h    *netlink.Handle
}

func newTestNetns(t testing.TB) *testNetns {
	t.Helper()
	testutil.RequireRoot(t)
	name, ns := testutil.NetNS(t, "dp")
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatalf("netlink handle in %s: %v", name, err)
	}
	// Registered after NetNS's cleanup, so it runs before the netns goes.
	t.Cleanup(h.Close)
	return &testNetns{name: name, ns: ns, h: h}
}

// do runs fn on a locked OS thread inside the namespace (testutil.Do).
// Test runs need it: the kernel gives the skb the loopback device of the
// calling thread's namespace and resolves bpf_check_mtu's ifindex there.
func (n *testNetns) do(t testing.TB, fn func()) { testutil.Do(t, n.ns, fn) }

// addLink creates l in the namespace, up, and returns its ifindex.
func (n *testNetns) addLink(t testing.TB, l netlink.Link) int {
	t.Helper()
	name := l.Attrs().Name
	if err := n.h.LinkAdd(l); err != nil {
		t.Fatalf("add %s in %s: %v", name, n.name, err)
	}
	got, err := n.h.LinkByName(name)
	if err != nil {
		t.Fatalf("look up %s in %s: %v", name, n.name, err)
	}
	if err := n.h.LinkSetUp(got); err != nil {
		t.Fatalf("set %s up in %s: %v", name, n.name, err)
	}
	return got.Attrs().Index
}

// stubDev is an Ethernet device to point ifindexes at: a veth with its peer
// in the same namespace, because this kernel is built without the dummy
// driver (`ip link add ... type dummy` says "Unknown device type").
func stubDev(name string, mtu int) *netlink.Veth {
	return &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: mtu}, PeerName: name + "-peer"}
}

// withMAC gives l the Ethernet address m (the first end, for a veth).
func withMAC[L netlink.Link](l L, m mac) L {
	l.Attrs().HardwareAddr = net.HardwareAddr(m[:])
	return l
}

func bridge(name string, mtu int) *netlink.Bridge {
	return &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: mtu}}
}

// newPinRoot returns a fresh pin root /sys/fs/bpf/hgwt-dp-<hex>, cleaned up
// from inside n when the test ends. Pin roots a crashed earlier run left
// behind (same prefix, older than an hour) are removed first.
func newPinRoot(t testing.TB, n *testNetns) string {
	t.Helper()
	root := filepath.Join("/sys/fs/bpf", pinPrefix+testutil.RandHex(t, 6))
	n.do(t, func() { sweepStalePinRoots(t) })
	t.Cleanup(func() {
		n.do(t, func() {
			// Cleanup looks for our tc filters on every device of the
			// current namespace: run it where the test attached them.
			if err := datapath.Cleanup(root); err != nil {
				t.Errorf("cleanup %s: %v", root, err)
			}
		})
	})
	return root
}

func sweepStalePinRoots(t testing.TB) {
	stale, _ := filepath.Glob(filepath.Join("/sys/fs/bpf", pinPrefix+"*"))
	for _, dir := range stale {
		st, err := os.Stat(dir)
		if err != nil || time.Since(st.ModTime()) < time.Hour {
			continue // another test of this run may be using it
		}
		if err := datapath.Cleanup(dir); err != nil {
			t.Logf("remove stale pin root %s: %v", dir, err)
		}
	}
}
