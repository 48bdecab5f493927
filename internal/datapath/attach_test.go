package datapath_test

// Attach, re-attach, restart, switch mode, detach, clean up: in both attach
// modes, checked against what the kernel reports (tcx program queries, tc
// filter and qdisc dumps), not only against Attachments().

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
	"github.com/hgw-ebpf/hgw-ebpf/internal/testutil"
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
	if other == datapath.ModeTC {
		if pins := e.linkPins(t); len(pins) != 0 {
			t.Errorf("tcx link pins after switching to tc: %v, want none", pins)
		}
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
	e.expectCleanedUp(t)
}

// linkPins lists the tcx link pins under the root.
func (e *attachEnv) linkPins(t *testing.T) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(e.root, "links"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("read link pins: %v", err)
	}
	var names []string
	for _, en := range entries {
		names = append(names, en.Name())
	}
	return names
}

// expectCleanedUp checks that nothing of ours is left: no pin root, no
// attachment by our own account, and nothing on either device by the
// kernel's.
func (e *attachEnv) expectCleanedUp(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(e.root); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin root %s after cleanup: %v, want it gone", e.root, err)
	}
	e.ns.do(t, func() {
		atts, err := datapath.Attachments(e.root)
		if err != nil {
			t.Errorf("attachments after cleanup: %v", err)
		}
		if len(atts) != 0 {
			t.Errorf("attachments after cleanup: %+v, want none", atts)
		}
	})
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
	if err == nil || !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), "not on a BPF filesystem") {
		t.Fatalf("load with pin root %s: %v, want an error naming it and saying it is not on a BPF filesystem", dir, err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("load created %s although it refused it: %v", dir, err)
	}
}

// Auto mode takes tcx wherever the kernel has it, and falls back to tc only
// where link.AttachTCX says it is not supported.
func TestAttachAutoMode(t *testing.T) {
	e := newAttachEnv(t)
	dp := e.load(t, datapath.ModeAuto)
	defer dp.Close()
	var got datapath.Mode
	e.ns.do(t, func() {
		for _, h := range hooks {
			m, err := dp.Attach(h.dev, h.p)
			if err != nil {
				t.Fatalf("attach %s to %s in auto mode: %v", h.p, h.dev, err)
			}
			if got != "" && m != got {
				t.Fatalf("auto mode chose %s for %s and %s for %s", got, hooks[0].dev, m, h.dev)
			}
			got = m
		}
	})
	switch got {
	case datapath.ModeTCX:
	case datapath.ModeTC:
		// Only right if the kernel really lacks tcx.
		prog, err := dp.Program(datapath.FromPods)
		if err != nil {
			t.Fatal(err)
		}
		e.ns.do(t, func() {
			l, err := link.AttachTCX(link.TCXOptions{Interface: e.cni0, Program: prog, Attach: ebpf.AttachTCXEgress})
			if err == nil {
				l.Close()
				t.Errorf("auto mode chose tc although the kernel attaches tcx")
			} else if !errors.Is(err, link.ErrNotSupported) {
				t.Errorf("auto mode chose tc; probing tcx gives %v, not ErrNotSupported", err)
			}
		})
	default:
		t.Fatalf("auto mode attached with %q, want tcx or tc", got)
	}
	e.expectAttached(t, dp, got)
}

func TestAttachUnknownProgram(t *testing.T) {
	e := newAttachEnv(t)
	dp := e.load(t, datapath.ModeTCX)
	defer dp.Close()
	e.ns.do(t, func() {
		_, err := dp.Attach("cni0", datapath.Program("from_nowhere"))
		if err == nil || !strings.Contains(err.Error(), "from_nowhere") {
			t.Errorf("attach of an unknown program: %v, want an error naming it", err)
		}
	})
	if pins := e.linkPins(t); len(pins) != 0 {
		t.Errorf("a refused attach left link pins %v", pins)
	}
	e.expectNothingOn(t, "cni0")
}

