package datapath_test

// Sharing a device's ingress with others: what the programs do not redirect
// goes on to the next tcx program and the classic tc filters (TC_ACT_UNSPEC,
// TCX_NEXT), and in tc mode our filter sits beside the CNI bandwidth
// plugin's ingress qdisc and u32 filter, after it.

import (
	"errors"
	"fmt"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
)

// counterProg is a SCHED_CLS program that counts the packets it sees and
// returns TC_ACT_UNSPEC: someone else's program or filter after ours.
type counterProg struct {
	prog *ebpf.Program
	m    *ebpf.Map
}

func newCounterProg(t *testing.T) *counterProg {
	t.Helper()
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:    ebpf.SchedCLS,
		License: "GPL",
		Instructions: asm.Instructions{
			asm.StoreImm(asm.RFP, -4, 0, asm.Word),
			asm.LoadMapPtr(asm.R1, m.FD()),
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, -4),
			asm.FnMapLookupElem.Call(),
			asm.JEq.Imm(asm.R0, 0, "out"),
			asm.Mov.Imm(asm.R1, 1),
			asm.StoreXAdd(asm.R0, asm.R1, asm.DWord),
			asm.Mov.Imm(asm.R0, -1).WithSymbol("out"), // TC_ACT_UNSPEC
			asm.Return(),
		},
	})
	if err != nil {
		t.Fatalf("load the counting program: %v", err)
	}
	t.Cleanup(func() { prog.Close() })
	return &counterProg{prog: prog, m: m}
}

func (c *counterProg) count(t *testing.T) uint64 {
	t.Helper()
	var n uint64
	if err := c.m.Lookup(uint32(0), &n); err != nil {
		t.Fatal(err)
	}
	return n
}

// filterAt adds prog as a direct-action classic filter on ifindex's ingress.
func (n *testNetns) filterAt(t *testing.T, ifindex int, prio uint16, prog *ebpf.Program, name string, handle uint32) {
	t.Helper()
	f := &netlink.BpfFilter{FilterAttrs: netlink.FilterAttrs{LinkIndex: ifindex, Parent: netlink.HANDLE_MIN_INGRESS,
		Handle: handle, Priority: prio, Protocol: unix.ETH_P_ALL}, Fd: prog.FD(), Name: name, DirectAction: true}
	if err := n.h.FilterAdd(f); err != nil {
		t.Fatalf("add filter %s at priority %d: %v", name, prio, err)
	}
}

// A frame from_underlay leaves alone (to the node's own address) reaches
// what comes after ours; one it redirects does not. Under tcx that is a
// second tcx program, and a classic filter, whose presence makes ours step
// aside altogether. In tc mode it is a filter after ours: ours is normally
// the last, so it is put first by hand here.
func TestWhatWeDoNotRedirectGoesOn(t *testing.T) {
	for _, mode := range []datapath.Mode{datapath.ModeTCX, datapath.ModeTC} {
		t.Run(string(mode), func(t *testing.T) {
			e := newWireEnv(t, mode)
			after := newCounterProg(t)
			local := udpFrame(peerNode, nodeIP)
			copy(local[0:6], e.eth0MAC[:])
			fast := udpFrame(peerPod, localPod)
			copy(fast[0:6], e.eth0MAC[:])
			expectAfter := func(step string, want uint64) {
				t.Helper()
				if got := after.count(t); got != want {
					t.Errorf("%s: the program after ours saw %d packets, want %d", step, got, want)
				}
			}

			if mode == datapath.ModeTCX {
				e.ns.do(t, func() {
					l, err := link.AttachTCX(link.TCXOptions{Interface: e.eth0, Program: after.prog,
						Attach: ebpf.AttachTCXIngress, Anchor: link.Tail()})
					if err != nil {
						t.Fatalf("attach a second tcx program: %v", err)
					}
					t.Cleanup(func() { l.Close() })
				})
			} else {
				prog, err := e.dp.Program(datapath.FromUnderlay)
				if err != nil {
					t.Fatal(err)
				}
				e.ns.do(t, func() {
					if err := e.dp.Detach("eth0", datapath.FromUnderlay); err != nil {
						t.Fatal(err)
					}
				})
				e.ns.addIngressFilter(t, e.eth0, false)
				e.ns.filterAt(t, e.eth0, 1, prog, "hgw_first", 1)
				e.ns.filterAt(t, e.eth0, 2, after.prog, "counter", 2)
			}
			e.expectCounted(t, "to the node", e.send(t, local), "ipv4", "no_route", len(local))
			expectAfter("to the node", 1)
			e.expectCounted(t, "to a pod", e.send(t, fast), "ipv4", "redirect", len(fast))
			expectAfter("to a pod", 1)
			if mode == datapath.ModeTC {
				return
			}

			// A classic filter after the tcx programs: ours leaves it every
			// packet, and the second tcx program still runs.
			classic := newCounterProg(t)
			e.ns.addIngressFilter(t, e.eth0, false)
			e.ns.filterAt(t, e.eth0, 1, classic.prog, "classic", 1)
			e.expectCounted(t, "to a pod, classic filter present", e.send(t, fast), "ipv4", "tc_filters", len(fast))
			expectAfter("to a pod, classic filter present", 2)
			if got := classic.count(t); got != 1 {
				t.Errorf("the classic filter saw %d packets, want 1", got)
			}
		})
	}
}

