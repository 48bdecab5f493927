package agent

import (
	"errors"
	"fmt"
	"slices"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
	"github.com/hgw-ebpf/hgw-ebpf/internal/netfilter"
	"github.com/hgw-ebpf/hgw-ebpf/internal/subnetfile"
)

// Readiness notes: what /readyz says besides ready or not.
const (
	noteFastPath = "fast path"
	noteChecks   = "checks"
)

// startDatapath loads the programs over the pinned maps (reusing what an
// earlier agent left), decides when they may act, writes the node config,
// and attaches what that decision wants, detaching what it does not.
func (n *node) startDatapath() error {
	f := n.decide()
	dp, err := n.load()
	if err != nil {
		return err
	}
	n.mu.Lock()
	n.dp, n.progs, n.progsCT = dp, dp, dp.Features().ConntrackLookup
	n.fast = f
	n.mu.Unlock()
	for _, m := range dp.Migrated {
		n.log.Warn("pinned map of an older layout replaced; it is refilled now", "map", m)
	}
	if _, created, err := ensureBridge(n.cfg.Bridge); err != nil {
		return err
	} else if created {
		n.log.Info("created bridge", "dev", n.cfg.Bridge)
	}
	if err := n.writeConfig(f); err != nil {
		return err
	}
	if err := n.attach(); err != nil {
		return err
	}
	if atts, err := datapath.Attachments(n.cfg.PinRoot); err != nil {
		n.log.Error("list attachments", "err", err)
	} else {
		n.detachUnwanted(atts)
	}
	n.reportFastPath(FastPath{}, f, true)
	return nil
}

// load loads the programs over the pinned maps.
func (n *node) load() (*datapath.Datapath, error) {
	return datapath.Load(datapath.Options{PinRoot: n.cfg.PinRoot, Mode: n.cfg.AttachMode, Without: n.without})
}

// decide asks the node and applies the rule (see decideFastPath).
func (n *node) decide() FastPath {
	var ok bool
	var problem string
	if !n.cfg.UnsafeIgnoreConntrack {
		ok, problem = n.probes.conntrackLookup()
	}
	return decideFastPath(ok, problem, n.cfg.UnsafeIgnoreConntrack, n.probes.engines(), n.cfg.AllowPolicyBypass)
}

func (n *node) fastPath() FastPath {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.fast
}

// programs are the programs to attach: the latest loaded.
func (n *node) programs() *datapath.Datapath {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.progs
}

// refreshFastPath decides again (every resync) and applies a changed
// decision in an order that never lets a program redirect on a check it
// cannot make: programs that can ask conntrack are in place before the
// config tells them to; from_underlay follows in keepAttached.
func (n *node) refreshFastPath() {
	prev, next := n.fastPath(), n.decide()
	if sameFastPath(prev, next) {
		return
	}
	n.mu.Lock()
	progsCT := n.progsCT
	n.mu.Unlock()
	if next.Conntrack && !progsCT {
		if err := n.reloadPrograms(); err != nil {
			n.log.Error("reload programs now that conntrack can be asked", "err", err)
			next.Conntrack, next.ConntrackProblem = false, "programs not reloaded yet: "+err.Error()
			if sameFastPath(prev, next) {
				return
			}
		}
	}
	if err := n.writeConfig(next); err != nil {
		n.log.Error("update datapath config", "err", err)
		return
	}
	n.mu.Lock()
	n.fast = next
	n.mu.Unlock()
	n.reportFastPath(prev, next, false)
}

func sameFastPath(a, b FastPath) bool {
	return a.Conntrack == b.Conntrack && a.IgnoreConntrack == b.IgnoreConntrack && a.StepAside == b.StepAside &&
		a.ConntrackProblem == b.ConntrackProblem && slices.Equal(engineNames(a.Engines), engineNames(b.Engines))
}

func engineNames(es []netfilter.Engine) []string {
	var out []string
	for _, e := range es {
		out = append(out, e.Name)
	}
	return out
}

// reloadPrograms loads the programs again and swaps them into every
// attachment. Programs loaded while nf_conntrack was missing have the
// lookup compiled out (it is a weak kfunc), so they could never use it.
func (n *node) reloadPrograms() error {
	dp, err := n.load()
	if err != nil {
		return err
	}
	if !dp.Features().ConntrackLookup {
		dp.Close()
		return errors.New("the kernel still lacks the conntrack lookup at load")
	}
	atts, err := datapath.Attachments(n.cfg.PinRoot)
	if err != nil {
		dp.Close()
		return err
	}
	for _, a := range atts {
		if a.Ifindex == 0 || (a.Program != datapath.FromPods && a.Program != datapath.FromUnderlay) {
			continue // gone or not ours to keep: detachUnwanted's business
		}
		if _, err := dp.Attach(a.Dev, a.Program); err != nil {
			dp.Close()
			return fmt.Errorf("swap %s on %s: %w", a.Program, a.Dev, err)
		}
	}
	n.mu.Lock()
	old := n.progs
	n.progs, n.progsCT = dp, true
	n.mu.Unlock()
	if old != n.dp {
		old.Close()
	}
	n.log.Info("programs reloaded with the conntrack lookup", "attachments", len(atts))
	return nil
}

