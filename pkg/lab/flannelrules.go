package lab

import (
	"fmt"
	"net/netip"
	"strings"
)

// IPTablesRule is one rule in a table, as `iptables-save` prints it
// (without the table): "-A CHAIN <match and target>".
type IPTablesRule struct {
	Table string
	Rule  string
}

// Chains flanneld owns, with the comments it puts on every rule.
const (
	FlannelMasqChain = "FLANNEL-POSTRTG"
	FlannelFwdChain  = "FLANNEL-FWD"
)

// FlannelRules are the iptables rules flanneld v0.28 keeps on a node, in
// its order: with ipMasq (`--ip-masq`), nat POSTROUTING jumps to
// FLANNEL-POSTRTG, which leaves kube-proxy's marked packets and traffic
// inside the cluster network alone and masquerades pod traffic leaving it;
// always (`--iptables-forward-rules`, on by default), filter FORWARD jumps
// to FLANNEL-FWD, which accepts the cluster network both ways. subnet is
// the node's pod subnet. The text is what `iptables-save` prints for them,
// so a node's rules can be counted line by line.
func FlannelRules(network, subnet netip.Prefix, ipMasq bool) []IPTablesRule {
	cluster, pod := network.Masked().String(), subnet.Masked().String()
	var rules []IPTablesRule
	if ipMasq {
		masq := func(spec string) IPTablesRule {
			return IPTablesRule{"nat", fmt.Sprintf(`-A %s %s`, FlannelMasqChain, spec)}
		}
		const c = `-m comment --comment "flanneld masq"`
		rules = append(rules,
			IPTablesRule{"nat", `-A POSTROUTING ` + c + ` -j ` + FlannelMasqChain},
			masq(`-m mark --mark 0x4000/0x4000 `+c+` -j RETURN`),
			masq(fmt.Sprintf(`-s %s -d %s %s -j RETURN`, pod, cluster, c)),
			masq(fmt.Sprintf(`-s %s -d %s %s -j RETURN`, cluster, pod, c)),
			masq(fmt.Sprintf(`! -s %s -d %s %s -j RETURN`, cluster, pod, c)),
			// flanneld adds --random-fully where iptables has it (>= 1.6.2, as here).
			masq(fmt.Sprintf(`-s %s ! -d 224.0.0.0/4 %s -j MASQUERADE --random-fully`, cluster, c)),
			masq(fmt.Sprintf(`! -s %s -d %s %s -j MASQUERADE --random-fully`, cluster, cluster, c)),
		)
	}
	const c = `-m comment --comment "flanneld forward"`
	return append(rules,
		IPTablesRule{"filter", `-A FORWARD ` + c + ` -j ` + FlannelFwdChain},
		IPTablesRule{"filter", fmt.Sprintf(`-A %s -s %s %s -j ACCEPT`, FlannelFwdChain, cluster, c)},
		IPTablesRule{"filter", fmt.Sprintf(`-A %s -d %s %s -j ACCEPT`, FlannelFwdChain, cluster, c)},
	)
}

// RestoreInput is the iptables-restore --noflush input that appends rules,
// creating (or emptying) the chains they are appended to unless builtin.
func RestoreInput(rules []IPTablesRule) string {
	var b strings.Builder
	for _, table := range []string{"nat", "filter"} {
		var decls, lines []string
		declared := map[string]bool{}
		for _, r := range rules {
			if r.Table != table {
				continue
			}
			if chain := strings.Fields(r.Rule)[1]; !declared[chain] && !builtinChains[chain] {
				declared[chain] = true
				decls = append(decls, fmt.Sprintf(":%s - [0:0]", chain))
			}
			lines = append(lines, r.Rule)
		}
		if len(lines) > 0 {
			fmt.Fprintf(&b, "*%s\n%s\nCOMMIT\n", table, strings.Join(append(decls, lines...), "\n"))
		}
	}
	return b.String()
}

var builtinChains = map[string]bool{"PREROUTING": true, "INPUT": true, "FORWARD": true, "OUTPUT": true, "POSTROUTING": true}

// CountRules counts how often each rule appears in `iptables-save` output
// (all tables): the check that a node holds exactly one copy of each.
func CountRules(save string, rules []IPTablesRule) map[IPTablesRule]int {
	table := ""
	lines := map[IPTablesRule]int{}
	for _, line := range strings.Split(save, "\n") {
		switch {
		case strings.HasPrefix(line, "*"):
			table = strings.TrimPrefix(line, "*")
		case strings.HasPrefix(line, "-A "):
			lines[IPTablesRule{table, line}]++
		}
	}
	out := make(map[IPTablesRule]int, len(rules))
	for _, r := range rules {
		out[r] = lines[r]
	}
	return out
}
