package agent

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
	"github.com/hgw-ebpf/hgw-ebpf/internal/netfilter"
)

// probes are what the agent asks the node about before and while it
// forwards; tests replace them to force each answer.
type probes struct {
	conntrack       func() (bool, error)      // is the conntrack lookup kfunc there?
	conntrackLoaded func() bool               // is nf_conntrack loaded (or built in)?
	loadConntrack   func() error              // load it
	engines         func() []netfilter.Engine // present, or assumed (netfilter.EngineUnknown)
}

func nodeProbes() probes {
	return probes{
		conntrack: datapath.ConntrackSupported,
		conntrackLoaded: func() bool {
			_, err := os.Stat("/sys/module/nf_conntrack")
			return err == nil
		},
		loadConntrack: modprobeConntrack,
		engines:       netfilter.Detector{}.Present,
	}
}

// modprobeConntrack loads nf_conntrack as kube-proxy does. At boot the
// agent may start before anything else has loaded it.
func modprobeConntrack() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "modprobe", "nf_conntrack").CombinedOutput()
	if err != nil {
		return fmt.Errorf("modprobe nf_conntrack: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// conntrackLookup says whether the programs can ask conntrack, loading
// nf_conntrack first when it is missing; if not, it says why.
func (p probes) conntrackLookup() (bool, string) {
	ok, err := p.conntrack()
	switch {
	case ok:
		return true, ""
	case err != nil:
		return false, fmt.Sprintf("cannot probe for it: %v", err)
	case p.conntrackLoaded():
		return false, "the kernel lacks the bpf_skb_ct_lookup kfunc (Linux 5.18 or later, with BTF)"
	}
	if err := p.loadConntrack(); err != nil {
		return false, fmt.Sprintf("nf_conntrack is not loaded, and loading it failed: %v", err)
	}
	if ok, err = p.conntrack(); err != nil {
		return false, fmt.Sprintf("nf_conntrack loaded, but probing again failed: %v", err)
	} else if !ok {
		return false, "nf_conntrack loaded, but the bpf_skb_ct_lookup kfunc is still missing"
	}
	return true, ""
}
