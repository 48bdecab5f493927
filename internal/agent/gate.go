package agent

import (
	"fmt"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
	"github.com/hgw-ebpf/hgw-ebpf/internal/netfilter"
)

// FastPath is when the programs may act, decided from what the node has:
// the conntrack lookup and the NetworkPolicy engines whose rules a
// redirected packet would skip. It is written into the programs' config.
type FastPath struct {
	// Conntrack: the programs use the conntrack lookup (usable and not
	// ignored).
	Conntrack bool `json:"conntrack"`
	// IgnoreConntrack: --unsafe-ignore-conntrack.
	IgnoreConntrack bool `json:"ignore_conntrack"`
	// StepAside: every packet passes to the kernel, for Engines.
	StepAside bool               `json:"step_aside"`
	Engines   []netfilter.Engine `json:"policy_engines"`
	// ConntrackProblem says why the lookup is unusable ("" when usable or
	// not known, as in `hgw-ebpf status`).
	ConntrackProblem string `json:"conntrack_problem,omitempty"`
}

// decideFastPath is the rule: a NetworkPolicy engine makes the fast path
// step aside unless the operator allowed the bypass; without a usable
// conntrack lookup (and no --unsafe-ignore-conntrack) the programs fail
// closed, which the datapath does by itself when neither conntrack flag is
// set.
func decideFastPath(ctUsable bool, ctProblem string, ignoreCT bool, engines []netfilter.Engine, allowBypass bool) FastPath {
	f := FastPath{
		Conntrack:       ctUsable && !ignoreCT,
		IgnoreConntrack: ignoreCT,
		StepAside:       len(engines) > 0 && !allowBypass,
		Engines:         engines,
	}
	if !ctUsable && !ignoreCT {
		f.ConntrackProblem = ctProblem
	}
	return f
}

// FastPathOf reads the decision back from the config the programs use,
// with the engines found now (for `hgw-ebpf status`).
func FastPathOf(c datapath.NodeConfig, engines []netfilter.Engine) FastPath {
	return FastPath{Conntrack: c.Conntrack, IgnoreConntrack: c.IgnoreConntrack, StepAside: c.StepAside, Engines: engines}
}

// Underlay says whether from_underlay should be attached: only where the
// conntrack question can be answered (or is ignored on purpose).
func (f FastPath) Underlay() bool { return f.Conntrack || f.IgnoreConntrack }

// Active says whether the programs may redirect at all.
func (f FastPath) Active() bool { return !f.StepAside && f.Underlay() }

// State is a stable word for scripts: active, step_aside or
// closed_no_conntrack.
func (f FastPath) State() string {
	switch {
	case f.StepAside:
		return "step_aside"
	case !f.Underlay():
		return "closed_no_conntrack"
	}
	return "active"
}

// Describe says in one line what the fast path does and why.
func (f FastPath) Describe() string {
	switch {
	case f.StepAside && len(f.Engines) == 0:
		return "fast path: stepping aside (a NetworkPolicy engine was present at the agent's last check): every packet takes the kernel path"
	case f.StepAside:
		return fmt.Sprintf("fast path: stepping aside for NetworkPolicy engine %s: every packet takes the kernel path (--allow-policy-bypass overrides)", netfilter.EngineList(f.Engines))
	case !f.Underlay():
		why := "the conntrack lookup is unavailable"
		if f.ConntrackProblem != "" {
			why += " (" + f.ConntrackProblem + ")"
		}
		return "fast path: closed, " + why + ": every packet takes the kernel path until it is usable"
	case len(f.Engines) > 0:
		return fmt.Sprintf("fast path: active and BYPASSING NetworkPolicy engine %s (--allow-policy-bypass)", netfilter.EngineList(f.Engines))
	}
	return "fast path: active"
}

// Checks says which checks guard the fast path.
func (f FastPath) Checks() string {
	ct := "conntrack check: on (flows the kernel tracks stay on the kernel path)"
	switch {
	case f.IgnoreConntrack:
		ct = "conntrack check: off (--unsafe-ignore-conntrack)"
	case !f.Conntrack:
		ct = "conntrack check: unavailable (nothing is redirected)"
	}
	return ct
}
