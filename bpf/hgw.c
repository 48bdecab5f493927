// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* The hgw-ebpf fast path: two TC ingress programs that forward cross-node
 * pod traffic the way a flannel host-gw node's kernel routes would, without
 * the bridge, the FIB walk and netfilter.
 *
 *   from_pods      on cni0 ingress: our pod -> a peer's pod (LPM hit)
 *                  -> bpf_redirect_neigh(underlay, peer host IP)
 *                  also on each known pod's host-side veth ingress
 *   from_underlay  on eth0 ingress: a peer's pod -> our pod
 *                  -> known pod (endpoints map): bpf_redirect_peer(its veth)
 *                  -> else bpf_redirect_neigh(cni0)
 *
 * A packet may take the fast path only when both ends of its flow are pods
 * behind a fast path (a local pod, and a pod in a peer's subnet), so that
 * both directions of a flow take the same path at each node. Whatever is not
 * plainly forwardable returns TC_ACT_UNSPEC (TCX_NEXT) untouched: later tcx
 * programs and classic tc filters still run, then the kernel routes (still
 * installed) handle it, ICMP errors included.
 *
 * Needs kernel >= 5.12 (bpf_check_mtu; bpf_redirect_neigh/peer are 5.10).
 * The conntrack checks need more (see the load-time switches below); where
 * they cannot run, the programs redirect less, never more. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "hgw.h"

#define AF_INET 2
#define IPPROTO_ICMP 1
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define TCP_FLAGS_OFF 13 /* the byte of a TCP header with SYN and ACK */
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_ACK 0x10
#define ICMP_ECHOREPLY 0
#define ICMP_DEST_UNREACH 3
#define ICMP_ECHO 8
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12
#define ICMP_HDR_LEN 8
#define IP_MF 0x2000
#define IP_OFFSET 0x1fff

char __license[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct route_key);
	__type(value, struct route_value);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} routes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct node_config);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct counter);
	__uint(max_entries, PROG_MAX * REASON_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} stats SEC(".maps");

/* Local pods, written by the hgw-cni plugin and the agent. A missing entry
 * costs speed (the packet takes bpf_redirect_neigh(cni0) and the bridge)
 * and, at a pod's veth, the pod's packets: its source is not vouched for. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct endpoint_key);
	__type(value, struct endpoint_value);
	__uint(max_entries, 16384);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} endpoints SEC(".maps");

/* Make the enums part of the object's BTF so bpf2go -type can generate them
 * and the Go side can read their names: they are never used otherwise. */
struct hgw_enums {
	enum hgw_program program;
	enum hgw_reason reason;
	enum config_flag flag;
	enum endpoint_flag endpoint_flag;
};
const struct hgw_enums *unused_enums __attribute__((unused));

/* Load-time switches: the loader (pkg/datapath) sets them from its probe of
 * the running kernel, and tests clear them to run the fallback paths. They
 * default to off, so an object loaded without a probe fails closed. */
volatile const __u8 have_ct_lookup; /* bpf_skb_ct_lookup: 5.18, with nf_conntrack */
volatile const __u8 have_kern_ctx;  /* bpf_cast_to_kern_ctx: 6.2 */
volatile const __u8 tcx_attach;     /* attached with tcx (6.6): classic tc runs after us */

/* Conntrack kfuncs. __weak: the object still loads where they are missing,
 * and bpf_ksym_exists() is then false. */
struct nf_conn {
	unsigned long status;
} __attribute__((preserve_access_index));

struct bpf_ct_opts___hgw {
	__s32 netns_id;
	__s32 error;
	__u8 l4proto;
	__u8 dir;
	__u8 reserved[2];
};

#define CT_OPTS_SIZE 12 /* the original layout, accepted by every kernel */
#define IPS_CONFIRMED (1 << 3)
#define IPS_SRC_NAT (1 << 4)
#define IPS_DST_NAT (1 << 5)
#define NFCT_PTRMASK (~7UL)

/* The few kernel structures read through bpf_cast_to_kern_ctx (CO-RE: the
 * offsets come from the running kernel's BTF). */