// CNI plugins delete and re-create cni0 (and operators eth0's driver): a
// pinned tcx link then points at a device that is gone. Attachments shows
// it defunct, Attach makes a fresh link on the new device, and Cleanup of
// a defunct link is no error.
func TestTCXLinkOnARecreatedDevice(t *testing.T) {
	e := newAttachEnv(t)
	dp := e.load(t, datapath.ModeTCX)
	defer dp.Close()
	e.attachAll(t, dp, datapath.ModeTCX)

	recreateCNI0 := func() {
		t.Helper()
		l, err := e.ns.h.LinkByName("cni0")
		if err != nil {
			t.Fatal(err)
		}
		if err := e.ns.h.LinkDel(l); err != nil {
			t.Fatalf("delete cni0: %v", err)
		}
	}
	recreateCNI0()
	var atts []datapath.Attachment
	e.ns.do(t, func() {
		var err error
		if atts, err = datapath.Attachments(e.root); err != nil {
			t.Fatalf("attachments with cni0 gone: %v", err)
		}
	})
	defunct := datapath.Attachment{Dev: "cni0", Ifindex: 0, Program: datapath.FromPods, Mode: datapath.ModeTCX,
		ProgramID: uint32(progID(t, dp, datapath.FromPods))}
	if !slices.Contains(atts, defunct) {
		t.Errorf("attachments with cni0 gone = %+v, want %+v (ifindex 0: defunct)", atts, defunct)
	}

	old := e.cni0
	e.cni0 = e.ns.addLink(t, bridge("cni0", 1500))
	if e.cni0 == old {
		t.Fatalf("re-created cni0 kept ifindex %d: the test would prove nothing", old)
	}
	e.attachAll(t, dp, datapath.ModeTCX)
	e.expectAttached(t, dp, datapath.ModeTCX)

	// Gone again, then cleaned up: the defunct link's pin goes too.
	recreateCNI0()
	if err := dp.Close(); err != nil {
		t.Fatal(err)
	}
	e.ns.do(t, func() {
		if err := datapath.Cleanup(e.root); err != nil {
			t.Fatalf("cleanup with a defunct link: %v", err)
		}
	})
	if _, err := os.Stat(e.root); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin root %s after cleanup: %v, want it gone", e.root, err)
	}
	e.expectNothingOn(t, "eth0")
}

