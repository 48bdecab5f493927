// Package netfilter does flanneld's iptables duties on a node that runs
// hgw-ebpf instead of flanneld (the FORWARD accept chain, and the
// masquerade chain with --ip-masq), with flanneld's chain names, comments
// and rule order, so that a node handed over in either direction finds the
// other's rules and never ends with two copies or none. It also detects the
// NetworkPolicy engines whose rules the fast path would skip.
package netfilter

import (
	"net/netip"
)

// What flanneld v0.28 writes (pkg/trafficmngr/iptables): the names are the
// contract between flanneld and us, so they are spelled exactly alike.
const (
	MasqChain    = "FLANNEL-POSTRTG"
	ForwardChain = "FLANNEL-FWD"

	masqComment    = "flanneld masq"
	forwardComment = "flanneld forward"
	// kube-proxy marks what it masquerades itself; flanneld leaves it alone
	// to avoid a double NAT.
	kubeProxyMark = "0x4000/0x4000"
	multicast     = "224.0.0.0/4"
	multicast6    = "ff00::/8"
)

// ChainSet is one chain of ours, its rules in order, and the rule of a
// built-in chain that jumps to it.
type ChainSet struct {
	Table string     // "nat" or "filter"
	From  string     // the built-in chain holding the jump: POSTROUTING, FORWARD
	Chain string     // MasqChain or ForwardChain
	Jump  []string   // rulespec of the jump in From
	Rules [][]string // rulespecs in Chain, in order
}

// The chain sets without their rules: enough to find and remove them.
var (
	masqChains    = ChainSet{Table: "nat", From: "POSTROUTING", Chain: MasqChain}
	forwardChains = ChainSet{Table: "filter", From: "FORWARD", Chain: ForwardChain}
)

// MasqRules is flanneld's --ip-masq chain for a node with pod subnet
// subnet in the cluster network, in flanneld's order: kube-proxy's marked
// packets, traffic inside the cluster network and traffic arriving for our
// pods return untouched; pods talking outside the network (except to
// multicast) and hosts talking into it are masqueraded. randomFully adds
// --random-fully, as flanneld does where iptables has it. An IPv6 network
// and subnet give flanneld's ip6tables chain: the same rules, multicast
// being ff00::/8.
func MasqRules(network, subnet netip.Prefix, randomFully bool) ChainSet {
	cluster, pods := network.Masked().String(), subnet.Masked().String()
	mcast := multicast
	if network.Addr().Is6() {
		mcast = multicast6
	}
	c := []string{"-m", "comment", "--comment", masqComment}
	ret, masq := []string{"-j", "RETURN"}, []string{"-j", "MASQUERADE"}
	if randomFully {
		masq = append(masq, "--random-fully")
	}
	cs := masqChains
	cs.Jump = join(c, []string{"-j", MasqChain})
	cs.Rules = [][]string{
		join([]string{"-m", "mark", "--mark", kubeProxyMark}, c, ret),
		join([]string{"-s", pods, "-d", cluster}, c, ret),
		join([]string{"-s", cluster, "-d", pods}, c, ret),
		join([]string{"!", "-s", cluster, "-d", pods}, c, ret),
		join([]string{"-s", cluster, "!", "-d", mcast}, c, masq),
		join([]string{"!", "-s", cluster, "-d", cluster}, c, masq),
	}
	return cs
}

// ForwardRules is flanneld's FORWARD accept chain: the cluster network is
// forwarded both ways even where the FORWARD policy is DROP (Docker sets
// it), so whatever the fast path leaves to the kernel still gets through.
// The IPv6 network gives flanneld's ip6tables chain.
func ForwardRules(network netip.Prefix) ChainSet {
	cluster := network.Masked().String()
	c := []string{"-m", "comment", "--comment", forwardComment}
	cs := forwardChains
	cs.Jump = join(c, []string{"-j", ForwardChain})
	cs.Rules = [][]string{
		join([]string{"-s", cluster}, c, []string{"-j", "ACCEPT"}),
		join([]string{"-d", cluster}, c, []string{"-j", "ACCEPT"}),
	}
	return cs
}

// join concatenates rulespec parts into a new slice.
func join(parts ...[]string) []string {
	var r []string
	for _, p := range parts {
		r = append(r, p...)
	}
	return r
}