struct bpf_mprog_bundle___hgw {
	__u32 count;
} __attribute__((preserve_access_index));

struct bpf_mprog_entry___hgw {
	struct bpf_mprog_bundle___hgw *parent;
} __attribute__((preserve_access_index));

/* tcx keeps a device's classic tc (clsact/ingress qdisc) filter list here:
 * miniq is set while at least one classic filter is on the device. */
struct tcx_entry___hgw {
	void *miniq;
	struct bpf_mprog_bundle___hgw bundle;
} __attribute__((preserve_access_index));

struct net_device___hgw {
	struct bpf_mprog_entry___hgw *tcx_ingress;
} __attribute__((preserve_access_index));

struct sk_buff {
	struct net_device___hgw *dev;
	unsigned long _nfct;
} __attribute__((preserve_access_index));

extern void *bpf_cast_to_kern_ctx(void *obj) __ksym __weak;

extern struct nf_conn *bpf_skb_ct_lookup(struct __sk_buff *skb, struct bpf_sock_tuple *tuple, __u32 tuple__sz,
					 struct bpf_ct_opts___hgw *opts, __u32 opts__sz) __ksym __weak;
extern void bpf_ct_release(struct nf_conn *ct) __ksym __weak;

#ifndef bpf_ksym_exists
#define bpf_ksym_exists(sym) (!!(sym))
#endif

/* A pseudo-reason: the packet may be forwarded. */
#define FORWARD REASON_MAX

static __always_inline void count(struct __sk_buff *skb, __u32 prog, __u32 reason)
{
	__u32 idx = prog * REASON_MAX + reason;
	struct counter *c = bpf_map_lookup_elem(&stats, &idx);

	if (c) {
		c->packets++;
		c->bytes += skb->len;
	}
}

/* Leave the packet to whatever comes next: TC_ACT_UNSPEC is TCX_NEXT, so
 * later tcx programs and classic tc filters run, then the kernel's path
 * (TC_ACT_OK would end classification for all of them). */
static __always_inline int pass(struct __sk_buff *skb, __u32 prog, __u32 reason)
{
	count(skb, prog, reason);
	return TC_ACT_UNSPEC;
}

static __always_inline int mac_equal(const __u8 *a, const __u8 *b)
{
	return *(const __u32 *)a == *(const __u32 *)b && *(const __u16 *)(a + 4) == *(const __u16 *)(b + 4);
}

static __always_inline const struct node_config *load_config(void)
{
	__u32 zero = 0;
	const struct node_config *cfg = bpf_map_lookup_elem(&config, &zero);

	if (!cfg || cfg->pod_prefixlen == 0 || cfg->pod_prefixlen > 32)
		return NULL;
	return cfg;
}

static __always_inline int ct_lookup_usable(void)
{
	return have_ct_lookup && bpf_ksym_exists(bpf_skb_ct_lookup);
}

static __always_inline int kern_ctx_usable(void)
{
	return have_kern_ctx && bpf_ksym_exists(bpf_cast_to_kern_ctx);
}

/* What every packet meets first: no config, the agent's wish to step aside,
 * conntrack that cannot be checked, or (tcx) classic tc filters on this
 * device that must see the packet before we may take it. */
