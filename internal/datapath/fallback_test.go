package datapath_test

// The programs on older kernels, forced here by loading them with features
// turned off (Options.Without) on a kernel that has them all. Where a check
// cannot run, the programs redirect less, never more.

import (
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
)

func TestProbeFindsTheFeaturesOfThisKernel(t *testing.T) {
	f, err := datapath.ProbeFeatures()
	if err != nil {
		t.Fatal(err)
	}
	// The kernel the project is developed on (6.18) has every one; a
	// kernel that lacks one must be named here, not skipped.
	if !f.ConntrackLookup || !f.KernCtx || !f.TCX {
		t.Errorf("features %+v on this kernel, want all (is nf_conntrack loaded?)", f)
	}
	e := newRunEnv(t, false, datapath.Options{Without: datapath.Features{KernCtx: true, TCX: true}})
	if got, want := e.dp.Features(), (datapath.Features{ConntrackLookup: true}); got != want {
		t.Errorf("features with KernCtx and TCX turned off: %+v, want %+v", got, want)
	}
	if e.dp.Mode() != datapath.ModeTC {
		t.Errorf("auto mode without tcx resolved to %s, want tc", e.dp.Mode())
	}
}

// Kernels before 5.18, or nf_conntrack not (yet) loaded: conntrack cannot be
// asked. Whatever the config says, nothing is redirected unless the check
// is ignored outright.
func TestWithoutTheConntrackLookup(t *testing.T) {
	e := newRunEnv(t, true, datapath.Options{Without: datapath.Features{ConntrackLookup: true}})
	if e.dp.Features().ConntrackLookup {
		t.Fatal("ConntrackLookup still on")
	}
	// The agent wrongly believes the lookup works: still closed.
	e.pass(t, datapath.FromPods, udpFrame(localPod, peerPod), "no_conntrack")
	e.pass(t, datapath.FromUnderlay, udpFrame(peerPod, localPod), "no_conntrack")
	e.setConfig(t, func(c *datapath.NodeConfig) { c.Conntrack = false })
	e.pass(t, datapath.FromPods, udpFrame(localPod, peerPod), "no_conntrack")
	e.pass(t, datapath.FromUnderlay, udpFrame(peerPod, localPod), "no_conntrack")
	// --unsafe-ignore-conntrack: everything plainly forwardable is.
	e.setConfig(t, func(c *datapath.NodeConfig) { c.IgnoreConntrack = true })
	e.forward(t, datapath.FromPods, udpFrame(localPod, peerPod))
	e.forward(t, datapath.FromUnderlay, udpFrame(peerPod, localPod))
	e.forward(t, datapath.FromPods, ipFrame(ipv4Header{Src: localPod, Dst: peerPod, TTL: 64, Protocol: 132}, make([]byte, 12)))
}

// Kernels 5.18 to 6.1: the table lookup works, but the conntrack entry
// br_netfilter attaches to a pod's packet at the bridge port (kube-proxy's
// DNAT of a ClusterIP) cannot be read. So nothing is redirected at cni0; at
// a pod's own veth no netfilter hook has run yet, so it stays fast, and
// from_underlay delivers only to pods whose replies it will take there
// (those in the endpoints map).
func TestWithoutKernCtx(t *testing.T) {
	e := newRunEnv(t, true, datapath.Options{Without: datapath.Features{KernCtx: true}})
	ep := e.addEndpoint(t, "vethpod1", localPod, macPod)
	atVeth := &skbContext{Ifindex: ep.Ifindex}
	for _, proto := range []uint8{protoTCP, protoUDP, protoICMP} {
		// A known pod: fast both ways, out at its veth.
		e.forwardCtx(t, datapath.FromPods, flowFrame(proto, localPod, peerPod, false), atVeth)
		e.expect(t, datapath.FromUnderlay, flowFrame(proto, peerPod, localPod, true), nil, tcActRedirect, "redirect_peer")
		// At cni0 (a pod the map does not know, or a known pod's packet
		// the veth let through): the kernel, both ways.
		e.pass(t, datapath.FromPods, flowFrame(proto, localPod2, peerPod, false), "ct_unreadable")
		e.pass(t, datapath.FromUnderlay, flowFrame(proto, peerPod, localPod2, true), "ct_unreadable")
	}
	// Ignoring conntrack ignores this too.
	e.setConfig(t, func(c *datapath.NodeConfig) { c.Conntrack, c.IgnoreConntrack = false, true })
	e.forward(t, datapath.FromPods, udpFrame(localPod2, peerPod))
	e.forward(t, datapath.FromUnderlay, udpFrame(peerPod, localPod2))
}

