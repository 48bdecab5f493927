package agent

import (
	"context"
	"errors"
	"os"
	"strings"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
	"github.com/hgw-ebpf/hgw-ebpf/internal/kernelwatch"
)

// runChecks re-checks, every resync, what can change under the agent:
// flanneld's iptables rules, the NetworkPolicy engines and the conntrack
// lookup (and with them what the programs may do), and the attachments.
func (n *node) runChecks(ctx context.Context) error {
	return kernelwatch.Loop{Resync: n.cfg.ResyncInterval, Run: func(context.Context) { n.check() }, Log: n.log}.Serve(ctx)
}

func (n *node) check() {
	n.ensureIPTables(false)
	if n.dp == nil {
		n.removeDatapath()
		return
	}
	n.refreshFastPath()
	n.keepAttached()
}

// removeDatapath takes away what an earlier --datapath ebpf run left on
// the node (links on the bridge, the underlay and the pods' veths, tc
// filters, pinned maps): with routes the node forwards as flannel does,
// and a program left attached would go on redirecting with maps nobody
// updates. With the pins gone, hgw-cni has no agent's maps to fast-path
// new pods with.
func (n *node) removeDatapath() {
	atts, err := datapath.Attachments(n.cfg.PinRoot)
	if err != nil {
		n.log.Error("list attachments an earlier run left", "err", err)
	}
	if _, serr := os.Stat(n.cfg.PinRoot); len(atts) == 0 && err == nil && errors.Is(serr, os.ErrNotExist) {
		return
	}
	if err := datapath.Cleanup(n.cfg.PinRoot); err != nil {
		n.log.Error("remove the fast path an earlier run left", "pin_root", n.cfg.PinRoot, "err", err)
		return
	}
	var what []string
	for _, a := range atts {
		what = append(what, string(a.Program)+"@"+a.Dev)
	}
	n.log.Warn("removed the fast path an earlier --datapath ebpf run left (--datapath routes)",
		"pin_root", n.cfg.PinRoot, "attachments", strings.Join(what, " "))
}