static __always_inline __u32 gate(struct __sk_buff *skb, const struct node_config *cfg)
{
	struct bpf_mprog_bundle___hgw *bundle;
	struct net_device___hgw *dev;
	struct sk_buff *kskb;
	void *miniq = NULL;

	if (!cfg)
		return REASON_NO_CONFIG;
	if (cfg->flags & CONFIG_F_STEP_ASIDE)
		return REASON_STEP_ASIDE;
	/* Fail closed: a NATed flow redirected without its conntrack entry
	 * breaks, so without a way to check there is no fast path. */
	if (!(cfg->flags & CONFIG_F_IGNORE_CONNTRACK) && !((cfg->flags & CONFIG_F_CONNTRACK) && ct_lookup_usable()))
		return REASON_NO_CONNTRACK;
	/* tcx programs run before the classic clsact/ingress filters of the
	 * same device, such as the CNI bandwidth plugin's shaping on a pod's
	 * veth. A redirect would skip them, so while any is there the packet
	 * is theirs (tc mode orders by filter priority instead: ours is last).
	 * tcx (6.6) implies bpf_cast_to_kern_ctx (6.2). */
	if (!tcx_attach || !kern_ctx_usable() || !bpf_core_field_exists(struct net_device___hgw, tcx_ingress))
		return FORWARD;
	/* Plain loads through the kernel's pointers (the verifier makes them
	 * fault-safe); only the container_of step needs a helper. */
	kskb = bpf_cast_to_kern_ctx(skb);
	dev = kskb->dev;
	if (!dev || !dev->tcx_ingress)
		return FORWARD;
	bundle = dev->tcx_ingress->parent;
	if (!bundle)
		return FORWARD;
	/* container_of(bundle, struct tcx_entry, bundle)->miniq */
	if (bpf_probe_read_kernel(&miniq, sizeof(miniq),
				  (void *)((unsigned long)bundle - bpf_core_field_offset(struct tcx_entry___hgw, bundle) +
					   bpf_core_field_offset(struct tcx_entry___hgw, miniq))))
		return REASON_TC_FILTERS; /* unreadable: assume they are there */
	return miniq ? REASON_TC_FILTERS : FORWARD;
}

/* Checks that the frame is a plain IPv4 packet addressed to this host at L2
 * that a router may forward without looking inside. At a pod's veth, the
 * frames a pod sends to its gateway carry the bridge's MAC, not the veth's,
 * so the kernel marks them PACKET_OTHERHOST: from_pods checks their MAC
 * once it knows the pod. Returns FORWARD and sets *ipp, or the reason to
 * leave the packet to the kernel. */
static __always_inline __u32 parse_ipv4(struct __sk_buff *skb, struct iphdr **ipp, int at_veth)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	__u32 tot_len;

	if ((void *)(eth + 1) > data_end)
		return REASON_MALFORMED;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return REASON_NOT_IPV4;
	/* The receiving device moved an 802.1Q tag into the skb's metadata
	 * before TC ingress: the frame belongs to a VLAN device, which the
	 * kernel hands it to (or drops), never to this device's routing. */
	if (skb->vlan_present)
		return REASON_NOT_IPV4;
	/* Broadcast, multicast and frames for another MAC are not ours to route. */
	if (skb->pkt_type != PACKET_HOST && !(at_veth && skb->pkt_type == PACKET_OTHERHOST))
		return REASON_NOT_FOR_HOST;

	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return REASON_MALFORMED;
	if (ip->version != 4 || ip->ihl < 5)
		return REASON_MALFORMED;
	/* Options (record route, source route, ...) need the kernel's router. */
	if (ip->ihl != 5)
		return REASON_IP_OPTIONS;
	tot_len = bpf_ntohs(ip->tot_len);
	/* A header that claims more bytes than the frame holds is corrupt. A
	 * GSO packet may legitimately say 0 (BIG TCP beyond 64 KB). */
	if (tot_len < sizeof(*ip) || tot_len > skb->len - sizeof(*eth)) {
		if (!(tot_len == 0 && skb->gso_size))
			return REASON_MALFORMED;
	}
	/* Fragments go to the kernel, which reassembles them for conntrack:
	 * the fast path never sees a flow half-fragmented. */
	if (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET))
		return REASON_FRAGMENT;

	*ipp = ip;
	return FORWARD;
}

/* Sources no router forwards (RFC 1812 5.3.7; the kernel's martian check):
 * 0/8, 127/8, 224/4 multicast, 240/4 and the broadcast address. */
static __always_inline int martian(__be32 addr)
{
	__u32 first = bpf_ntohl(addr) >> 24;

	return first == 0 || first == 127 || first >= 224;
}

/* The addresses of a subnet that belong to its node, not to a pod: the
 * network, the first (cni0's, flannel's gateway) and the broadcast address.
 * /31 and /32 have none. */
static __always_inline int node_addr(__u32 prefixlen, __be32 addr)
{
	__u32 hostmask = prefixlen ? ~0U >> prefixlen : ~0U;
	__u32 host = bpf_ntohl(addr) & hostmask;

	if (prefixlen > 30)
		return 0;
	return host == 0 || host == 1 || host == hostmask;
}

