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
 * Both programs do this for IPv4 (routes map) and for IPv6 (routes6 map,
 * once the agent wrote the node's IPv6 pod subnet), with the same rules:
 * the families differ only in how a header is read and what a router does
 * to it (TTL and checksum; hop limit).
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
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "hgw.h"

#define AF_INET 2
#define AF_INET6 10
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
/* IPv6 next headers that are extension headers (IANA's list; in6.h has
 * the others), and the ICMPv6 types the programs tell apart. */
#define NEXTHDR_ESP 50
#define NEXTHDR_AUTH 51
#define NEXTHDR_HIP 139
#define NEXTHDR_SHIM6 140
#define NEXTHDR_EXP1 253
#define NEXTHDR_EXP2 254
#define ICMPV6_DEST_UNREACH 1
#define ICMPV6_PKT_TOOBIG 2
#define ICMPV6_TIME_EXCEED 3
#define ICMPV6_PARAMPROB 4
#define ICMPV6_ECHO_REQUEST 128
#define ICMPV6_ECHO_REPLY 129

char __license[] SEC("license") = "Dual BSD/GPL";

/* The peers' pod subnets, one table a family, alike but for the address
 * size. */
#define ROUTE_MAP(key_type, value_type)               \
	struct {                                      \
		__uint(type, BPF_MAP_TYPE_LPM_TRIE);  \
		__type(key, key_type);                \
		__type(value, value_type);            \
		__uint(max_entries, 65536);           \
		__uint(map_flags, BPF_F_NO_PREALLOC); \
		__uint(pinning, LIBBPF_PIN_BY_NAME);  \
	}

ROUTE_MAP(struct route_key, struct route_value) routes SEC(".maps");
ROUTE_MAP(struct route6_key, struct route6_value) routes6 SEC(".maps");

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
	__uint(max_entries, FAMILY_MAX * PROG_MAX * REASON_MAX);
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
	enum hgw_family family;
	enum hgw_program program;
	enum hgw_reason reason;
	enum config_flag flag;
	enum endpoint_flag endpoint_flag;
};
const struct hgw_enums *unused_enums __attribute__((unused));

/* Load-time switches: the loader (internal/datapath) sets them from its probe of
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

/* Where a packet is counted: the family of its frame and the program. */
static __always_inline __u32 counted_at(__u32 family, __u32 prog)
{
	return family * PROG_MAX + prog;
}

static __always_inline void count(struct __sk_buff *skb, __u32 at, __u32 reason)
{
	__u32 idx = at * REASON_MAX + reason;
	struct counter *c = bpf_map_lookup_elem(&stats, &idx);

	if (c) {
		c->packets++;
		c->bytes += skb->len;
	}
}

/* Leave the packet to whatever comes next: TC_ACT_UNSPEC is TCX_NEXT, so
 * later tcx programs and classic tc filters run, then the kernel's path
 * (TC_ACT_OK would end classification for all of them). */
static __always_inline int pass(struct __sk_buff *skb, __u32 at, __u32 reason)
{
	count(skb, at, reason);
	return TC_ACT_UNSPEC;
}

/* The family by the EtherType the receiving device read (after taking off
 * a VLAN tag): known before any packet access, so that every reason,
 * the gate's too, is counted per family. */
static __always_inline __u32 frame_family(struct __sk_buff *skb)
{
	if (skb->protocol == bpf_htons(ETH_P_IP))
		return FAMILY_IPV4;
	if (skb->protocol == bpf_htons(ETH_P_IPV6))
		return FAMILY_IPV6;
	return FAMILY_OTHER;
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

static __always_inline int ipv6_configured(const struct node_config *cfg)
{
	return cfg->pod6_prefixlen != 0 && cfg->pod6_prefixlen <= 128;
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

/* Checks that an IPv4 header is one a router may forward without looking
 * inside. */
static __always_inline __u32 plain_ipv4(struct __sk_buff *skb, const struct iphdr *ip)
{
	__u32 tot_len;

	if (ip->ihl < 5)
		return REASON_MALFORMED;
	/* Options (record route, source route, ...) need the kernel's router. */
	if (ip->ihl != 5)
		return REASON_IP_OPTIONS;
	tot_len = bpf_ntohs(ip->tot_len);
	/* A header that claims more bytes than the frame holds is corrupt. A
	 * GSO packet may legitimately say 0 (BIG TCP beyond 64 KB). */
	if (tot_len < sizeof(*ip) || tot_len > skb->len - sizeof(struct ethhdr)) {
		if (!(tot_len == 0 && skb->gso_size))
			return REASON_MALFORMED;
	}
	/* Fragments go to the kernel, which reassembles them for conntrack:
	 * the fast path never sees a flow half-fragmented. */
	if (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET))
		return REASON_FRAGMENT;
	return FORWARD;
}

/* The IPv6 counterpart: only TCP, UDP and ICMPv6 (and upper layers the
 * conntrack rule then decides on) right after the fixed header. Extension
 * headers go to the kernel, which walks them (hop-by-hop options must be
 * read by every router; conntrack needs the L4 header behind them), and so
 * do fragments, which it reassembles for conntrack. */
static __always_inline __u32 plain_ipv6(struct __sk_buff *skb, const struct ipv6hdr *ip6)
{
	__u32 plen = bpf_ntohs(ip6->payload_len);

	/* A payload that claims more bytes than the frame holds is corrupt. */
	if (plen > skb->len - sizeof(struct ethhdr) - sizeof(*ip6))
		return REASON_MALFORMED;
	switch (ip6->nexthdr) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
	case IPPROTO_ICMPV6:
		break;
	case IPPROTO_FRAGMENT:
		return REASON_FRAGMENT;
	case IPPROTO_HOPOPTS:
	case IPPROTO_ROUTING:
	case NEXTHDR_ESP:
	case NEXTHDR_AUTH:
	case IPPROTO_NONE:
	case IPPROTO_DSTOPTS:
	case IPPROTO_MH:
	case NEXTHDR_HIP:
	case NEXTHDR_SHIM6:
	case NEXTHDR_EXP1:
	case NEXTHDR_EXP2:
		return REASON_EXT_HEADER;
	}
	/* Length 0 is a GSO packet's beyond 64 KB (BIG TCP) or a jumbogram's,
	 * whose hop-by-hop header was sent to the kernel above. Otherwise
	 * the packet has no L4 header at all. */
	if (plen == 0 && !skb->gso_size)
		return REASON_MALFORMED;
	return FORWARD;
}

