package datapath_test

// Attach, re-attach, restart, switch mode, detach, clean up: in both attach
// modes, checked against what the kernel reports (tcx program queries, tc
// filter and qdisc dumps), not only against Attachments().

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/hgw-ebpf/hgw-ebpf/pkg/datapath"
	"github.com/hgw-ebpf/hgw-ebpf/pkg/testutil"
)

// attachEnv is a namespace with an eth0 (veth) and a cni0 (bridge) and a
// pin root of its own.
type attachEnv struct {
	ns         *testNetns
	root       string
	eth0, cni0 int
}

func newAttachEnv(t *testing.T) *attachEnv {
	t.Helper()
	testutil.RequireRoot(t)
	e := &attachEnv{ns: newTestNetns(t)}
	e.eth0 = e.ns.addLink(t, stubDev("eth0", 1500))
	e.cni0 = e.ns.addLink(t, bridge("cni0", 1500))
	e.root = newPinRoot(t, e.ns)
	return e
}

// hook is one program on one device, as the agent attaches them.
type hook struct {
	dev string
	p   datapath.Program
}

var hooks = []hook{{"cni0", datapath.FromPods}, {"eth0", datapath.FromUnderlay}}

func (e *attachEnv) ifindex(dev string) int {
	if dev == "eth0" {
		return e.eth0
	}
	return e.cni0
}

func (e *attachEnv) load(t *testing.T, mode datapath.Mode) *datapath.Datapath {
	t.Helper()
	dp, err := datapath.Load(datapath.Options{PinRoot: e.root, Mode: mode})
	if err != nil {
		t.Fatalf("load (%s): %v", mode, err)
	}
	return dp
}

func (e *attachEnv) attachAll(t *testing.T, dp *datapath.Datapath, want datapath.Mode) {
	t.Helper()
	e.ns.do(t, func() {
		for _, h := range hooks {
			got, err := dp.Attach(h.dev, h.p)
			if err != nil {
				t.Fatalf("attach %s to %s: %v", h.p, h.dev, err)
			}
			if got != want {
				t.Fatalf("attach %s to %s used mode %s, want %s", h.p, h.dev, got, want)
			}
		}
	})
}

func progID(t *testing.T, dp *datapath.Datapath, p datapath.Program) ebpf.ProgramID {
	t.Helper()
	prog, err := dp.Program(p)
	if err != nil {
		t.Fatal(err)
	}
	info, err := prog.Info()
	if err != nil {
		t.Fatalf("info of %s: %v", p, err)
	}
	id, ok := info.ID()
	if !ok {
		t.Fatalf("kernel gives no ID for %s", p)
	}
	return id
}

// kernelView is what the kernel says is on one device's ingress.
type kernelView struct {
	tcx     []link.AttachedProgram
	filters []*netlink.BpfFilter
	clsact  bool
}

func (e *attachEnv) inspect(t *testing.T, dev string) kernelView {
	t.Helper()
	var v kernelView
	e.ns.do(t, func() {
		res, err := link.QueryPrograms(link.QueryOptions{Target: e.ifindex(dev), Attach: ebpf.AttachTCXIngress})
		if err != nil {
			t.Fatalf("query tcx ingress of %s: %v", dev, err)
		}
		v.tcx = res.Programs
	})
	l, err := e.ns.h.LinkByName(dev)
	if err != nil {
		t.Fatal(err)
	}
	filters, err := e.ns.h.FilterList(l, netlink.HANDLE_MIN_INGRESS)
	if err != nil && !errors.Is(err, unix.EINVAL) { // EINVAL: no clsact qdisc
		t.Fatalf("list ingress filters of %s: %v", dev, err)
	}
	for _, f := range filters {
		if bf, ok := f.(*netlink.BpfFilter); ok {
			v.filters = append(v.filters, bf)
		} else {
			t.Errorf("unexpected %s filter on %s", f.Type(), dev)
		}
	}
	qdiscs, err := e.ns.h.QdiscList(l)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range qdiscs {
		if q.Type() == "clsact" {
			v.clsact = true
		}
	}
	return v
}