static __always_inline int in_pod_subnet(const struct node_config *cfg, __be32 addr)
{
	__be32 net = *(const __be32 *)cfg->pod_subnet;
	__be32 mask = bpf_htonl(~0U << (32 - cfg->pod_prefixlen));

	return (addr & mask) == net;
}

/* A pod of this node: inside its pod subnet, and neither the gateway nor
 * the subnet's network or broadcast address. */
static __always_inline int local_pod_addr(const struct node_config *cfg, __be32 addr)
{
	return in_pod_subnet(cfg, addr) && addr != *(const __be32 *)cfg->gateway && !node_addr(cfg->pod_prefixlen, addr);
}

static __always_inline struct route_value *lookup_route(__be32 addr)
{
	struct route_key key = {.prefixlen = 32};

	__builtin_memcpy(key.addr, &addr, sizeof(key.addr));
	return bpf_map_lookup_elem(&routes, &key);
}

/* The IP length of one segment of a GSO packet: IP and L4 headers plus
 * gso_size. An unreadable TCP header counts as too big. */
static __always_inline __u32 gso_segment_len(struct __sk_buff *skb, struct iphdr *ip)
{
	void *data_end = (void *)(long)skb->data_end;
	__u8 *l4 = (void *)(ip + 1);
	__u32 hdrs = sizeof(*ip);

	if (ip->protocol == IPPROTO_TCP) {
		if ((void *)(l4 + 13) > data_end)
			return 0xffffffff;
		hdrs += (l4[12] >> 4) * 4;
	} else if (ip->protocol == IPPROTO_UDP) {
		hdrs += 8;
	}
	return hdrs + skb->gso_size;
}

/* Router duties before forwarding out of ifindex. Returns FORWARD when the
 * packet may go, having decremented its TTL, else the reason to leave it,
 * untouched, to the kernel. */
static __always_inline __u32 route_checks(struct __sk_buff *skb, struct iphdr *ip, __u32 ifindex)
{
	__u32 mtu = 0;
	__u32 check;

	/* TTL 1 would expire here: the kernel sends ICMP time exceeded. */
	if (ip->ttl <= 1)
		return REASON_TTL_EXPIRED;
	/* GSO-aware: a GRO'd 64 KB segment is checked per segment, so one flow
	 * never flips between the fast and the slow path by packet size. Too
	 * big, or no such device: the kernel fragments or says frag-needed. */
	if (bpf_check_mtu(skb, ifindex, &mtu, 0, 0) != 0)
		return REASON_TOO_BIG;
	/* bpf_check_mtu passes any GSO packet without BPF_MTU_CHK_SEGS, and
	 * that flag trusts a transport header TC ingress may not have set.
	 * Check one segment, headers + gso_size, as ip_exceeds_mtu would. */
	if (skb->gso_size && gso_segment_len(skb, ip) > mtu)
		return REASON_TOO_BIG;

	/* Incremental checksum update for TTL-1, as the kernel's own
	 * ip_decrease_ttl (RFC 1141): the TTL is the high byte of its word. */
	check = ip->check;
	check += bpf_htons(0x0100);
	ip->check = (__u16)(check + (check >= 0xffff));
	ip->ttl--;
	return FORWARD;
}

/* With br_netfilter (bridge-nf-call-iptables=1, as every kube-proxy node
 * has), a pod's packet meets iptables PREROUTING at the bridge port, before
 * cni0's ingress: kube-proxy's DNAT is already applied and its conntrack
 * entry is attached to the packet, not yet confirmed, so the table lookup
 * cannot see it. Such a packet must go on through the kernel, which confirms
 * the entry and un-NATs the replies. An unconfirmed entry without NAT is a
 * new flow: it may take the fast path (and conntrack forgets it). Only cni0
 * needs this: at eth0 and at a pod's veth no netfilter hook has run yet
 * (crossing a veth from another namespace drops any entry). */