// Another tool's tc filters share the clsact qdisc with ours: detaching,
// switching to tcx and cleaning up remove our filters only, and leave the
// qdisc while anyone's filter is on it (ingress or egress).
func TestTCLeavesOtherFiltersAlone(t *testing.T) {
	e := newAttachEnv(t)
	dp := e.load(t, datapath.ModeTC)
	defer func() { dp.Close() }()
	prog, err := dp.Program(datapath.FromPods) // any SCHED_CLS program will do
	if err != nil {
		t.Fatal(err)
	}
	foreign := map[string]*netlink.BpfFilter{}
	for dev, parent := range map[string]uint32{"cni0": netlink.HANDLE_MIN_INGRESS, "eth0": netlink.HANDLE_MIN_EGRESS} {
		l, err := e.ns.h.LinkByName(dev)
		if err != nil {
			t.Fatal(err)
		}
		q := &netlink.GenericQdisc{QdiscType: "clsact", QdiscAttrs: netlink.QdiscAttrs{
			LinkIndex: l.Attrs().Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT}}
		if err := e.ns.h.QdiscAdd(q); err != nil {
			t.Fatalf("add clsact to %s: %v", dev, err)
		}
		f := &netlink.BpfFilter{FilterAttrs: netlink.FilterAttrs{LinkIndex: l.Attrs().Index, Parent: parent,
			Handle: 1, Priority: 7, Protocol: unix.ETH_P_ALL}, Fd: prog.FD(), Name: "someone_else", DirectAction: true}
		if err := e.ns.h.FilterAdd(f); err != nil {
			t.Fatalf("add a foreign filter to %s: %v", dev, err)
		}
		foreign[dev] = f
	}
	// The foreign filters must survive every step below.
	expectForeign := func(step string) {
		t.Helper()
		for dev, f := range foreign {
			l, err := e.ns.h.LinkByName(dev)
			if err != nil {
				t.Fatal(err)
			}
			fs, err := e.ns.h.FilterList(l, f.Parent)
			if err != nil {
				t.Fatalf("%s: list filters of %s: %v", step, dev, err)
			}
			found := false
			for _, g := range fs {
				if bf, ok := g.(*netlink.BpfFilter); ok && bf.Name == f.Name && bf.Priority == f.Priority {
					found = true
				}
			}
			if !found {
				t.Errorf("%s: the foreign filter on %s is gone (filters now %+v)", step, dev, fs)
			}
			if !e.inspect(t, dev).clsact {
				t.Errorf("%s: the clsact qdisc of %s is gone although a foreign filter uses it", step, dev)
			}
		}
	}

	e.attachAll(t, dp, datapath.ModeTC)
	e.ns.do(t, func() {
		atts, err := datapath.Attachments(e.root)
		if err != nil {
			t.Fatal(err)
		}
		if len(atts) != len(hooks) {
			t.Errorf("attachments = %+v, want only our %d (not the foreign filters)", atts, len(hooks))
		}
	})
	if v := e.inspect(t, "cni0"); len(v.filters) != 2 {
		t.Errorf("cni0 ingress filters %+v, want ours and the foreign one", v.filters)
	}

	e.ns.do(t, func() {
		for _, h := range hooks {
			if err := dp.Detach(h.dev, h.p); err != nil {
				t.Fatalf("detach %s from %s: %v", h.p, h.dev, err)
			}
		}
	})
	expectForeign("after detach")
	if v := e.inspect(t, "cni0"); len(v.filters) != 1 || v.filters[0].Name != "someone_else" {
		t.Errorf("after detach, cni0 ingress filters %+v, want only the foreign one", v.filters)
	}

	e.attachAll(t, dp, datapath.ModeTC)
	if err := dp.Close(); err != nil {
		t.Fatal(err)
	}
	dp = e.load(t, datapath.ModeTCX)
	e.attachAll(t, dp, datapath.ModeTCX)
	expectForeign("after switching to tcx")
	for _, h := range hooks {
		for _, f := range e.inspect(t, h.dev).filters {
			if strings.HasPrefix(f.Name, "hgw_") {
				t.Errorf("after switching to tcx, our filter %s is still on %s", f.Name, h.dev)
			}
		}
	}

	e.ns.do(t, func() {
		if err := datapath.Cleanup(e.root); err != nil {
			t.Fatalf("cleanup: %v", err)
		}
	})
	expectForeign("after cleanup")
	for _, h := range hooks {
		if v := e.inspect(t, h.dev); len(v.tcx) != 0 {
			t.Errorf("after cleanup, tcx programs on %s: %+v", h.dev, v.tcx)
		}
	}
}

func TestCleanupOfAnEmptyRoot(t *testing.T) {
	e := newAttachEnv(t)
	e.ns.do(t, func() {
		if err := datapath.Cleanup(e.root); err != nil {
			t.Errorf("cleanup of a root that was never created: %v", err)
		}
	})
	dp := e.load(t, datapath.ModeTCX)
	if err := dp.Close(); err != nil {
		t.Fatal(err)
	}
	e.ns.do(t, func() {
		if err := datapath.Cleanup(e.root); err != nil {
			t.Errorf("cleanup of maps without attachments: %v", err)
		}
	})
	e.expectCleanedUp(t)
}

// Cleanup waits for whoever holds the pin root's lock (an agent loading,
// a CNI ADD pinning a pod's link) and removes the pins only then.
func TestCleanupWaitsForThePinRootLock(t *testing.T) {
	e := newAttachEnv(t)
	dp := e.load(t, datapath.ModeTCX)
	if err := dp.Close(); err != nil {
		t.Fatal(err)
	}
	unlock, err := datapath.LockPinRoot(e.root)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		var err error
		e.ns.do(t, func() { err = datapath.Cleanup(e.root) })
		done <- err
	}()
	select {
	case err := <-done:
		unlock()
		t.Fatalf("Cleanup returned (%v) while another process held the pin root's lock", err)
	case <-time.After(300 * time.Millisecond):
	}
	if _, err := os.Stat(filepath.Join(e.root, "routes")); err != nil {
		t.Errorf("routes pin while the lock was held: %v, want it there", err)
	}
	unlock()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Cleanup after the lock was released: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Cleanup did not finish within 10s of the lock's release")
	}
	e.expectCleanedUp(t)
}