/* Checks that the frame is a plain IP packet of the family that a router
 * may forward without looking inside: an Ethernet header, the family's
 * EtherType, no VLAN tag, addressed to this host, and behind it an IP
 * header of the family's version that plain_ipv4/plain_ipv6 accept.
 * Returns FORWARD and sets *l3 to the IP header, or the reason to leave
 * the packet to the kernel. At a pod's veth,
 * the frames a pod sends to its gateway carry the bridge's MAC, not the
 * veth's, so the kernel marks them PACKET_OTHERHOST: from_pods checks their
 * MAC once it knows the pod. */
static __always_inline __u32 parse_ip(struct __sk_buff *skb, __u32 family, int at_veth, void **l3)
{
	__u16 ethertype = family == FAMILY_IPV6 ? ETH_P_IPV6 : ETH_P_IP;
	__u32 hdr_len = family == FAMILY_IPV6 ? sizeof(struct ipv6hdr) : sizeof(struct iphdr);
	__u8 version = family == FAMILY_IPV6 ? 6 : 4;
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	__u8 *ip = data + sizeof(*eth);
	__u32 reason;

	if ((void *)(eth + 1) > data_end)
		return REASON_MALFORMED;
	if (eth->h_proto != bpf_htons(ethertype))
		return REASON_NOT_IP;
	/* The receiving device moved an 802.1Q tag into the skb's metadata
	 * before TC ingress: the frame belongs to a VLAN device, which the
	 * kernel hands it to (or drops), never to this device's routing. */
	if (skb->vlan_present)
		return REASON_NOT_IP;
	/* Broadcast, multicast and frames for another MAC are not ours to route. */
	if (skb->pkt_type != PACKET_HOST && !(at_veth && skb->pkt_type == PACKET_OTHERHOST))
		return REASON_NOT_FOR_HOST;
	if ((void *)(ip + hdr_len) > data_end)
		return REASON_MALFORMED;
	/* Both headers start with the version, in the high 4 bits. */
	if (ip[0] >> 4 != version)
		return REASON_MALFORMED;
	reason = family == FAMILY_IPV6 ? plain_ipv6(skb, (void *)ip) : plain_ipv4(skb, (void *)ip);
	if (reason == FORWARD)
		*l3 = ip;
	return reason;
}

/* Sources no router forwards (RFC 1812 5.3.7; the kernel's martian check):
 * 0/8, 127/8, 224/4 multicast, 240/4 and the broadcast address. */
static __always_inline int martian(__be32 addr)
{
	__u32 first = bpf_ntohl(addr) >> 24;

	return first == 0 || first == 127 || first >= 224;
}

/* Link-local or multicast: an IPv6 destination on this link only (neighbour
 * and router discovery, MLD, a pod talking to its gateway's fe80:: address).
 * Never routed: the node itself answers. */
static __always_inline int link_scope6(const __be32 *a)
{
	__u32 w0 = bpf_ntohl(a[0]);

	return (w0 >> 24) == 0xff || (w0 & 0xffc00000) == 0xfe800000;
}

/* IPv6 sources no router forwards (RFC 4291; what ip6_rcv_core and
 * ip6_forward drop): ::, ::1, multicast, link-local (beyond its scope
 * once routed) and IPv4-mapped addresses. */