static __always_inline __u32 attached_ct_check(struct __sk_buff *skb)
{
	struct sk_buff *kskb;
	struct nf_conn *ct;
	unsigned long status = 0;

	/* Unreadable entry: the DNAT of a ClusterIP packet would be lost. */
	if (!kern_ctx_usable())
		return REASON_CT_UNREADABLE;
	kskb = bpf_cast_to_kern_ctx(skb);
	ct = (struct nf_conn *)(kskb->_nfct & NFCT_PTRMASK);
	if (!ct)
		return FORWARD;
	if (bpf_probe_read_kernel(&status, sizeof(status), &ct->status))
		return REASON_CT_TRACKED; /* unreadable: be safe, use the kernel */
	if (status & (IPS_SRC_NAT | IPS_DST_NAT))
		return REASON_CT_NAT;
	if (status & IPS_CONFIRMED)
		return REASON_CT_TRACKED;
	return FORWARD;
}

/* Asks the conntrack table about a TCP or UDP packet: its addresses and the
 * first 4 bytes of its L4 header (the ports). gate() has made sure that,
 * unless the check is ignored, the lookup is usable. */
static __always_inline __u32 ct_lookup(struct __sk_buff *skb, __be32 saddr, __be32 daddr, __u8 proto, const __u8 *l4)
{
	struct bpf_ct_opts___hgw opts = {.netns_id = BPF_F_CURRENT_NETNS, .l4proto = proto};
	struct bpf_sock_tuple tuple = {};
	unsigned long status;
	struct nf_conn *ct;

	if (!ct_lookup_usable())
		return REASON_NO_CONNTRACK; /* gate() ruled this out; the verifier needs it said here */
	tuple.ipv4.saddr = saddr;
	tuple.ipv4.daddr = daddr;
	__builtin_memcpy(&tuple.ipv4.sport, l4, 2);
	__builtin_memcpy(&tuple.ipv4.dport, l4 + 2, 2);
	ct = bpf_skb_ct_lookup(skb, &tuple, sizeof(tuple.ipv4), &opts, CT_OPTS_SIZE);
	if (!ct)
		return FORWARD;
	status = ct->status;
	bpf_ct_release(ct);
	return (status & (IPS_SRC_NAT | IPS_DST_NAT)) ? REASON_CT_NAT : REASON_CT_TRACKED;
}

/* An ICMP error: destination unreachable (frag-needed, port unreachable),
 * time exceeded, parameter problem. */
static __always_inline int icmp_error_msg(struct __sk_buff *skb, struct iphdr *ip)
{
	__u8 *type = (void *)(ip + 1);

	if (ip->protocol != IPPROTO_ICMP || (void *)(type + 1) > (void *)(long)skb->data_end)
		return 0;
	return *type == ICMP_DEST_UNREACH || *type == ICMP_TIME_EXCEEDED || *type == ICMP_PARAMETERPROB;
}

/* An ICMP error about a flow of two pods that the fast path carries here
 * (conntrack does not know it) goes the flow's way. Through the kernel,
 * conntrack would meet an error about a flow it has never seen, and
 * kube-proxy's INVALID rule would drop it: port unreachable, frag-needed
 * and time exceeded lost. An error about a flow the kernel carries (which
 * may need un-NAT), or quoting what cannot be told, stays the kernel's. The
 * quoted packet is one the error's receiver sent: its source is the
 * error's destination. */
