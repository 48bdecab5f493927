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
// so a node's rules can be counted line by line. It is written from
// flanneld's output, not built from internal/netfilter's rules: the tests hold
// the agents' rules (internal/netfilter's) against it, so it must not borrow
// them.
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

// asFlanneldLeftIt puts node k in the state flanneld leaves a node in when
// an operator stops it to move the node to hgw-ebpf: a subnet file for
// 10.244.k.0/24 (and fd00:10:244:k::/64 in a dual-stack lab), which the
// agent takes over, and flanneld's iptables rules for it.
func (l *Lab) asFlanneldLeftIt(n Node) error {
	subnet := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(n.Index), 0}), 24)
	env := subnetEnv(subnet, n.IP6 != "")
	env.IPMasq = l.cfg.IPMasq
	if err := writeSubnetEnv(n.SubnetFile, env); err != nil {
		return err
	}
	return LoadFlannelRules(n.Name, clusterNetwork, subnet, l.cfg.IPMasq)
}

// LoadFlannelRules writes flanneld's iptables rules for a node with this
// pod subnet into the node's namespace, as flanneld does at start.
func LoadFlannelRules(node string, network, subnet netip.Prefix, ipMasq bool) error {
	if out, err := iptablesRestore(node, RestoreInput(FlannelRules(network, subnet, ipMasq))); err != nil {
		return fmt.Errorf("load flanneld's rules into %s: %w: %s", node, err, out)
	}
	return nil
}

// FlannelRuleCopies counts, in a node, each rule flanneld (with --ip-masq
// when ipMasq) keeps for the node's subnet: one each on a node set up
// right, none after a cleanup.
func (s State) FlannelRuleCopies(node string, ipMasq bool) (map[IPTablesRule]int, error) {
	n, ok := s.Node(node)
	if !ok {
		return nil, fmt.Errorf("no node %s in lab %s", node, s.Prefix)
	}
	subnet, err := netip.ParsePrefix(n.Subnet)
	if err != nil {
		return nil, fmt.Errorf("node %s has no subnet yet", node)
	}
	save, err := iptablesSave(n.Name)
	if err != nil {
		return nil, err
	}
	return CountRules(save, FlannelRules(clusterNetwork, subnet, ipMasq)), nil
}
