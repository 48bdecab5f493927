package agent

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/hgw-ebpf/hgw-ebpf/internal/netfilter"
)

// iptablesDuties are flanneld's rules of one family on this node: the
// FORWARD accept chain always, the masquerade chain with --ip-masq; in
// iptables for IPv4 and, on a dual-stack node, in ip6tables for IPv6, as
// flanneld writes both.
type iptablesDuties struct {
	cmd           netfilter.Command
	ipt           *netfilter.IPTables
	keep          *netfilter.Keeper
	forward, masq netfilter.ChainSet
}

// iptablesSide is what one family's duties are made of.
type iptablesSide struct {
	cmd          netfilter.Command
	network, own netip.Prefix
}

// iptablesSides are the families whose rules the node keeps: IPv4's, and
// IPv6's on a dual-stack node.
func (n *node) iptablesSides() []iptablesSide {
	own := n.ownLease()
	sides := []iptablesSide{{netfilter.IPv4, n.network, own.Subnet}}
	if n.network6.IsValid() && own.IPv6Subnet.IsValid() {
		sides = append(sides, iptablesSide{netfilter.IPv6, n.network6, own.IPv6Subnet})
	}
	return sides
}

// startIPTables puts flanneld's rules in place before the subnet file
// announces them (FLANNEL_IPMASQ=true tells the CNI plugin not to
// masquerade per pod). Without iptables (or ip6tables) only --ip-masq is
// an error: a node without it has no FORWARD rules to get past either.
func (n *node) startIPTables() error {
	for _, s := range n.iptablesSides() {
		ipt, err := s.cmd.Open()
		if err != nil {
			if n.cfg.IPMasq {
				return fmt.Errorf("--ip-masq needs %s: %w", s.cmd, err)
			}
			n.log.Warn(string(s.cmd)+" not found: flanneld's FORWARD accept rules are not installed", "err", err)
			continue
		}
		n.fws = append(n.fws, &iptablesDuties{cmd: s.cmd, ipt: ipt, keep: netfilter.NewKeeper(ipt),
			forward: netfilter.ForwardRules(s.network),
			masq:    netfilter.MasqRules(s.network, s.own, ipt.RandomFully()),
		})
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
	var errs []error
	for _, fw := range n.fws {
		errs = append(errs, n.ensureDuties(fw, start))
	}
	return errors.Join(errs...)
}

func (n *node) ensureDuties(fw *iptablesDuties, start bool) error {
	want := []netfilter.ChainSet{fw.forward}
	if n.cfg.IPMasq {
		want = append(want, fw.masq)
	}
	var errs []error
	for _, cs := range want {
		why, err := fw.keep.Ensure(cs)
		switch {
		case err != nil:
			n.log.Error(string(fw.cmd)+" rules", "table", cs.Table, "chain", cs.Chain, "err", err)
			errs = append(errs, err)
		case why != "" && start:
			n.log.Info(string(fw.cmd)+" rules in place, as flanneld writes them", "table", cs.Table, "chain", cs.Chain, "rules", len(cs.Rules))
		case why != "":
			n.metrics.IPTablesRepairs.Inc()
			n.log.Warn(string(fw.cmd)+" rules restored", "table", cs.Table, "chain", cs.Chain, "reason", why)
		}
	}
	if !n.cfg.IPMasq {
		rm, err := fw.ipt.Remove(fw.masq)
		if err != nil {
			n.log.Error("remove masquerade rules", "cmd", fw.cmd, "err", err)
			errs = append(errs, err)
		} else if rm.Any() {
			n.log.Warn("removed masquerade rules an earlier run left: --ip-masq is off", "cmd", fw.cmd, "removed", rm.String())
		}
	}
	return errors.Join(errs...)
}

// removeIPTables removes flanneld's rules (--cleanup-on-exit).
func (n *node) removeIPTables() error {
	var errs []error
	for _, fw := range n.fws {
		removed, err := fw.ipt.RemoveFlannel()
		for _, rm := range removed {
			if rm.Any() {
				n.log.Info(string(fw.cmd)+" rules removed", "removed", rm.String())
			}
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
