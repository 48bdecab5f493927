package endpoints_test

import (
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
	"github.com/hgw-ebpf/hgw-ebpf/internal/endpoints"
	"github.com/hgw-ebpf/hgw-ebpf/internal/testutil"
)

// node is a namespace with a bridge and one pod port on it, and a
// datapath loaded under a pin root of its own.
type node struct {
	ns   netns.NsHandle
	dp   *datapath.Datapath
	port netlink.Link // host end of a pod's veth, on the bridge
	br   netlink.Link
}

func newNode(t *testing.T) *node {
	t.Helper()
	testutil.RequireRoot(t)
	_, ns := testutil.NetNS(t, "eps")
	root := filepath.Join("/sys/fs/bpf", "hgwt-eps-"+testutil.RandHex(t, 4))
	n := &node{ns: ns}
	testutil.Do(t, ns, func() {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "cni0"}}
		if err := netlink.LinkAdd(br); err != nil {
			t.Fatal(err)
		}
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "vethpod"}, PeerName: "eth0pod"}
		if err := netlink.LinkAdd(veth); err != nil {
			t.Fatal(err)
		}
		var err error
		if n.br, err = netlink.LinkByName("cni0"); err != nil {
			t.Fatal(err)
		}
		if n.port, err = netlink.LinkByName("vethpod"); err != nil {
			t.Fatal(err)
		}
		if err := netlink.LinkSetMaster(n.port, n.br); err != nil {
			t.Fatal(err)
		}
		if n.dp, err = datapath.Load(datapath.Options{PinRoot: root}); err != nil {
			t.Fatal(err)
		}
	})
	t.Cleanup(func() {
		n.dp.Close()
		testutil.Do(t, ns, func() {
			if err := datapath.Cleanup(root); err != nil {
				t.Errorf("cleanup %s: %v", root, err)
			}
		})
	})
	return n
}

// reconciler is a Reconciler of n's bridge and pin root with o's other
// fields, by default on n's endpoints map, attaching nothing. Call it in
// n.ns.
func (n *node) reconciler(t *testing.T, o endpoints.Options) *endpoints.Reconciler {
	t.Helper()
	o.Bridge, o.PinRoot = "cni0", n.dp.PinRoot()
	if o.Map == nil {
		o.Map = n.dp.Endpoints()
	}
	if o.Attach == nil {
		o.Attach = func(string) error { return nil }
	}
	r, err := endpoints.New(o)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// racyMap is the endpoints map with a CNI ADD landing right after each
// listing: what the reconciler listed is stale by the time it acts.
type racyMap struct {
	*datapath.EndpointMap
	afterList func()
}

func (m racyMap) List() ([]datapath.Endpoint, error) {
	eps, err := m.EndpointMap.List()
	if m.afterList != nil {
		m.afterList()
	}
	return eps, err
}

// A pod is deleted and a new pod gets its address between the
// reconciler's listing and its removal of the old pod's entry (veth gone):
// the new pod's entry must survive.
func TestApplyKeepsAnEntryRewrittenAfterTheListing(t *testing.T) {
	n := newNode(t)
	ip := netip.MustParseAddr("10.244.1.5")
	old := datapath.Endpoint{IP: ip, Ifindex: 99999, // a veth that is gone
		PodMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, GatewayMAC: n.br.Attrs().HardwareAddr}
	reused := datapath.Endpoint{IP: ip, Ifindex: uint32(n.port.Attrs().Index),
		PodMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}, GatewayMAC: n.br.Attrs().HardwareAddr}
	eps := n.dp.Endpoints()
	if err := eps.Put(old); err != nil {
		t.Fatal(err)
	}
	m := racyMap{EndpointMap: eps}
	m.afterList = func() {
		m.afterList = nil
		if err := eps.Put(reused); err != nil {
			t.Error(err)
		}
	}
	testutil.Do(t, n.ns, func() {
		r := n.reconciler(t, endpoints.Options{Map: &m, Log: slog.New(slog.DiscardHandler)})
		defer r.Close()
		res := r.Apply()
		for _, err := range res.Errors {
			t.Errorf("Apply: %v", err)
		}
		if res.Removed != 0 {
			t.Errorf("Apply removed %d entries, want 0: the listed one was rewritten meanwhile", res.Removed)
		}
	})
	got, ok, err := eps.Get(ip)
	if err != nil || !ok || got.Ifindex != reused.Ifindex || got.PodMAC.String() != reused.PodMAC.String() {
		t.Errorf("entry for %s after Apply: %+v (present %v, %v); want the new pod's %+v", ip, got, ok, err, reused)
	}

	// Without a writer in between, the stale entry goes.
	if err := eps.Put(old); err != nil {
		t.Fatal(err)
	}
	testutil.Do(t, n.ns, func() {
		r := n.reconciler(t, endpoints.Options{Map: eps})
		defer r.Close()
		if res := r.Apply(); res.Removed != 1 || len(res.Errors) != 0 {
			t.Errorf("Apply of a stale entry: %+v, want it removed", res)
		}
	})
	if _, ok, _ := eps.Get(ip); ok {
		t.Errorf("stale entry for %s still there", ip)
	}
}

