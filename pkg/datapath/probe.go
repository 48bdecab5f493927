package datapath

import (
	"errors"
	"fmt"
	"os"

	"github.com/cilium/ebpf/btf"
)

// ConntrackSupported reports whether the kernel offers the conntrack
// lookup kfunc the programs use (kernel >= 6.0, nf_conntrack built in or
// loaded, with BTF). Without it the programs cannot tell a NATed flow from
// a plain one.
func ConntrackSupported() (bool, error) {
	const kfunc = "bpf_skb_ct_lookup"
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return false, fmt.Errorf("load kernel BTF: %w", err)
	}
	var fn *btf.Func
	if err := spec.TypeByName(kfunc, &fn); err == nil {
		return true, nil
	}
	mod, err := btf.LoadKernelModuleSpec("nf_conntrack")
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("load nf_conntrack module BTF: %w", err)
	}
	if err := mod.TypeByName(kfunc, &fn); err != nil {
		return false, nil
	}
	return true, nil
}