static __always_inline __u32 icmp_error_check(struct __sk_buff *skb, const struct node_config *cfg, struct iphdr *ip, int from_underlay)
{
	struct route_value *rt;
	struct {
		struct iphdr ip;
		__u8 l4[4];
	} q;

	/* Read, not pointed at: the quote of an error the local stack built
	 * may lie outside the skb's linear data. parse_ipv4 checked ihl == 5. */
	if (bpf_skb_load_bytes(skb, sizeof(struct ethhdr) + sizeof(*ip) + ICMP_HDR_LEN, &q, sizeof(q)))
		return REASON_ICMP_ERROR;
	if (q.ip.version != 4 || q.ip.ihl != 5 || q.ip.saddr != ip->daddr)
		return REASON_ICMP_ERROR;
	/* The quoted flow's other end: a peer's pod when the error comes in
	 * (from that pod, or from a router on the way); the pod that sends
	 * the error when it goes out. */
	if (from_underlay) {
		rt = lookup_route(q.ip.daddr);
		if (!rt || node_addr(rt->prefixlen, q.ip.daddr))
			return REASON_ICMP_ERROR;
	} else if (q.ip.daddr != ip->saddr) {
		return REASON_ICMP_ERROR;
	}
	if (cfg->flags & CONFIG_F_IGNORE_CONNTRACK)
		return FORWARD;
	if (q.ip.protocol == IPPROTO_ICMP)
		return (q.l4[0] == ICMP_ECHO || q.l4[0] == ICMP_ECHOREPLY) ? FORWARD : REASON_ICMP_ERROR;
	if (q.ip.protocol != IPPROTO_TCP && q.ip.protocol != IPPROTO_UDP)
		return REASON_ICMP_ERROR;
	return ct_lookup(skb, q.ip.saddr, q.ip.daddr, q.ip.protocol, q.l4) == FORWARD ? FORWARD : REASON_ICMP_ERROR;
}

/* Whether a packet may start a flow: a TCP SYN; any UDP packet, since UDP
 * does not say. l4 holds the first TCP_FLAGS_OFF + 1 bytes of the L4
 * header. */
