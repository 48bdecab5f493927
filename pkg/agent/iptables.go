package agent

import (
	"errors"
	"fmt"

	"github.com/hgw-ebpf/hgw-ebpf/pkg/netfilter"
)

// iptablesDuties are flanneld's iptables rules on this node: the FORWARD
// accept chain always, the masquerade chain with --ip-masq.
type iptablesDuties struct {
	ipt           *netfilter.IPTables
	keep          *netfilter.Keeper
	forward, masq netfilter.ChainSet
}

// startIPTables puts flanneld's rules in place before the subnet file
// announces them (FLANNEL_IPMASQ=true tells the CNI plugin not to
// masquerade per pod). Without iptables only --ip-masq is an error: a node
// without it has no FORWARD rules to get past either.
func (n *node) startIPTables() error {
	ipt, err := netfilter.NewIPTables()
	if err != nil {
		if n.cfg.IPMasq {
			return fmt.Errorf("--ip-masq needs iptables: %w", err)
		}
		n.log.Warn("iptables not found: flanneld's FORWARD accept rules are not installed", "err", err)
		return nil
	}
	own := n.ownSubnet()
	n.fw = &iptablesDuties{ipt: ipt, keep: netfilter.NewKeeper(ipt),
		forward: netfilter.ForwardRules(n.network),
		masq:    netfilter.MasqRules(n.network, own, ipt.RandomFully()),
	}
	if err := n.ensureIPTables(true); err != nil && n.cfg.IPMasq {
		return err // flanneld exits too when it cannot masquerade
	}
	return nil
}

// ensureIPTables checks flanneld's rules and writes them again where they
// changed (at start: always, replacing whatever flanneld or an earlier
// agent left, as flanneld does). Masquerade rules left by an earlier
// --ip-masq run go when it is off: the subnet file then tells the bridge
// plugin to masquerade, and two masquerades are one too many.
func (n *node) ensureIPTables(start bool) error {
	if n.fw == nil {
		return nil
	}
	want := []netfilter.ChainSet{n.fw.forward}
	if n.cfg.IPMasq {
		want = append(want, n.fw.masq)
	}
	var errs []error
	for _, cs := range want {
		why, err := n.fw.keep.Ensure(cs)
		switch {
		case err != nil:
			n.log.Error("iptables rules", "table", cs.Table, "chain", cs.Chain, "err", err)
			errs = append(errs, err)
		case why != "" && start:
			n.log.Info("iptables rules in place, as flanneld writes them", "table", cs.Table, "chain", cs.Chain, "rules", len(cs.Rules))
		case why != "":
			n.metrics.IPTablesRepairs.Inc()
			n.log.Warn("iptables rules restored", "table", cs.Table, "chain", cs.Chain, "reason", why)
		}
	}
	if !n.cfg.IPMasq {
		rm, err := n.fw.ipt.Remove(n.fw.masq)
		if err != nil {
			n.log.Error("remove masquerade rules", "err", err)
			errs = append(errs, err)
		} else if rm.Any() {
			n.log.Warn("removed masquerade rules an earlier run left: --ip-masq is off", "removed", rm.String())
		}
	}
	return errors.Join(errs...)
}

// removeIPTables removes flanneld's rules (--cleanup-on-exit).
func (n *node) removeIPTables() error {
	if n.fw == nil {
		return nil
	}
	removed, err := n.fw.ipt.RemoveFlannel()
	for _, rm := range removed {
		if rm.Any() {
			n.log.Info("iptables rules removed", "removed", rm.String())
		}
	}
	return err
}