static __always_inline int martian6(const __be32 *a)
{
	if (link_scope6(a))
		return 1;
	if (a[0] || a[1])
		return 0;
	if (a[2] == 0)
		return a[3] == 0 || a[3] == bpf_htonl(1);
	return a[2] == bpf_htonl(0xffff);
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

/* The host bits of word i (0..3, in host order) of an IPv6 address in a
 * prefix of prefixlen. */
static __always_inline __u32 hostmask6(__u32 prefixlen, int i)
{
	int bits = (int)prefixlen - 32 * i;

	if (bits >= 32)
		return 0;
	if (bits <= 0)
		return ~0U;
	return ~0U >> bits;
}

/* IPv6 has no broadcast address: the node's are the subnet-router anycast
 * address (host part 0) and the gateway (host part 1). /127 and /128 have
 * none. */
static __always_inline int node_addr6(__u32 prefixlen, const __be32 *addr)
{
	__u32 high = 0, low = 0;

	if (prefixlen > 126)
		return 0;
#pragma unroll
	for (int i = 0; i < 3; i++)
		high |= bpf_ntohl(addr[i]) & hostmask6(prefixlen, i);
	low = bpf_ntohl(addr[3]) & hostmask6(prefixlen, 3);
	return high == 0 && (low == 0 || low == 1);
}

static __always_inline int in_pod_subnet(const struct node_config *cfg, __be32 addr)
{
	__be32 net = *(const __be32 *)cfg->pod_subnet;
	__be32 mask = bpf_htonl(~0U << (32 - cfg->pod_prefixlen));

	return (addr & mask) == net;
}

static __always_inline int in_pod_subnet6(const struct node_config *cfg, const __be32 *addr)
{
	const __be32 *net = (const __be32 *)cfg->pod6_subnet;
	__u32 diff = 0;

#pragma unroll
	for (int i = 0; i < 4; i++)
		diff |= (bpf_ntohl(addr[i]) ^ bpf_ntohl(net[i])) & ~hostmask6(cfg->pod6_prefixlen, i);
	return diff == 0;
}

static __always_inline int addr6_equal(const __be32 *a, const __be32 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
}

/* A pod of this node: inside its pod subnet, and neither the gateway nor
 * the subnet's network or broadcast address. */
static __always_inline int local_pod_addr(const struct node_config *cfg, __be32 addr)
{
	return in_pod_subnet(cfg, addr) && addr != *(const __be32 *)cfg->gateway && !node_addr(cfg->pod_prefixlen, addr);
}

static __always_inline int local_pod_addr6(const struct node_config *cfg, const __be32 *addr)
{
	return in_pod_subnet6(cfg, addr) && !addr6_equal(addr, (const __be32 *)cfg->gateway6) &&
	       !node_addr6(cfg->pod6_prefixlen, addr);
}

static __always_inline struct route_value *lookup_route(__be32 addr)
{
	struct route_key key = {.prefixlen = 32};

	__builtin_memcpy(key.addr, &addr, sizeof(key.addr));
	return bpf_map_lookup_elem(&routes, &key);
}

static __always_inline struct route6_value *lookup_route6(const __be32 *addr)
{
	struct route6_key key = {.prefixlen = 128};

	__builtin_memcpy(key.addr, addr, sizeof(key.addr));
	return bpf_map_lookup_elem(&routes6, &key);
}

/* A pod in a peer's subnet (not the peer node's own addresses there). */
static __always_inline int peer_pod(__be32 addr)
{
	struct route_value *rt = lookup_route(addr);

	return rt && !node_addr(rt->prefixlen, addr);
}

static __always_inline int peer_pod6(const __be32 *addr)
{
	struct route6_value *rt = lookup_route6(addr);

	return rt && !node_addr6(rt->prefixlen, addr);
}

/* What the checks both families share need to know of a packet. */
struct flow {
	struct bpf_sock_tuple tuple; /* its addresses; the ports once conntrack is asked */
	__u32 family;                /* FAMILY_IPV4 or FAMILY_IPV6 */
	__u32 l4_off;                /* where its L4 header starts in the frame */
	__u8 proto;                  /* its L4 protocol */
};

static __always_inline void flow4(struct flow *f, const struct iphdr *ip)
{
	f->family = FAMILY_IPV4;
	f->l4_off = sizeof(struct ethhdr) + sizeof(*ip);
	f->proto = ip->protocol;
	f->tuple.ipv4.saddr = ip->saddr;
	f->tuple.ipv4.daddr = ip->daddr;
}

static __always_inline void flow6(struct flow *f, const struct ipv6hdr *ip6)
{
	f->family = FAMILY_IPV6;
	f->l4_off = sizeof(struct ethhdr) + sizeof(*ip6);
	f->proto = ip6->nexthdr;
	__builtin_memcpy(f->tuple.ipv6.saddr, &ip6->saddr, sizeof(f->tuple.ipv6.saddr));
	__builtin_memcpy(f->tuple.ipv6.daddr, &ip6->daddr, sizeof(f->tuple.ipv6.daddr));
}

static __always_inline void set_ports(struct flow *f, const __u8 *l4)
{
	if (f->family == FAMILY_IPV6) {
		__builtin_memcpy(&f->tuple.ipv6.sport, l4, 2);
		__builtin_memcpy(&f->tuple.ipv6.dport, l4 + 2, 2);
	} else {
		__builtin_memcpy(&f->tuple.ipv4.sport, l4, 2);
		__builtin_memcpy(&f->tuple.ipv4.dport, l4 + 2, 2);
	}
}

/* Copies the first len bytes of the L4 header (the ports, and TCP's
 * flags): from the linear data, or where the sender's stack left them
 * outside it, through the helper. A readable packet is never malformed.
 * len is a constant once inlined. */
static __always_inline int read_l4(struct __sk_buff *skb, __u32 off, __u8 *to, __u32 len)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	__u8 *p;

	off &= 0xff; /* 34 or 54: bounded for the verifier */
	p = data + off;
	if ((void *)(p + len) <= data_end) {
		__builtin_memcpy(to, p, len);
		return 0;
	}
	return bpf_skb_load_bytes(skb, off, to, len);
}

/* The IP length of one segment of a GSO packet: IP and L4 headers plus
 * gso_size. An unreadable TCP header counts as too big. */
static __always_inline __u32 gso_segment_len(struct __sk_buff *skb, __u32 l4_off, __u8 proto)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	__u32 hdrs = l4_off - sizeof(struct ethhdr);
	__u8 *l4;

	l4_off &= 0xff; /* 34 or 54: bounded for the verifier */
	l4 = data + l4_off;
	if (proto == IPPROTO_TCP) {
		if ((void *)(l4 + 13) > data_end)
			return 0xffffffff;
		hdrs += (l4[12] >> 4) * 4;
	} else if (proto == IPPROTO_UDP) {
		hdrs += 8;
	}
	return hdrs + skb->gso_size;
}