// The CNI bandwidth plugin shapes a pod's egress with an ingress qdisc
// (ffff:) and a u32 filter at priority 1 on the pod's host-side veth that
// mirrors everything to an ifb device. In tc mode our filter joins that
// qdisc's list after the plugin's, and leaves both behind when detached. The
// plugin refuses a veth that already has a clsact qdisc (its qdisc add is
// exclusive), so hgw-cni must come after it in the chain; under tcx there
// is no qdisc of ours and the order does not matter.
func TestBesideTheBandwidthPlugin(t *testing.T) {
	for _, mode := range []datapath.Mode{datapath.ModeTC, datapath.ModeTCX} {
		t.Run(string(mode), func(t *testing.T) {
			e := newAttachEnv(t)
			veth := e.ns.addLink(t, stubDev("vethpod1", 1500))
			ifb := e.ns.addLink(t, &netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: "bwpvethpod1"}})
			dp := e.load(t, mode)
			defer dp.Close()
			attach := func() error {
				var err error
				e.ns.do(t, func() { _, err = dp.Attach("vethpod1", datapath.FromPods) })
				return err
			}

			// Our attachment first: under tc the plugin's qdisc add fails.
			if err := attach(); err != nil {
				t.Fatal(err)
			}
			err := bandwidthShaping(e.ns, veth, ifb)
			if mode == datapath.ModeTC {
				if !errors.Is(err, unix.EEXIST) {
					t.Fatalf("the plugin's ingress qdisc beside our clsact: %v, want EEXIST", err)
				}
				e.ns.do(t, func() {
					if err := dp.Detach("vethpod1", datapath.FromPods); err != nil {
						t.Fatal(err)
					}
				})
				err = bandwidthShaping(e.ns, veth, ifb)
			}
			if err != nil {
				t.Fatalf("the plugin's shaping: %v", err)
			}
			// The plugin first (or, under tcx, either way).
			if err := attach(); err != nil {
				t.Fatalf("attach beside the plugin's filter: %v", err)
			}
			fs := e.ingressFilters(t, veth)
			if mode == datapath.ModeTC {
				if len(fs) != 2 || fs[0].Type() != "u32" || fs[0].Attrs().Priority != 1 ||
					fs[1].Type() != "bpf" || fs[1].Attrs().Priority != 0xffff {
					t.Errorf("filters %v, want the plugin's u32 at 1, then ours at 65535", describeFilters(fs))
				}
			} else if len(fs) != 1 || fs[0].Type() != "u32" {
				t.Errorf("filters %v, want only the plugin's u32", describeFilters(fs))
			}
			e.ns.do(t, func() {
				if err := dp.Detach("vethpod1", datapath.FromPods); err != nil {
					t.Fatal(err)
				}
			})
			if fs := e.ingressFilters(t, veth); len(fs) != 1 || fs[0].Type() != "u32" {
				t.Errorf("after detach: filters %v, want the plugin's u32 alone", describeFilters(fs))
			}
		})
	}
}

// bandwidthShaping does to veth what the CNI bandwidth plugin (v1.9.1,
// CreateEgressQdisc) does: an ingress qdisc ffff: and a u32 filter at
// priority 1 redirecting every frame to ifb.
func bandwidthShaping(n *testNetns, veth, ifb int) error {
	q := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: veth, Handle: netlink.MakeHandle(0xffff, 0),
		Parent: netlink.HANDLE_INGRESS}}
	if err := n.h.QdiscAdd(q); err != nil {
		return err
	}
	return n.h.FilterAdd(&netlink.U32{
		FilterAttrs: netlink.FilterAttrs{LinkIndex: veth, Parent: q.Handle, Priority: 1, Protocol: unix.ETH_P_ALL},
		ClassId:     netlink.MakeHandle(1, 1),
		RedirIndex:  ifb,
		Actions:     []netlink.Action{&netlink.MirredAction{MirredAction: netlink.TCA_EGRESS_REDIR, Ifindex: ifb}},
	})
}

func (e *attachEnv) ingressFilters(t *testing.T, ifindex int) []netlink.Filter {
	t.Helper()
	l, err := e.ns.h.LinkByIndex(ifindex)
	if err != nil {
		t.Fatal(err)
	}
	fs, err := e.ns.h.FilterList(l, netlink.HANDLE_MIN_INGRESS)
	if err != nil {
		t.Fatalf("list ingress filters: %v", err)
	}
	return fs
}

func describeFilters(fs []netlink.Filter) []string {
	var out []string
	for _, f := range fs {
		out = append(out, fmt.Sprintf("%s@%d", f.Type(), f.Attrs().Priority))
	}
	return out
}

// A filter of ours that an earlier version put first (priority 1) is
// replaced by one at our priority on the next attach: one per device.
func TestOldPriorityFilterReplaced(t *testing.T) {
	e := newAttachEnv(t)
	dp := e.load(t, datapath.ModeTC)
	defer dp.Close()
	prog, err := dp.Program(datapath.FromPods)
	if err != nil {
		t.Fatal(err)
	}
	e.ns.addIngressFilter(t, e.cni0, false)
	e.ns.filterAt(t, e.cni0, 1, prog, "hgw_from_pods", 0x4867)
	e.attachAll(t, dp, datapath.ModeTC)
	e.expectAttached(t, dp, datapath.ModeTC)
	if fs := e.ingressFilters(t, e.cni0); len(fs) != 1 || fs[0].Attrs().Priority != 0xffff {
		t.Errorf("cni0 filters after attach: %v, want ours alone at 65535", describeFilters(fs))
	}
}
