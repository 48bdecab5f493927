package datapath

import (
	"fmt"
	"strings"
)

// reasonText says what each counter reason means, in the words `hgw-ebpf
// stats --help` prints. The reasons themselves are the enum hgw_reason of
// headers/hgw.h; TestEveryReasonIsExplained keeps the two in step.
var reasonText = map[string]string{
	"redirect":       "fast path: bpf_redirect_neigh to the peer node, or into cni0",
	"redirect_peer":  "fast path: straight into a known pod (bpf_redirect_peer)",
	"not_ip":         "not an IP packet of this device: ARP, a frame of a VLAN device, ...",
	"malformed":      "a truncated or inconsistent header",
	"ip_options":     "IP options: the kernel's router handles them",
	"fragment":       "a fragment: the kernel reassembles it for conntrack",
	"not_for_host":   "L2 broadcast or multicast, or for another MAC",
	"local_dest":     "for this node itself, or a pod on it (the bridge's business); IPv6: link-local and multicast destinations",
	"no_route":       "no peer's pod subnet holds the destination (node IPs, outside the cluster)",
	"ttl_expired":    "TTL (IPv6: hop limit) <= 1: the kernel sends time exceeded",
	"too_big":        "over the egress MTU: the kernel fragments or sends frag-needed (IPv6: packet too big)",
	"no_config":      "the agent has not written the node config yet",
	"ct_nat":         "conntrack NATed the flow: the kernel un-NATs it",
	"ct_tracked":     "conntrack tracks the flow: it stays on the kernel path",
	"icmp_error":     "an ICMP error about a flow the kernel carries (it may need un-NAT) or one that cannot be told; other ICMP but echo (IPv6: neighbour and router discovery, MLD too)",
	"step_aside":     "the agent wants no fast path now (a NetworkPolicy engine is present, ...)",
	"no_conntrack":   "conntrack cannot be checked (kernel < 5.18, nf_conntrack not loaded) and it is not ignored: nothing is redirected",
	"ct_unreadable":  "the conntrack entry br_netfilter attaches at cni0 cannot be read (kernel < 6.2)",
	"ct_other_proto": "not TCP, UDP or ICMP echo: conntrack's lookup cannot key it",
	"ct_clash":       "a new flow whose replies a tracked (NATed) flow has as its own: the kernel's NAT gives it other ports",
	"martian_src":    "source 0/8, 127/8, multicast or 240/4; IPv6: ::, ::1, multicast, link-local or IPv4-mapped",
	"spoofed_src":    "from a pod, not that pod's address (at cni0: not a pod of this node)",
	"src_not_pod":    "from the underlay, source not a pod of a peer (node IPs, outside clients): the kernel both ways",
	"dst_not_pod":    "to a peer subnet's network, gateway or broadcast address (IPv6: subnet-router anycast or gateway): the peer node itself",
	"tc_filters":     "tcx: classic tc filters on the device (the CNI bandwidth plugin's) get the packet",
	"no_ipv6_config": "IPv6, and the agent wrote no IPv6 pod subnet for this node: the kernel routes it",
	"ext_header":     "IPv6 extension headers (hop-by-hop, routing, ESP, ...): the kernel walks them",
}

// ReasonHelp lists every counter reason, one per line, with its meaning, in
// the order of the enum.
func ReasonHelp() (string, error) {
	names, err := loadCounterNames()
	if err != nil {
		return "", err
	}
	var b strings.Builder
	for _, r := range names.reasons {
		fmt.Fprintf(&b, "  %-15s %s\n", r, reasonText[r])
	}
	return b.String(), nil
}