/* The egress MTU, as a router checks it. Too big, or no such device: the
 * kernel fragments or sends frag-needed (IPv6: packet too big). */
static __always_inline __u32 mtu_check(struct __sk_buff *skb, __u32 ifindex, __u32 l4_off, __u8 proto)
{
	__u32 mtu = 0;

	/* GSO-aware: a GRO'd 64 KB segment is checked per segment, so one flow
	 * never flips between the fast and the slow path by packet size. */
	if (bpf_check_mtu(skb, ifindex, &mtu, 0, 0) != 0)
		return REASON_TOO_BIG;
	/* bpf_check_mtu passes any GSO packet without BPF_MTU_CHK_SEGS, and
	 * that flag trusts a transport header TC ingress may not have set.
	 * Check one segment, headers + gso_size, as ip_exceeds_mtu and
	 * ip6_pkt_too_big would. */
	if (skb->gso_size && gso_segment_len(skb, l4_off, proto) > mtu)
		return REASON_TOO_BIG;
	return FORWARD;
}

/* Router duties before forwarding out of ifindex. Returns FORWARD when the
 * packet may go, having decremented its TTL, else the reason to leave it,
 * untouched, to the kernel. */
static __always_inline __u32 route_checks(struct __sk_buff *skb, struct iphdr *ip, __u32 ifindex)
{
	__u32 check, reason;

	/* TTL 1 would expire here: the kernel sends ICMP time exceeded. */
	if (ip->ttl <= 1)
		return REASON_TTL_EXPIRED;
	reason = mtu_check(skb, ifindex, sizeof(struct ethhdr) + sizeof(*ip), ip->protocol);
	if (reason != FORWARD)
		return reason;

	/* Incremental checksum update for TTL-1, as the kernel's own
	 * ip_decrease_ttl (RFC 1141): the TTL is the high byte of its word. */
	check = ip->check;
	check += bpf_htons(0x0100);
	ip->check = (__u16)(check + (check >= 0xffff));
	ip->ttl--;
	return FORWARD;
}

