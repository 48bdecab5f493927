package datapath

import (
	"errors"
	"fmt"
	"os"

	"github.com/cilium/ebpf/btf"
)

// Features are what the running kernel lets the programs do. Load probes
// them and sets the programs' load-time switches from them; where one is
// missing the programs redirect less, never more:
//
//   - ConntrackLookup (bpf_skb_ct_lookup, kernel 5.18, nf_conntrack built in
//     or loaded): without it conntrack cannot be asked, and the programs
//     redirect nothing unless NodeConfig.IgnoreConntrack says so.
//   - KernCtx (bpf_cast_to_kern_ctx, kernel 6.2): reads the conntrack entry
//     br_netfilter attached to a packet at cni0. Without it nothing is
//     redirected at cni0, and from_underlay delivers only to pods the
//     endpoints map knows (their replies are taken at their own veth).
//   - TCX (kernel 6.6): attach with tcx links; else clsact + tc filters.
type Features struct {
	ConntrackLookup bool `json:"conntrack_lookup"`
	KernCtx         bool `json:"kern_ctx"`
	TCX             bool `json:"tcx"`
}

// without returns f with every feature set in off turned off.
func (f Features) without(off Features) Features {
	return Features{
		ConntrackLookup: f.ConntrackLookup && !off.ConntrackLookup,
		KernCtx:         f.KernCtx && !off.KernCtx,
		TCX:             f.TCX && !off.TCX,
	}
}

// ProbeFeatures reads the running kernel's BTF for the kfuncs and the attach
// type the programs use.
func ProbeFeatures() (Features, error) {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return Features{}, fmt.Errorf("load kernel BTF: %w", err)
	}
	var f Features
	var fn *btf.Func
	f.KernCtx = spec.TypeByName("bpf_cast_to_kern_ctx", &fn) == nil
	f.TCX = hasEnumValue(spec, "bpf_attach_type", "BPF_TCX_INGRESS")
	f.ConntrackLookup, err = conntrackLookup(spec)
	return f, err
}

// ConntrackSupported reports whether the kernel offers the conntrack
// lookup kfunc the programs use (kernel >= 5.18, nf_conntrack built in or
// loaded, with BTF). Without it the programs cannot tell a NATed flow from
// a plain one.
func ConntrackSupported() (bool, error) {
	f, err := ProbeFeatures()
	return f.ConntrackLookup, err
}

func conntrackLookup(vmlinux *btf.Spec) (bool, error) {
	const kfunc = "bpf_skb_ct_lookup"
	var fn *btf.Func
	if err := vmlinux.TypeByName(kfunc, &fn); err == nil {
		return true, nil
	}
	mod, err := btf.LoadKernelModuleSpec("nf_conntrack")
	if errors.Is(err, os.ErrNotExist) {
		return false, nil // not loaded (yet)
	}
	if err != nil {
		return false, fmt.Errorf("load nf_conntrack module BTF: %w", err)
	}
	return mod.TypeByName(kfunc, &fn) == nil, nil
}

func hasEnumValue(spec *btf.Spec, enum, value string) bool {
	var e *btf.Enum
	if err := spec.TypeByName(enum, &e); err != nil {
		return false
	}
	for _, v := range e.Values {
		if v.Name == value {
			return true
		}
	}
	return false
}