// expectAttached checks that each hook has exactly one attachment, in mode,
// running dp's program, in Attachments() and in the kernel. It returns the
// tcx link ID per device (0 in tc mode).
func (e *attachEnv) expectAttached(t *testing.T, dp *datapath.Datapath, mode datapath.Mode) map[string]link.ID {
	t.Helper()
	links := map[string]link.ID{}
	var atts []datapath.Attachment
	e.ns.do(t, func() {
		var err error
		atts, err = datapath.Attachments(e.root)
		if err != nil {
			t.Fatalf("attachments: %v", err)
		}
	})
	if len(atts) != len(hooks) {
		t.Errorf("Attachments() = %+v, want one per hook %v", atts, hooks)
	}
	for _, h := range hooks {
		id := progID(t, dp, h.p)
		want := datapath.Attachment{Dev: h.dev, Ifindex: e.ifindex(h.dev), Program: h.p, Mode: mode, ProgramID: uint32(id)}
		if !slices.Contains(atts, want) {
			t.Errorf("Attachments() = %+v, missing %+v", atts, want)
		}
		v := e.inspect(t, h.dev)
		switch mode {
		case datapath.ModeTCX:
			if len(v.tcx) != 1 || v.tcx[0].ID != id {
				t.Errorf("%s: tcx ingress programs %+v, want only program %d", h.dev, v.tcx, id)
			} else {
				lid, ok := v.tcx[0].LinkID()
				if !ok {
					t.Errorf("%s: tcx program %d has no link", h.dev, id)
				}
				links[h.dev] = lid
			}
			if len(v.filters) != 0 || v.clsact {
				t.Errorf("%s: tc leftovers in tcx mode: filters %+v, clsact %v", h.dev, v.filters, v.clsact)
			}
		case datapath.ModeTC:
			if len(v.filters) != 1 || v.filters[0].Id != int(id) || !v.filters[0].DirectAction {
				t.Errorf("%s: ingress filters %+v, want one direct-action filter of program %d", h.dev, v.filters, id)
			}
			if !v.clsact {
				t.Errorf("%s: filter attached but no clsact qdisc", h.dev)
			}
			if len(v.tcx) != 0 {
				t.Errorf("%s: tcx leftovers in tc mode: %+v", h.dev, v.tcx)
			}
		}
	}
	return links
}

func (e *attachEnv) expectNothingOn(t *testing.T, dev string) {
	t.Helper()
	v := e.inspect(t, dev)
	if len(v.tcx) != 0 || len(v.filters) != 0 || v.clsact {
		t.Errorf("%s still has tcx programs %+v, filters %+v, clsact %v", dev, v.tcx, v.filters, v.clsact)
	}
}

func TestAttachLifecycle(t *testing.T) {
	for _, c := range []struct{ start, other datapath.Mode }{
		{datapath.ModeTCX, datapath.ModeTC},
		{datapath.ModeTC, datapath.ModeTCX},
	} {
		t.Run(string(c.start), func(t *testing.T) { attachLifecycle(t, c.start, c.other) })
	}
}

func attachLifecycle(t *testing.T, start, other datapath.Mode) {
	e := newAttachEnv(t)
	dp := e.load(t, start)
	defer func() { dp.Close() }()

	// Attaching twice leaves one attachment per (device, program).
	e.attachAll(t, dp, start)
	e.attachAll(t, dp, start)
	links := e.expectAttached(t, dp, start)

	// A restarted agent finds its routes and replaces the programs in place.
	route := datapath.Route{Subnet: netip.MustParsePrefix("10.244.2.0/24"), NextHop: peerNode, Ifindex: uint32(e.eth0)}
	if err := dp.Routes().Put(route); err != nil {
		t.Fatal(err)
	}
	oldID := progID(t, dp, datapath.FromPods)
	if err := dp.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	dp = e.load(t, start)
	routes, err := dp.Routes().List()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(routes, route) {
		t.Errorf("routes after reload = %+v, missing %+v", routes, route)
	}
	if progID(t, dp, datapath.FromPods) == oldID {
		t.Fatal("reload kept the old program: the upgrade check below would prove nothing")
	}
	// Between restart and re-attach the old programs keep running.
	if v := e.inspect(t, "cni0"); start == datapath.ModeTCX && (len(v.tcx) != 1 || v.tcx[0].ID != oldID) {
		t.Errorf("after the loader closed: tcx programs %+v, want the old program %d still attached", v.tcx, oldID)
	}
	e.attachAll(t, dp, start)
	relinked := e.expectAttached(t, dp, start)
	if start == datapath.ModeTCX {
		for dev, id := range links {
			if relinked[dev] != id {
				t.Errorf("%s: tcx link %d replaced by %d, want the same link updated in place", dev, id, relinked[dev])
			}
		}
	}

	// Switching mode removes the other mode's attachments (and, leaving tc,
	// the clsact qdisc we added).
	if err := dp.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	dp = e.load(t, other)
	e.attachAll(t, dp, other)
	e.expectAttached(t, dp, other)
	if _, err := os.Stat(e.root + "/links/from_pods@cni0"); other == datapath.ModeTC && !errors.Is(err, os.ErrNotExist) {
		t.Errorf("tcx link pin after switching to tc: %v", err)
	}

	// Detach one; detaching it again is fine; the other stays.
	e.ns.do(t, func() {
		for range 2 {
			if err := dp.Detach("cni0", datapath.FromPods); err != nil {
				t.Fatalf("detach from cni0: %v", err)
			}
		}
	})
	e.expectNothingOn(t, "cni0")
	if v := e.inspect(t, "eth0"); len(v.tcx)+len(v.filters) != 1 {
		t.Errorf("detaching cni0 touched eth0: tcx %+v, filters %+v", v.tcx, v.filters)
	}

	// Cleanup takes everything away, and is happy to run again.
	if err := dp.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	e.ns.do(t, func() {
		for i := range 2 {
			if err := datapath.Cleanup(e.root); err != nil {
				t.Fatalf("cleanup #%d: %v", i+1, err)
			}
		}
	})
	if _, err := os.Stat(e.root); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin root %s after cleanup: %v", e.root, err)
	}
	e.expectNothingOn(t, "cni0")
	e.expectNothingOn(t, "eth0")
}