// addIngressFilter gives dev a clsact qdisc and a classic u32 filter at
// priority 1 (as the CNI bandwidth plugin's), or only the qdisc.
func (n *testNetns) addIngressFilter(t *testing.T, ifindex int, filter bool) {
	t.Helper()
	q := &netlink.GenericQdisc{QdiscType: "clsact", QdiscAttrs: netlink.QdiscAttrs{
		LinkIndex: ifindex, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT}}
	if err := n.h.QdiscAdd(q); err != nil {
		t.Fatalf("add clsact to ifindex %d: %v", ifindex, err)
	}
	if !filter {
		return
	}
	f := &netlink.U32{FilterAttrs: netlink.FilterAttrs{LinkIndex: ifindex, Parent: netlink.HANDLE_MIN_INGRESS,
		Priority: 1, Protocol: unix.ETH_P_ALL}, ClassId: netlink.MakeHandle(1, 1)}
	if err := n.h.FilterAdd(f); err != nil {
		t.Fatalf("add u32 filter to ifindex %d: %v", ifindex, err)
	}
}

// Under tcx the programs run before the classic tc filters of the same
// device (the bandwidth plugin's egress shaping sits on a pod's veth). A
// redirect would skip them, so the programs step aside while any classic
// filter is on the device. In tc mode ours is the last filter instead, so
// the others have had the packet already.
func TestClassicFiltersComeFirst(t *testing.T) {
	for _, mode := range []datapath.Mode{datapath.ModeTCX, datapath.ModeTC} {
		t.Run(string(mode), func(t *testing.T) {
			e := newRunEnv(t, true, datapath.Options{Mode: mode})
			shaped := e.addEndpoint(t, "vethpod1", localPod, macPod)
			plain := e.addEndpoint(t, "vethpod2", localPod2, macPod2)
			e.ns.addIngressFilter(t, int(shaped.Ifindex), true)
			e.ns.addIngressFilter(t, int(plain.Ifindex), false) // a qdisc without filters
			fromPod := func(src netip.Addr) []byte {
				f := udpFrame(src, peerPod)
				copy(f[0:6], macGateway[:])
				return f
			}
			atShaped, atPlain := &skbContext{Ifindex: shaped.Ifindex}, &skbContext{Ifindex: plain.Ifindex}
			e.forwardCtx(t, datapath.FromPods, fromPod(localPod2), atPlain)
			if mode == datapath.ModeTC {
				e.forwardCtx(t, datapath.FromPods, fromPod(localPod), atShaped)
				return
			}
			e.passCtx(t, datapath.FromPods, fromPod(localPod), atShaped, "tc_filters")
			// eth0 and cni0 alike; the reply into the shaped pod's veth
			// is not at that veth's ingress, so it stays fast.
			e.expect(t, datapath.FromUnderlay, udpFrame(peerPod, localPod), nil, tcActRedirect, "redirect_peer")
			e.ns.addIngressFilter(t, e.eth0, true)
			e.pass(t, datapath.FromUnderlay, udpFrame(peerPod, localPod), "tc_filters")
			e.ns.addIngressFilter(t, e.cni0, true)
			e.pass(t, datapath.FromPods, udpFrame(localPod2, peerPod), "tc_filters")
			// The filter gone, the fast path is back.
			l, err := e.ns.h.LinkByIndex(e.cni0)
			if err != nil {
				t.Fatal(err)
			}
			fs, err := e.ns.h.FilterList(l, netlink.HANDLE_MIN_INGRESS)
			if err != nil || len(fs) != 1 {
				t.Fatalf("cni0 ingress filters %v, %v", fs, err)
			}
			if err := e.ns.h.FilterDel(fs[0]); err != nil {
				t.Fatal(err)
			}
			e.forward(t, datapath.FromPods, udpFrame(localPod2, peerPod))
		})
	}
}
