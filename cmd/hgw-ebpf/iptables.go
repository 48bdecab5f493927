package main

import (
	"log/slog"

	"github.com/hgw-ebpf/hgw-ebpf/pkg/netfilter"
)

// removeFlannelIPTables removes flanneld's FORWARD and masquerade chains and
// the jumps to them (the agent's, or those flanneld left) and says what it
// found. A node without iptables has none to remove.
func removeFlannelIPTables() error {
	ipt, err := netfilter.NewIPTables()
	if err != nil {
		slog.Warn("iptables not found: flanneld's FORWARD and masquerade rules not checked", "err", err)
		return nil
	}
	removed, err := ipt.RemoveFlannel()
	for _, rm := range removed {
		if rm.Any() {
			slog.Info("iptables rules removed", "table", rm.Table, "chain", rm.Chain, "jumps", rm.Jumps, "rules", rm.Rules)
		} else {
			slog.Info("iptables rules: none there", "table", rm.Table, "chain", rm.Chain)
		}
	}
	return err
}