func TestAttachToAMissingDeviceNamesIt(t *testing.T) {
	e := newAttachEnv(t)
	dp := e.load(t, datapath.ModeTCX)
	defer dp.Close()
	e.ns.do(t, func() {
		_, err := dp.Attach("hgwt-nodev", datapath.FromPods)
		if err == nil || !strings.Contains(err.Error(), "hgwt-nodev") {
			t.Errorf("attach to a missing device: %v, want an error naming it", err)
		}
	})
}

func TestLoadRefusesAPinRootOffBPFFS(t *testing.T) {
	dir := t.TempDir() + "/pins"
	_, err := datapath.Load(datapath.Options{PinRoot: dir})
	if err == nil || !strings.Contains(err.Error(), dir) {
		t.Fatalf("load with pin root %s: %v, want an error naming it", dir, err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("load created %s although it refused it: %v", dir, err)
	}
}

// PROG_TEST_RUN cannot hand the program an IPv4 frame shorter than an IP
// header (the kernel refuses it), so the truncated-header branch is
// checked with a real frame: sent from eth0's veth peer, it arrives at
// eth0's ingress, where from_underlay runs on it.
func TestAttachedProgramSeesTruncatedIPv4(t *testing.T) {
	e := newAttachEnv(t)
	peer, err := e.ns.h.LinkByName("eth0-peer")
	if err != nil {
		t.Fatal(err)
	}
	if err := e.ns.h.LinkSetUp(peer); err != nil {
		t.Fatal(err)
	}
	eth0, err := e.ns.h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	dp := e.load(t, datapath.ModeAuto)
	defer dp.Close()
	if err := dp.SetConfig(datapath.NodeConfig{PodSubnet: podSubnet, Gateway: gateway,
		BridgeIfindex: uint32(e.cni0), UnderlayIfindex: uint32(e.eth0)}); err != nil {
		t.Fatal(err)
	}
	e.ns.do(t, func() {
		if _, err := dp.Attach("eth0", datapath.FromUnderlay); err != nil {
			t.Fatal(err)
		}
	})

	var toEth0 mac
	copy(toEth0[:], eth0.Attrs().HardwareAddr)
	full := udpFrame(peerPod, localPod)
	copy(full[0:6], toEth0[:])
	truncated := full[:ethLen+10]

	counter := func() datapath.Counter {
		cs, err := dp.Stats()
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range cs {
			if c.Program == string(datapath.FromUnderlay) && c.Reason == "malformed" {
				return c
			}
		}
		t.Fatal("no from_underlay/malformed counter")
		return datapath.Counter{}
	}
	before := counter()

	e.ns.do(t, func() {
		// The socket belongs to the namespace it is created in: this one.
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			t.Fatalf("packet socket: %v", err)
		}
		defer unix.Close(fd)
		to := &unix.SockaddrLinklayer{Ifindex: peer.Attrs().Index, Protocol: htons(etherTypeIPv4)}
		if err := unix.Sendto(fd, truncated, 0, to); err != nil {
			t.Fatalf("send %d bytes on eth0-peer: %v", len(truncated), err)
		}
	})

	want := datapath.Counter{Program: before.Program, Reason: before.Reason,
		Packets: before.Packets + 1, Bytes: before.Bytes + uint64(len(truncated))}
	deadline := time.Now().Add(2 * time.Second)
	for {
		got := counter()
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("from_underlay/malformed = %+v, want %+v", got, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func htons(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}
