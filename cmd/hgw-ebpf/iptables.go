package main

import (
	"errors"
	"log/slog"

	"github.com/hgw-ebpf/hgw-ebpf/internal/netfilter"
)

// removeFlannelIPTables removes flanneld's FORWARD and masquerade chains and
// the jumps to them (the agent's, or those flanneld left), in iptables and
// ip6tables (a dual-stack node's), and says what it found. A node without
// them has none to remove.
func removeFlannelIPTables() error {
	var errs []error
	for _, c := range []netfilter.Command{netfilter.IPv4, netfilter.IPv6} {
		cmd := string(c)
		ipt, err := c.Open()
		if err != nil {
			slog.Warn(cmd+" not found: flanneld's FORWARD and masquerade rules not checked", "err", err)
			continue
		}
		removed, err := ipt.RemoveFlannel()
		for _, rm := range removed {
			if rm.Any() {
				slog.Info(cmd+" rules removed", "table", rm.Table, "chain", rm.Chain, "jumps", rm.Jumps, "rules", rm.Rules)
			} else {
				slog.Info(cmd+" rules: none there", "table", rm.Table, "chain", rm.Chain)
			}
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