// reportFastPath says what the fast path does: in the metrics and in
// /readyz always, in the log when it changed.
func (n *node) reportFastPath(prev, next FastPath, first bool) {
	m := n.metrics
	m.FastPathActive.Set(b2f(next.Active()))
	m.FastPathChecks.WithLabelValues("conntrack").Set(b2f(next.Conntrack))
	m.FastPathChecks.WithLabelValues("policy").Set(b2f(!n.cfg.AllowPolicyBypass))
	m.SetPolicyEngines(engineNames(next.Engines))
	n.ready.SetNote(noteFastPath, next.Describe())
	n.ready.SetNote(noteChecks, next.Checks())

	if first || next.Conntrack != prev.Conntrack || next.ConntrackProblem != prev.ConntrackProblem {
		switch {
		case next.IgnoreConntrack:
			n.log.Warn("conntrack check off (--unsafe-ignore-conntrack): NATed flows through this node will break")
		case next.Conntrack:
			n.log.Info("conntrack check on: flows the kernel tracks stay on the kernel path")
		default:
			n.log.Warn("conntrack lookup unavailable: nothing is redirected and from_underlay stays detached until it is; checking again every resync",
				"reason", next.ConntrackProblem)
		}
	}
	if first || !slices.Equal(engineNames(prev.Engines), engineNames(next.Engines)) {
		names, found := engineNames(next.Engines), netfilter.EngineList(next.Engines)
		switch {
		case len(next.Engines) > 0 && next.StepAside:
			n.log.Warn("NetworkPolicy engine present: the fast path steps aside, every packet takes the kernel path (--allow-policy-bypass overrides)",
				"engine", names, "found", found)
		case len(next.Engines) > 0:
			n.log.Warn("NetworkPolicy engine present and BYPASSED by the fast path (--allow-policy-bypass): its rules do not apply to redirected packets",
				"engine", names, "found", found)
		case !first:
			n.log.Info("NetworkPolicy engine gone", "engine", engineNames(prev.Engines), "now", next.Describe())
		}
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// writeConfig tells the programs this node's subnets (the gateway is the
// bridge's first address in each, as the subnet file says), devices and f.
func (n *node) writeConfig(f FastPath) error {
	bridge, err := linkIndex(n.cfg.Bridge)
	if err != nil {
		return err
	}
	lease := n.ownLease()
	own, own6 := lease.Subnet, lease.IPv6Subnet
	c := datapath.NodeConfig{
		PodSubnet: own, Gateway: subnetfile.Gateway(own),
		BridgeIfindex: bridge, UnderlayIfindex: uint32(n.ul.link.Attrs().Index),
		Conntrack: f.Conntrack, IgnoreConntrack: f.IgnoreConntrack, StepAside: f.StepAside,
	}
	if own6.IsValid() {
		c.PodSubnet6, c.Gateway6 = own6, subnetfile.Gateway(own6)
	}
	return n.dp.SetConfig(c)
}

// wanted is what should be attached besides the pods' veths (which the
// endpoints reconciler keeps): device -> program.
func (n *node) wanted() map[string]datapath.Program {
	w := map[string]datapath.Program{n.cfg.Bridge: datapath.FromPods}
	if n.fastPath().Underlay() {
		w[n.ul.link.Attrs().Name] = datapath.FromUnderlay
	}
	return w
}

func (n *node) attach() error {
	dp := n.programs()
	for dev, prog := range n.wanted() {
		mode, err := dp.Attach(dev, prog)
		if err != nil {
			n.metrics.Attached.WithLabelValues(dev, string(prog)).Set(0)
			return err
		}
		n.metrics.Attached.WithLabelValues(dev, string(prog)).Set(1)
		n.log.Info("program attached", "program", prog, "dev", dev, "mode", mode)
	}
	return nil
}

// detachUnwanted detaches what the current configuration does not want:
// from_underlay where the conntrack lookup is unusable or on a device that
// is no longer the underlay (an earlier run's), and programs this version
// does not know. from_pods is the endpoints reconciler's to keep.
func (n *node) detachUnwanted(atts []datapath.Attachment) {
	underlay := n.ul.link.Attrs().Name
	for _, a := range atts {
		var reason string
		switch {
		case a.Program == datapath.FromPods:
			continue
		case a.Program != datapath.FromUnderlay:
			reason = "a program this version does not know"
		case a.Dev != underlay:
			reason = "not the underlay device"
		case !n.fastPath().Underlay():
			reason = "the conntrack lookup is unavailable"
		default:
			continue
		}
		if err := datapath.DetachPinned(n.cfg.PinRoot, a.Dev, a.Program); err != nil {
			n.log.Error("detach", "program", a.Program, "dev", a.Dev, "err", err)
			continue
		}
		n.metrics.Attached.WithLabelValues(a.Dev, string(a.Program)).Set(0)
		n.log.Info("program detached", "program", a.Program, "dev", a.Dev, "mode", a.Mode, "reason", reason)
	}
}

// keepAttached, every resync, detaches what is not wanted and re-attaches
// what someone detached by hand (or a re-created bridge lost): traffic
// meanwhile took the kernel routes.
func (n *node) keepAttached() {
	atts, err := datapath.Attachments(n.cfg.PinRoot)
	if err != nil {
		n.log.Error("list attachments", "err", err)
		return
	}
	n.detachUnwanted(atts)
	want := n.wanted()
	for _, a := range atts {
		if a.Ifindex != 0 && want[a.Dev] == a.Program {
			delete(want, a.Dev)
		}
	}
	if len(want) == 0 {
		return
	}
	for dev, prog := range want {
		n.metrics.Attached.WithLabelValues(dev, string(prog)).Set(0)
	}
	n.ready.Set(condAttached, false)
	n.log.Warn("programs missing, attaching", "missing", fmt.Sprint(want))
	if err := n.writeConfig(n.fastPath()); err != nil {
		n.log.Error("update datapath config", "err", err)
		return
	}
	if err := n.attach(); err != nil {
		n.log.Error("attach", "err", err)
		return
	}
	n.ready.Set(condAttached, true)
}