static __always_inline int opens_flow(__u8 proto, const __u8 *l4)
{
	if (proto == IPPROTO_UDP)
		return 1;
	return (l4[TCP_FLAGS_OFF] & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
}

/* One path per flow: a flow the node's conntrack already tracks stays with
 * the kernel for its whole life. That keeps kube-proxy's NAT working (a reply
 * of a DNATed connection must be un-NATed by the kernel) and keeps conntrack
 * from seeing half a TCP conversation, which kube-proxy drops as INVALID.
 * Flows conntrack does not know are fast from their first packet, and stay
 * unknown to it because the fast path skips netfilter; so do their ICMP
 * errors. */
static __always_inline __u32 ct_check(struct __sk_buff *skb, const struct node_config *cfg, struct iphdr *ip, int at_bridge,
				      int from_underlay)
{
	void *data_end = (void *)(long)skb->data_end;
	int icmp_err = 0;
	__u8 *icmp, *ports, l4[TCP_FLAGS_OFF + 1], rev[4];
	__u32 reason;

	if (ip->protocol == IPPROTO_ICMP) {
		icmp = (void *)(ip + 1);
		if ((void *)(icmp + 1) > data_end)
			return REASON_MALFORMED;
		icmp_err = icmp_error_msg(skb, ip);
		/* Redirects, timestamps, router adverts: the kernel's. */
		if (!icmp_err && *icmp != ICMP_ECHO && *icmp != ICMP_ECHOREPLY)
			return REASON_ICMP_ERROR;
	}
	if (!(cfg->flags & CONFIG_F_IGNORE_CONNTRACK) && at_bridge) {
		reason = attached_ct_check(skb);
		if (reason != FORWARD)
			return reason;
	}
	if (icmp_err)
		return icmp_error_check(skb, cfg, ip, from_underlay);
	if (cfg->flags & CONFIG_F_IGNORE_CONNTRACK)
		return FORWARD;
	/* The lookup keys TCP and UDP only. ICMP echo has no NAT to undo on a
	 * pod-to-pod path; anything else (SCTP services, GRE, ...) might. */
	if (ip->protocol == IPPROTO_ICMP)
		return FORWARD;
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
		return REASON_CT_OTHER_PROTO;
	/* The ports (and TCP's flags), from the linear data or, where the
	 * sender's stack left them outside it, copied: a readable packet is
	 * never malformed. */
	ports = (void *)(ip + 1);
	if (ip->protocol == IPPROTO_TCP) {
		if ((void *)(ports + sizeof(l4)) <= data_end)
			__builtin_memcpy(l4, ports, sizeof(l4));
		else if (bpf_skb_load_bytes(skb, sizeof(struct ethhdr) + sizeof(*ip), l4, sizeof(l4)))
			return REASON_MALFORMED;
	} else {
		if ((void *)(ports + 4) <= data_end)
			__builtin_memcpy(l4, ports, 4);
		else if (bpf_skb_load_bytes(skb, sizeof(struct ethhdr) + sizeof(*ip), l4, 4))
			return REASON_MALFORMED;
	}
	reason = ct_lookup(skb, ip->saddr, ip->daddr, ip->protocol, l4);
	if (reason != FORWARD || !opens_flow(ip->protocol, l4))
		return reason;
	/* A new flow may have the reply of a flow conntrack tracks: a pod's
	 * kernel picks source ports per destination, so a direct connection
	 * to a backend can reuse the port of an earlier ClusterIP connection
	 * that was DNATed to that backend. Its replies would be taken for the
	 * old flow's and un-NATed. Through the kernel, NAT gives it other
	 * ports. */
	rev[0] = l4[2];
	rev[1] = l4[3];
	rev[2] = l4[0];
	rev[3] = l4[1];
	return ct_lookup(skb, ip->daddr, ip->saddr, ip->protocol, rev) == FORWARD ? FORWARD : REASON_CT_CLASH;
}

/* The source of a packet from_pods sees. At a pod's veth it must be that
 * pod's own address (its endpoint entry names this veth): a pod cannot send
 * as another. At cni0 it must be a pod address of this node. */
static __always_inline __u32 pod_source(struct __sk_buff *skb, const struct node_config *cfg, struct iphdr *ip, int at_veth)
{
	struct ethhdr *eth = (void *)(long)skb->data;
	struct endpoint_value *ep;
	struct endpoint_key key;

	if (martian(ip->saddr))
		return REASON_MARTIAN_SRC;
	if (!at_veth)
		return local_pod_addr(cfg, ip->saddr) ? FORWARD : REASON_SPOOFED_SRC;
	__builtin_memcpy(key.addr, &ip->saddr, sizeof(key.addr));
	ep = bpf_map_lookup_elem(&endpoints, &key);
	if (!ep || ep->ifindex != skb->ifindex)
		return REASON_SPOOFED_SRC;
	/* For another MAC on the bridge (a pod on this node): switching. */
	if (skb->pkt_type == PACKET_OTHERHOST && !mac_equal(eth->h_dest, ep->gateway_mac))
		return REASON_NOT_FOR_HOST;
	return FORWARD;
}

SEC("tc")
int from_pods(struct __sk_buff *skb)
{
	const struct node_config *cfg = load_config();
	struct route_value *rt;
	struct bpf_redir_neigh nh = {};
	struct iphdr *ip = NULL;
	__u32 reason;
	int at_veth;

	reason = gate(skb, cfg);
	if (reason != FORWARD || !cfg)
		return pass(skb, PROG_FROM_PODS, reason);
	/* Attached to cni0 and to known pods' host-side veths. */
	at_veth = skb->ifindex != cfg->bridge_ifindex;
	reason = parse_ipv4(skb, &ip, at_veth);
	if (reason != FORWARD || !ip)
		return pass(skb, PROG_FROM_PODS, reason);
	reason = pod_source(skb, cfg, ip, at_veth);
	if (reason != FORWARD)
		return pass(skb, PROG_FROM_PODS, reason);
	/* Pod to pod on this node, or to the gateway: the bridge's business. */
	if (in_pod_subnet(cfg, ip->daddr))
		return pass(skb, PROG_FROM_PODS, REASON_LOCAL_DEST);
	/* The other end must be a pod behind a peer's fast path too, or the
	 * replies would come back through the kernel (see from_underlay). */
	rt = lookup_route(ip->daddr);
	if (!rt)
		return pass(skb, PROG_FROM_PODS, REASON_NO_ROUTE);
	if (node_addr(rt->prefixlen, ip->daddr))
		return pass(skb, PROG_FROM_PODS, REASON_DST_NOT_POD);

	reason = ct_check(skb, cfg, ip, !at_veth, 0);
	if (reason != FORWARD)
		return pass(skb, PROG_FROM_PODS, reason);
	reason = route_checks(skb, ip, rt->ifindex);
	if (reason != FORWARD)
		return pass(skb, PROG_FROM_PODS, reason);

	nh.nh_family = AF_INET;
	__builtin_memcpy(&nh.ipv4_nh, rt->nexthop, sizeof(nh.ipv4_nh));
	count(skb, PROG_FROM_PODS, REASON_REDIRECT);
	return bpf_redirect_neigh(rt->ifindex, &nh, sizeof(nh), 0);
}

SEC("tc")
int from_underlay(struct __sk_buff *skb)
{
	const struct node_config *cfg = load_config();
	struct endpoint_value *ep;
	struct endpoint_key ep_key;
	struct route_value *rt;
	struct iphdr *ip = NULL;
	struct ethhdr *eth;
	__u32 reason;

	reason = gate(skb, cfg);
	if (reason != FORWARD || !cfg)
		return pass(skb, PROG_FROM_UNDERLAY, reason);
	reason = parse_ipv4(skb, &ip, 0);
	if (reason != FORWARD || !ip)
		return pass(skb, PROG_FROM_UNDERLAY, reason);
	if (martian(ip->saddr))
		return pass(skb, PROG_FROM_UNDERLAY, REASON_MARTIAN_SRC);
	/* Not for our pods (the node itself, another subnet): the kernel's. */
	if (!in_pod_subnet(cfg, ip->daddr))
		return pass(skb, PROG_FROM_UNDERLAY, REASON_NO_ROUTE);
	if (!local_pod_addr(cfg, ip->daddr))
		return pass(skb, PROG_FROM_UNDERLAY, REASON_LOCAL_DEST);
	/* One path per flow, in both directions: the replies take the fast
	 * path only toward a pod in a peer's subnet (from_pods), so only such
	 * a source may come in on it. Node IPs, external clients and SNATed
	 * service traffic go through the kernel both ways, and conntrack sees
	 * whole flows. An ICMP error (from a router on the way, say) goes with
	 * the flow it quotes: ct_check looks at that. */
	if (in_pod_subnet(cfg, ip->saddr))
		return pass(skb, PROG_FROM_UNDERLAY, REASON_SRC_NOT_POD);
	rt = lookup_route(ip->saddr);
	if ((!rt || node_addr(rt->prefixlen, ip->saddr)) && !icmp_error_msg(skb, ip))
		return pass(skb, PROG_FROM_UNDERLAY, REASON_SRC_NOT_POD);

	reason = ct_check(skb, cfg, ip, 0, 1);
	if (reason != FORWARD)
		return pass(skb, PROG_FROM_UNDERLAY, reason);
	/* Looked up before route_checks rewrites the header. */
	__builtin_memcpy(ep_key.addr, &ip->daddr, sizeof(ep_key.addr));
	ep = bpf_map_lookup_elem(&endpoints, &ep_key);
	/* A pod the map does not know sends its replies through cni0, where
	 * they can be fast only if the attached entry can be read. */
	if (!ep && !(cfg->flags & CONFIG_F_IGNORE_CONNTRACK) && !kern_ctx_usable())
		return pass(skb, PROG_FROM_UNDERLAY, REASON_CT_UNREADABLE);
	/* The MTU that counts is the bridge's, as on the kernel's path: the
	 * pods' veths are made with it. */
	reason = route_checks(skb, ip, cfg->bridge_ifindex);
	if (reason != FORWARD)
		return pass(skb, PROG_FROM_UNDERLAY, reason);

	/* A known pod: be its gateway at L2 too and hand the packet straight to
	 * its namespace, skipping the bridge and the veth's transmit path,
	 * unless a qdisc there shapes what the pod receives. */
	eth = (void *)(long)skb->data;
	if (ep && !(ep->flags & ENDPOINT_F_SHAPED) && (void *)(eth + 1) <= (void *)(long)skb->data_end) {
		__builtin_memcpy(eth->h_dest, ep->pod_mac, ETH_ALEN);
		__builtin_memcpy(eth->h_source, ep->gateway_mac, ETH_ALEN);
		count(skb, PROG_FROM_UNDERLAY, REASON_REDIRECT_PEER);
		return bpf_redirect_peer(ep->ifindex, 0);
	}
	count(skb, PROG_FROM_UNDERLAY, REASON_REDIRECT);
	return bpf_redirect_neigh(cfg->bridge_ifindex, NULL, 0, 0);
}