// The hgw-cni plugin attaches from_pods to a new pod's veth under the pin
// root's lock; the reconciler, which may attach the same veth at the same
// moment, waits for that lock too, so the two never race on its link pin.
func TestApplyAttachesUnderThePinRootLock(t *testing.T) {
	n := newNode(t)
	ep := datapath.Endpoint{IP: netip.MustParseAddr("10.244.1.6"), Ifindex: uint32(n.port.Attrs().Index),
		PodMAC: net.HardwareAddr{2, 0, 0, 0, 0, 3}, GatewayMAC: n.br.Attrs().HardwareAddr}
	if err := n.dp.Endpoints().Put(ep); err != nil {
		t.Fatal(err)
	}
	unlock, err := datapath.LockPinRoot(n.dp.PinRoot())
	if err != nil {
		t.Fatal(err)
	}
	// Another process's ADD, holding the lock for a while.
	var released atomic.Bool
	go func() {
		time.Sleep(300 * time.Millisecond)
		released.Store(true)
		unlock()
	}()
	testutil.Do(t, n.ns, func() {
		r := n.reconciler(t, endpoints.Options{Attach: func(dev string) error {
			if !released.Load() {
				t.Errorf("attached %s while another process held the pin root's lock", dev)
			}
			return nil
		}})
		defer r.Close()
		if res := r.Apply(); res.Attached != 1 || len(res.Errors) != 0 {
			t.Errorf("Apply: %+v, want the pod's veth attached once the lock is free", res)
		}
	})
}

// A dual-stack pod is learned in both families from the kernel's tables
// (its MAC in the bridge's FDB on its port, its addresses in the bridge's
// neighbour table), each address an entry of its own; its link-local
// address, in every device's fe80::/64, is not a pod address.
func TestApplyLearnsBothFamilies(t *testing.T) {
	n := newNode(t)
	podMAC := net.HardwareAddr{2, 0, 0, 0, 0, 7}
	v4, v6 := netip.MustParseAddr("10.244.1.7"), netip.MustParseAddr("fd00:10:244:1::7")
	linkLocal := netip.MustParseAddr("fe80::ff:fe00:7")
	testutil.Do(t, n.ns, func() {
		for _, a := range []string{"10.244.1.1/24", "fd00:10:244:1::1/64"} {
			addr, err := netlink.ParseAddr(a)
			if err != nil {
				t.Fatal(err)
			}
			if err := netlink.AddrAdd(n.br, addr); err != nil {
				t.Fatalf("add %s to cni0: %v", a, err)
			}
		}
		// Up with a port up: without carrier the kernel flushes the
		// bridge's neighbours.
		for _, name := range []string{"cni0", "vethpod", "eth0pod"} {
			l, err := netlink.LinkByName(name)
			if err != nil {
				t.Fatal(err)
			}
			if err := netlink.LinkSetUp(l); err != nil {
				t.Fatal(err)
			}
		}
		// The pod's MAC on its port, as the bridge learns it from the
		// pod's first frame (a static entry here: not the port's own).
		if err := netlink.NeighAdd(&netlink.Neigh{LinkIndex: n.port.Attrs().Index, Family: unix.AF_BRIDGE,
			State: unix.NUD_NOARP, Flags: netlink.NTF_MASTER, HardwareAddr: podMAC}); err != nil {
			t.Fatalf("FDB entry: %v", err)
		}
		for _, ip := range []netip.Addr{v4, v6, linkLocal} {
			if err := netlink.NeighAdd(&netlink.Neigh{LinkIndex: n.br.Attrs().Index, State: unix.NUD_REACHABLE,
				IP: net.IP(ip.AsSlice()), HardwareAddr: podMAC}); err != nil {
				t.Fatalf("neighbour %s: %v", ip, err)
			}
		}
		r := n.reconciler(t, endpoints.Options{})
		defer r.Close()
		if res := r.Apply(); res.Added != 2 || len(res.Errors) != 0 {
			t.Errorf("Apply: %+v, want the pod's two addresses added", res)
		}
	})
	for _, ip := range []netip.Addr{v4, v6} {
		ep, ok, err := n.dp.Endpoints().Get(ip)
		if err != nil || !ok || int(ep.Ifindex) != n.port.Attrs().Index || ep.PodMAC.String() != podMAC.String() {
			t.Errorf("entry for %s: %+v (present %v, %v)", ip, ep, ok, err)
		}
	}
	if list, _ := n.dp.Endpoints().List(); len(list) != 2 {
		t.Errorf("entries %+v, want exactly the two pod addresses", list)
	}
}
