package agent

import (
	"context"
	"fmt"
	"time"

	"github.com/hgw-ebpf/hgw-ebpf/pkg/datapath"
)

// startDatapath loads the programs over the pinned maps (reusing what an
// earlier agent left), writes the node config, and attaches both programs.
func (n *node) startDatapath() error {
	ct, err := datapath.ConntrackSupported()
	if err != nil {
		n.log.Warn("cannot probe for the conntrack kfunc", "err", err)
	}
	switch {
	case n.cfg.UnsafeIgnoreConntrack:
		n.log.Warn("conntrack check off (--unsafe-ignore-conntrack): NATed flows through this node will break")
	case !ct:
		n.log.Warn("kernel lacks the conntrack kfunc bpf_skb_ct_lookup (needs >= 6.0, nf_conntrack, BTF): " +
			"from_underlay stays detached, so traffic into this node takes the kernel path")
		n.underlayFast = false
	default:
		n.log.Info("conntrack check on: flows the kernel tracks stay on the kernel path")
	}
	n.conntrack = ct && !n.cfg.UnsafeIgnoreConntrack
	dp, err := datapath.Load(datapath.Options{PinRoot: n.cfg.PinRoot, Mode: n.cfg.AttachMode})
	if err != nil {
		return err
	}
	n.dp = dp
	for _, m := range dp.Migrated {
		n.log.Warn("pinned map of an older layout replaced; it is refilled now", "map", m)
	}
	if _, created, err := ensureBridge(n.cfg.Bridge); err != nil {
		return err
	} else if created {
		n.log.Info("created bridge", "dev", n.cfg.Bridge)
	}
	if err := n.writeConfig(); err != nil {
		return err
	}
	return n.attach()
}

// writeConfig tells the programs this node's subnet and devices.
func (n *node) writeConfig() error {
	bridge, err := linkIndex(n.cfg.Bridge)
	if err != nil {
		return err
	}
	n.mu.Lock()
	own := n.own
	n.mu.Unlock()
	return n.dp.SetConfig(datapath.NodeConfig{
		PodSubnet: own, Gateway: own.Addr().Next(),
		BridgeIfindex: bridge, UnderlayIfindex: uint32(n.ul.link.Attrs().Index),
		Conntrack: n.conntrack, IgnoreConntrack: n.cfg.UnsafeIgnoreConntrack,
	})
}

// wanted is what should be attached: device -> program.
func (n *node) wanted() map[string]datapath.Program {
	w := map[string]datapath.Program{n.cfg.Bridge: datapath.FromPods}
	if n.underlayFast {
		w[n.ul.link.Attrs().Name] = datapath.FromUnderlay
	}
	return w
}

func (n *node) attach() error {
	for dev, prog := range n.wanted() {
		mode, err := n.dp.Attach(dev, prog)
		if err != nil {
			n.metrics.Attached.WithLabelValues(dev, string(prog)).Set(0)
			return err
		}
		n.metrics.Attached.WithLabelValues(dev, string(prog)).Set(1)
		n.log.Info("program attached", "program", prog, "dev", dev, "mode", mode)
	}
	return nil
}

// keepAttached re-attaches on every resync what someone detached by hand
// (or a re-created bridge lost): traffic meanwhile took the kernel routes.
func (n *node) keepAttached(ctx context.Context) error {
	t := time.NewTicker(n.cfg.ResyncInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		atts, err := datapath.Attachments(n.cfg.PinRoot)
		if err != nil {
			n.log.Error("list attachments", "err", err)
			continue
		}
		want := n.wanted()
		for _, a := range atts {
			if a.Ifindex != 0 && want[a.Dev] == a.Program {
				delete(want, a.Dev)
			}
		}
		if len(want) == 0 {
			continue
		}
		for dev, prog := range want {
			n.metrics.Attached.WithLabelValues(dev, string(prog)).Set(0)
		}
		n.ready.Set(condAttached, false)
		n.log.Warn("programs missing, re-attaching", "missing", fmt.Sprint(want))
		if err := n.writeConfig(); err != nil {
			n.log.Error("update datapath config", "err", err)
			continue
		}
		if err := n.attach(); err != nil {
			n.log.Error("re-attach", "err", err)
			continue
		}
		n.ready.Set(condAttached, true)
	}
}