static __always_inline __u32 route_checks6(struct __sk_buff *skb, struct ipv6hdr *ip6, __u32 ifindex)
{
	__u32 reason;

	/* Hop limit 1 would expire here: the kernel sends time exceeded. */
	if (ip6->hop_limit <= 1)
		return REASON_TTL_EXPIRED;
	reason = mtu_check(skb, ifindex, sizeof(struct ethhdr) + sizeof(*ip6), ip6->nexthdr);
	if (reason != FORWARD)
		return reason;

	/* IPv6 has no header checksum, but a receiving device may have summed
	 * the packet (CHECKSUM_COMPLETE): take the hop limit's change out of
	 * that sum, or the pod's stack finds every checksum off. The helper
	 * does nothing for other skbs. */
	ip6->hop_limit--;
	bpf_csum_update(skb, ~(__u32)bpf_htons(1));
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
 * (crossing a veth from another namespace drops any entry). Both families:
 * bridge-nf-call-ip6tables does the same for IPv6. */
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

/* Asks the conntrack table about a TCP or UDP flow: its addresses and
 * ports. gate() has made sure that, unless the check is ignored, the lookup
 * is usable. The tuple's size tells the kernel the family. */
static __always_inline __u32 ct_lookup(struct __sk_buff *skb, struct flow *f)
{
	struct bpf_ct_opts___hgw opts = {.netns_id = BPF_F_CURRENT_NETNS, .l4proto = f->proto};
	unsigned long status;
	struct nf_conn *ct;

	if (!ct_lookup_usable())
		return REASON_NO_CONNTRACK; /* gate() ruled this out; the verifier needs it said here */
	if (f->family == FAMILY_IPV6)
		ct = bpf_skb_ct_lookup(skb, &f->tuple, sizeof(f->tuple.ipv6), &opts, CT_OPTS_SIZE);
	else
		ct = bpf_skb_ct_lookup(skb, &f->tuple, sizeof(f->tuple.ipv4), &opts, CT_OPTS_SIZE);
	if (!ct)
		return FORWARD;
	status = ct->status;
	bpf_ct_release(ct);
	return (status & (IPS_SRC_NAT | IPS_DST_NAT)) ? REASON_CT_NAT : REASON_CT_TRACKED;
}

enum icmp_kind {
	ICMP_NOT = 0,   /* not ICMP */
	ICMP_ECHO_MSG,  /* echo request or reply */
	ICMP_ERROR_MSG, /* about another packet, which it quotes */
	ICMP_OTHER_MSG, /* redirects, timestamps, router and neighbour discovery, MLD */
};

/* Errors: destination unreachable (frag-needed, port unreachable), packet
 * too big (IPv6), time exceeded, parameter problem. */
static __always_inline enum icmp_kind icmp_kind(__u32 family, __u8 type)
{
	if (family == FAMILY_IPV6) {
		if (type == ICMPV6_ECHO_REQUEST || type == ICMPV6_ECHO_REPLY)
			return ICMP_ECHO_MSG;
		if (type >= ICMPV6_DEST_UNREACH && type <= ICMPV6_PARAMPROB)
			return ICMP_ERROR_MSG;
		return ICMP_OTHER_MSG;
	}
	if (type == ICMP_ECHO || type == ICMP_ECHOREPLY)
		return ICMP_ECHO_MSG;
	if (type == ICMP_DEST_UNREACH || type == ICMP_TIME_EXCEEDED || type == ICMP_PARAMETERPROB)
		return ICMP_ERROR_MSG;
	return ICMP_OTHER_MSG;
}

static __always_inline __u8 icmp_proto(__u32 family)
{
	return family == FAMILY_IPV6 ? IPPROTO_ICMPV6 : IPPROTO_ICMP;
}

/* What kind of ICMP message f is; -1 if its type cannot be read. */
static __always_inline int icmp_msg(struct __sk_buff *skb, const struct flow *f)
{
	__u8 type;

	if (f->proto != icmp_proto(f->family))
		return ICMP_NOT;
	if (read_l4(skb, f->l4_off, &type, sizeof(type)))
		return -1;
	return icmp_kind(f->family, type);
}

/* The flow an ICMP error quotes (the packet that caused it, of which the
 * error carries the IP header and the first bytes), in q and its first 4
 * L4 bytes in l4, if it is a flow whose other end is a pod behind a fast
 * path: a peer's pod when the error comes in (from that pod, or from a
 * router on the way); the pod that sends the error when it goes out. The
 * quoted packet is one the error's receiver sent: its source is the
 * error's destination. Read, not pointed at: the quote of an error the
 * local stack built may lie outside the skb's linear data. */
static __always_inline int quoted_flow4(struct __sk_buff *skb, const struct flow *f, struct flow *q, __u8 *l4,
					int from_underlay)
{
	struct {
		struct iphdr ip;
		__u8 l4[4];
	} qp;

	if (bpf_skb_load_bytes(skb, f->l4_off + ICMP_HDR_LEN, &qp, sizeof(qp)))
		return 0;
	if (qp.ip.version != 4 || qp.ip.ihl != 5 || qp.ip.saddr != f->tuple.ipv4.daddr)
		return 0;
	if (from_underlay ? !peer_pod(qp.ip.daddr) : qp.ip.daddr != f->tuple.ipv4.saddr)
		return 0;
	flow4(q, &qp.ip);
	__builtin_memcpy(l4, qp.l4, sizeof(qp.l4));
	return 1;
}

static __always_inline int quoted_flow6(struct __sk_buff *skb, const struct flow *f, struct flow *q, __u8 *l4,
					int from_underlay)
{
	struct {
		struct ipv6hdr ip;
		__u8 l4[4];
	} qp;
	const __be32 *qdst = qp.ip.daddr.in6_u.u6_addr32;

	if (bpf_skb_load_bytes(skb, f->l4_off + ICMP_HDR_LEN, &qp, sizeof(qp)))
		return 0;
	if (qp.ip.version != 6 || !addr6_equal(qp.ip.saddr.in6_u.u6_addr32, f->tuple.ipv6.daddr))
		return 0;
	if (from_underlay ? !peer_pod6(qdst) : !addr6_equal(qdst, f->tuple.ipv6.saddr))
		return 0;
	flow6(q, &qp.ip);
	__builtin_memcpy(l4, qp.l4, sizeof(qp.l4));
	return 1;
}

/* An ICMP error about a flow of two pods that the fast path carries here
 * (conntrack does not know it) goes the flow's way. Through the kernel,
 * conntrack would meet an error about a flow it has never seen, and
 * kube-proxy's INVALID rule would drop it: port unreachable, frag-needed
 * (IPv6: packet too big, without which path MTU discovery fails) and time
 * exceeded lost. An error about a flow the kernel carries (which may need
 * un-NAT), or quoting what cannot be told, stays the kernel's. */
static __always_inline __u32 icmp_error_check(struct __sk_buff *skb, const struct node_config *cfg, const struct flow *f,
					      int from_underlay)
{
	struct flow q = {};
	__u8 l4[4];
	int ok;

	if (f->family == FAMILY_IPV6)
		ok = quoted_flow6(skb, f, &q, l4, from_underlay);
	else
		ok = quoted_flow4(skb, f, &q, l4, from_underlay);
	if (!ok)
		return REASON_ICMP_ERROR;
	if (cfg->flags & CONFIG_F_IGNORE_CONNTRACK)
		return FORWARD;
	if (q.proto == icmp_proto(q.family))
		return icmp_kind(q.family, l4[0]) == ICMP_ECHO_MSG ? FORWARD : REASON_ICMP_ERROR;
	if (q.proto != IPPROTO_TCP && q.proto != IPPROTO_UDP)
		return REASON_ICMP_ERROR;
	set_ports(&q, l4);
	return ct_lookup(skb, &q) == FORWARD ? FORWARD : REASON_ICMP_ERROR;
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

/* Turns f into its reply's flow: addresses and ports swapped. */
static __always_inline void reverse_flow(struct flow *f)
{
	struct bpf_sock_tuple t = f->tuple;

	if (f->family == FAMILY_IPV6) {
		__builtin_memcpy(f->tuple.ipv6.saddr, t.ipv6.daddr, sizeof(t.ipv6.daddr));
		__builtin_memcpy(f->tuple.ipv6.daddr, t.ipv6.saddr, sizeof(t.ipv6.saddr));
		f->tuple.ipv6.sport = t.ipv6.dport;
		f->tuple.ipv6.dport = t.ipv6.sport;
	} else {
		f->tuple.ipv4.saddr = t.ipv4.daddr;
		f->tuple.ipv4.daddr = t.ipv4.saddr;
		f->tuple.ipv4.sport = t.ipv4.dport;
		f->tuple.ipv4.dport = t.ipv4.sport;
	}
}

/* One path per flow: a flow the node's conntrack already tracks stays with
 * the kernel for its whole life. That keeps kube-proxy's NAT working (a reply
 * of a DNATed connection must be un-NATed by the kernel) and keeps conntrack
 * from seeing half a TCP conversation, which kube-proxy drops as INVALID.
 * Flows conntrack does not know are fast from their first packet, and stay
 * unknown to it because the fast path skips netfilter; so do their ICMP
 * errors. kind is f's icmp_msg(), which the caller may have needed first. */
static __always_inline __u32 ct_check(struct __sk_buff *skb, const struct node_config *cfg, struct flow *f, int kind,
				      int at_bridge, int from_underlay)
{
	__u8 l4[TCP_FLAGS_OFF + 1];
	__u32 reason;

	if (kind < 0)
		return REASON_MALFORMED;
	/* Redirects, timestamps, router and neighbour discovery: the kernel's. */
	if (kind == ICMP_OTHER_MSG)
		return REASON_ICMP_ERROR;
	if (!(cfg->flags & CONFIG_F_IGNORE_CONNTRACK) && at_bridge) {
		reason = attached_ct_check(skb);
		if (reason != FORWARD)
			return reason;
	}
	if (kind == ICMP_ERROR_MSG)
		return icmp_error_check(skb, cfg, f, from_underlay);
	if (cfg->flags & CONFIG_F_IGNORE_CONNTRACK)
		return FORWARD;
	/* The lookup keys TCP and UDP only. ICMP echo has no NAT to undo on a
	 * pod-to-pod path; anything else (SCTP services, GRE, ...) might. */
	if (kind == ICMP_ECHO_MSG)
		return FORWARD;
	if (f->proto != IPPROTO_TCP && f->proto != IPPROTO_UDP)
		return REASON_CT_OTHER_PROTO;
	if (f->proto == IPPROTO_TCP ? read_l4(skb, f->l4_off, l4, sizeof(l4)) : read_l4(skb, f->l4_off, l4, 4))
		return REASON_MALFORMED;
	set_ports(f, l4);
	reason = ct_lookup(skb, f);
	if (reason != FORWARD || !opens_flow(f->proto, l4))
		return reason;
	/* A new flow may have the reply of a flow conntrack tracks: a pod's
	 * kernel picks source ports per destination, so a direct connection
	 * to a backend can reuse the port of an earlier ClusterIP connection
	 * that was DNATed to that backend. Its replies would be taken for the
	 * old flow's and un-NATed. Through the kernel, NAT gives it other
	 * ports. */
	reverse_flow(f);
	return ct_lookup(skb, f) == FORWARD ? FORWARD : REASON_CT_CLASH;
}

/* At a pod's veth the source must be that pod's own address (its endpoint
 * entry names this veth): a pod cannot send as another. */
static __always_inline __u32 veth_source(struct __sk_buff *skb, const struct endpoint_key *key)
{
	struct ethhdr *eth = (void *)(long)skb->data;
	struct endpoint_value *ep = bpf_map_lookup_elem(&endpoints, key);

	if (!ep || ep->ifindex != skb->ifindex)
		return REASON_SPOOFED_SRC;
	if ((void *)(eth + 1) > (void *)(long)skb->data_end)
		return REASON_MALFORMED;
	/* For another MAC on the bridge (a pod on this node): switching. */
	if (skb->pkt_type == PACKET_OTHERHOST && !mac_equal(eth->h_dest, ep->gateway_mac))
		return REASON_NOT_FOR_HOST;
	return FORWARD;
}

/* The source of a packet from_pods sees: at a pod's veth that pod's own
 * address, at cni0 a pod address of this node. */
static __always_inline __u32 pod_source(struct __sk_buff *skb, const struct node_config *cfg, __be32 saddr, int at_veth)
{
	struct endpoint_key key = {.family = AF_INET};

	if (martian(saddr))
		return REASON_MARTIAN_SRC;
	if (!at_veth)
		return local_pod_addr(cfg, saddr) ? FORWARD : REASON_SPOOFED_SRC;
	__builtin_memcpy(key.addr, &saddr, sizeof(saddr));
	return veth_source(skb, &key);
}

static __always_inline __u32 pod_source6(struct __sk_buff *skb, const struct node_config *cfg, const __be32 *saddr,
					 int at_veth)
{
	struct endpoint_key key = {.family = AF_INET6};

	if (martian6(saddr))
		return REASON_MARTIAN_SRC;
	if (!at_veth)
		return local_pod_addr6(cfg, saddr) ? FORWARD : REASON_SPOOFED_SRC;
	__builtin_memcpy(key.addr, saddr, sizeof(key.addr));
	return veth_source(skb, &key);
}

/* Hands a packet for a local pod on, its router duties done: a known pod
 * straight into its namespace, as its gateway at L2 too, skipping the bridge
 * and the veth's transmit path (unless a qdisc there shapes what the pod
 * receives); any other through cni0, whose neighbour table knows the pod. */
static __always_inline int deliver(struct __sk_buff *skb, const struct node_config *cfg, const struct endpoint_value *ep,
				   __u32 at)
{
	struct ethhdr *eth = (void *)(long)skb->data;

	if (ep && !(ep->flags & ENDPOINT_F_SHAPED) && (void *)(eth + 1) <= (void *)(long)skb->data_end) {
		__builtin_memcpy(eth->h_dest, ep->pod_mac, ETH_ALEN);
		__builtin_memcpy(eth->h_source, ep->gateway_mac, ETH_ALEN);
		count(skb, at, REASON_REDIRECT_PEER);
		return bpf_redirect_peer(ep->ifindex, 0);
	}
	count(skb, at, REASON_REDIRECT);
	return bpf_redirect_neigh(cfg->bridge_ifindex, NULL, 0, 0);
}

/* A pod the endpoints map does not know sends its replies through cni0,
 * where they can be fast only if the attached entry can be read. */
static __always_inline int replies_unreadable(const struct node_config *cfg, const struct endpoint_value *ep)
{
	return !ep && !(cfg->flags & CONFIG_F_IGNORE_CONNTRACK) && !kern_ctx_usable();
}

/* The router's duties (route_checks) for the packet whose IP header of
 * family l3 points at. */
static __always_inline __u32 router_duties(struct __sk_buff *skb, __u32 family, void *l3, __u32 ifindex)
{
	if (family == FAMILY_IPV6)
		return route_checks6(skb, l3, ifindex);
	return route_checks(skb, l3, ifindex);
}

/* from_pods' last steps for a packet to a pod in a peer's subnet, both
 * families: the conntrack rule, the router's duties, then out of ifindex
 * toward the peer node at nexthop, whose MAC the kernel's neighbour table
 * gives. Each caller passes its family as a constant, so the compiler keeps
 * only that family's branches. */
static __always_inline int to_peer(struct __sk_buff *skb, const struct node_config *cfg, __u32 family, struct flow *f,
				   void *l3, __u32 at, int at_veth, const __u8 *nexthop, __u32 ifindex)
{
	struct bpf_redir_neigh nh = {};
	__u32 reason;

	reason = ct_check(skb, cfg, f, icmp_msg(skb, f), !at_veth, 0);
	if (reason != FORWARD)
		return pass(skb, at, reason);
	reason = router_duties(skb, family, l3, ifindex);
	if (reason != FORWARD)
		return pass(skb, at, reason);

	if (family == FAMILY_IPV6) {
		nh.nh_family = AF_INET6;
		__builtin_memcpy(nh.ipv6_nh, nexthop, sizeof(nh.ipv6_nh));
	} else {
		nh.nh_family = AF_INET;
		__builtin_memcpy(&nh.ipv4_nh, nexthop, sizeof(nh.ipv4_nh));
	}
	count(skb, at, REASON_REDIRECT);
	return bpf_redirect_neigh(ifindex, &nh, sizeof(nh), 0);
}

/* from_underlay's last steps for a packet to a pod of this node, both
 * families (a constant from each caller, as for to_peer): only a peer's pod
 * may send on the fast path, or an ICMP error about a flow it carries (from
 * a router on the way, say: ct_check looks at the flow it quotes); then the
 * conntrack rule, the router's duties, and delivery. */
static __always_inline int to_local_pod(struct __sk_buff *skb, const struct node_config *cfg, __u32 family,
					struct flow *f, void *l3, __u32 at, int from_peer_pod)
{
	struct endpoint_key ep_key = {};
	struct endpoint_value *ep;
	__u32 reason;
	int kind;

	kind = icmp_msg(skb, f);
	if (!from_peer_pod && kind != ICMP_ERROR_MSG)
		return pass(skb, at, REASON_SRC_NOT_POD);
	/* The pod's key, taken before ct_check may turn f round. */
	if (family == FAMILY_IPV6) {
		ep_key.family = AF_INET6;
		__builtin_memcpy(ep_key.addr, f->tuple.ipv6.daddr, sizeof(f->tuple.ipv6.daddr));
	} else {
		ep_key.family = AF_INET;
		__builtin_memcpy(ep_key.addr, &f->tuple.ipv4.daddr, sizeof(f->tuple.ipv4.daddr));
	}

	reason = ct_check(skb, cfg, f, kind, 0, 1);
	if (reason != FORWARD)
		return pass(skb, at, reason);
	ep = bpf_map_lookup_elem(&endpoints, &ep_key);
	if (replies_unreadable(cfg, ep))
		return pass(skb, at, REASON_CT_UNREADABLE);
	/* The MTU that counts is the bridge's, as on the kernel's path: the
	 * pods' veths are made with it. */
	reason = router_duties(skb, family, l3, cfg->bridge_ifindex);
	if (reason != FORWARD)
		return pass(skb, at, reason);
	return deliver(skb, cfg, ep, at);
}

static __always_inline int pods4(struct __sk_buff *skb, const struct node_config *cfg, __u32 at, int at_veth)
{
	struct route_value *rt;
	struct iphdr *ip = NULL;
	struct flow f = {};
	__u32 reason;

	reason = parse_ip(skb, FAMILY_IPV4, at_veth, (void **)&ip);
	if (reason != FORWARD || !ip)
		return pass(skb, at, reason);
	reason = pod_source(skb, cfg, ip->saddr, at_veth);
	if (reason != FORWARD)
		return pass(skb, at, reason);
	/* Pod to pod on this node, or to the gateway: the bridge's business. */
	if (in_pod_subnet(cfg, ip->daddr))
		return pass(skb, at, REASON_LOCAL_DEST);
	/* The other end must be a pod behind a peer's fast path too, or the
	 * replies would come back through the kernel (see from_underlay). */
	rt = lookup_route(ip->daddr);
	if (!rt)
		return pass(skb, at, REASON_NO_ROUTE);
	if (node_addr(rt->prefixlen, ip->daddr))
		return pass(skb, at, REASON_DST_NOT_POD);

	flow4(&f, ip);
	return to_peer(skb, cfg, FAMILY_IPV4, &f, ip, at, at_veth, rt->nexthop, rt->ifindex);
}

static __always_inline int pods6(struct __sk_buff *skb, const struct node_config *cfg, __u32 at, int at_veth)
{
	struct ipv6hdr *ip6 = NULL;
	struct route6_value *rt;
	const __be32 *daddr;
	struct flow f = {};
	__u32 reason;

	if (!ipv6_configured(cfg))
		return pass(skb, at, REASON_NO_IPV6_CONFIG);
	reason = parse_ip(skb, FAMILY_IPV6, at_veth, (void **)&ip6);
	if (reason != FORWARD || !ip6)
		return pass(skb, at, reason);
	daddr = ip6->daddr.in6_u.u6_addr32;
	/* Neighbour and router discovery, MLD, the gateway's fe80:: address:
	 * for the node itself. */
	if (link_scope6(daddr))
		return pass(skb, at, REASON_LOCAL_DEST);
	reason = pod_source6(skb, cfg, ip6->saddr.in6_u.u6_addr32, at_veth);
	if (reason != FORWARD)
		return pass(skb, at, reason);
	if (in_pod_subnet6(cfg, daddr))
		return pass(skb, at, REASON_LOCAL_DEST);
	rt = lookup_route6(daddr);
	if (!rt)
		return pass(skb, at, REASON_NO_ROUTE);
	if (node_addr6(rt->prefixlen, daddr))
		return pass(skb, at, REASON_DST_NOT_POD);

	flow6(&f, ip6);
	return to_peer(skb, cfg, FAMILY_IPV6, &f, ip6, at, at_veth, rt->nexthop, rt->ifindex);
}

static __always_inline int underlay4(struct __sk_buff *skb, const struct node_config *cfg, __u32 at)
{
	struct iphdr *ip = NULL;
	struct flow f = {};
	__u32 reason;

	reason = parse_ip(skb, FAMILY_IPV4, 0, (void **)&ip);
	if (reason != FORWARD || !ip)
		return pass(skb, at, reason);
	if (martian(ip->saddr))
		return pass(skb, at, REASON_MARTIAN_SRC);
	/* Not for our pods (the node itself, another subnet): the kernel's. */
	if (!in_pod_subnet(cfg, ip->daddr))
		return pass(skb, at, REASON_NO_ROUTE);
	if (!local_pod_addr(cfg, ip->daddr))
		return pass(skb, at, REASON_LOCAL_DEST);
	/* One path per flow, in both directions: the replies take the fast
	 * path only toward a pod in a peer's subnet (from_pods), so only such
	 * a source may come in on it. Node IPs, external clients and SNATed
	 * service traffic go through the kernel both ways, and conntrack sees
	 * whole flows. An ICMP error from such a source (a router on the
	 * way, say) may still come in: to_local_pod asks about the flow it
	 * quotes. */
	if (in_pod_subnet(cfg, ip->saddr))
		return pass(skb, at, REASON_SRC_NOT_POD);
	flow4(&f, ip);
	return to_local_pod(skb, cfg, FAMILY_IPV4, &f, ip, at, peer_pod(ip->saddr));
}

/* from_underlay for IPv6: the same checks in the same order as IPv4's. */
static __always_inline int underlay6(struct __sk_buff *skb, const struct node_config *cfg, __u32 at)
{
	const __be32 *saddr, *daddr;
	struct ipv6hdr *ip6 = NULL;
	struct flow f = {};
	__u32 reason;

	if (!ipv6_configured(cfg))
		return pass(skb, at, REASON_NO_IPV6_CONFIG);
	reason = parse_ip(skb, FAMILY_IPV6, 0, (void **)&ip6);
	if (reason != FORWARD || !ip6)
		return pass(skb, at, reason);
	saddr = ip6->saddr.in6_u.u6_addr32;
	daddr = ip6->daddr.in6_u.u6_addr32;
	/* Neighbour discovery between the nodes, MLD: for the node itself. */
	if (link_scope6(daddr))
		return pass(skb, at, REASON_LOCAL_DEST);
	if (martian6(saddr))
		return pass(skb, at, REASON_MARTIAN_SRC);
	if (!in_pod_subnet6(cfg, daddr))
		return pass(skb, at, REASON_NO_ROUTE);
	if (!local_pod_addr6(cfg, daddr))
		return pass(skb, at, REASON_LOCAL_DEST);
	if (in_pod_subnet6(cfg, saddr))
		return pass(skb, at, REASON_SRC_NOT_POD);
	flow6(&f, ip6);
	return to_local_pod(skb, cfg, FAMILY_IPV6, &f, ip6, at, peer_pod6(saddr));
}

/* How both programs start: every packet is counted by its frame's family
 * and the program, meets the gate, then takes its family's path. */
static __always_inline int run(struct __sk_buff *skb, __u32 prog)
{
	const struct node_config *cfg = load_config();
	__u32 family = frame_family(skb);
	__u32 at = counted_at(family, prog);
	__u32 reason;
	int at_veth;

	reason = gate(skb, cfg);
	if (reason != FORWARD || !cfg)
		return pass(skb, at, reason);
	if (prog == PROG_FROM_UNDERLAY)
		return family == FAMILY_IPV6 ? underlay6(skb, cfg, at) : underlay4(skb, cfg, at);
	/* from_pods is attached to cni0 and to known pods' host-side veths. */
	at_veth = skb->ifindex != cfg->bridge_ifindex;
	return family == FAMILY_IPV6 ? pods6(skb, cfg, at, at_veth) : pods4(skb, cfg, at, at_veth);
}

SEC("tc")
int from_pods(struct __sk_buff *skb)
{
	return run(skb, PROG_FROM_PODS);
}

SEC("tc")
int from_underlay(struct __sk_buff *skb)
{
	return run(skb, PROG_FROM_UNDERLAY);
}
