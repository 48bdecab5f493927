/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Types shared by the datapath programs and the Go loader. Go gets every
 * one of them from bpf2go (map types, and -type for the enums), so this file
 * is the single definition of the maps' layout. */
#ifndef HGW_H
#define HGW_H

#include <linux/types.h>

/* Key of the `routes` LPM trie: a peer node's IPv4 pod subnet. addr is a
 * byte array so that bpftool prints octets. IPv6 subnets have a trie of
 * their own (`routes6`): a key's size is fixed, and one trie for both would
 * need a family byte in front of every prefix (and an upgrade would have had
 * to empty the IPv4 routes map, which keeps its layout this way). */
struct route_key {
	__u32 prefixlen;
	__u8 addr[4];
};

/* Where packets for a peer subnet go: out of ifindex, to nexthop (the peer
 * node's host IP), whose MAC the kernel neighbour table supplies. prefixlen
 * repeats the key's: an LPM lookup returns only the value, and the programs
 * need the matched subnet's bounds to tell a peer's pods from the peer node
 * itself (its network, gateway and broadcast addresses). */
struct route_value {
	__u8 nexthop[4];
	__u32 ifindex;
	__u32 prefixlen;
};

/* A peer's IPv6 pod subnet, and where its packets go: as route_key and
 * route_value, with the peer node's IPv6 host address as next hop. */
struct route6_key {
	__u32 prefixlen;
	__u8 addr[16];
};

struct route6_value {
	__u8 nexthop[16];
	__u32 ifindex;
	__u32 prefixlen;
};

/* Key of the `endpoints` hash: a pod on this node, by one of its addresses.
 * A dual-stack pod has one entry per family. */
struct endpoint_key {
	__u32 family;   /* AF_INET (2) or AF_INET6 (10) */
	__u8 addr[16];  /* IPv4: the first 4 bytes, the rest zero */
};

/* How to hand a packet straight to a local pod: rewrite the MACs as its
 * gateway would and bpf_redirect_peer() through its host-side veth. */
struct endpoint_value {
	__u32 ifindex;       /* host-side veth of the pod */
	__u8 pod_mac[6];     /* the pod's own interface */
	__u8 gateway_mac[6]; /* the bridge's: the source a routed packet has */
	__u32 flags;         /* enum endpoint_flag */
};

enum endpoint_flag {
	/* A qdisc shapes what the host-side veth sends into the pod (the CNI
	 * bandwidth plugin's ingress limit is a tbf root qdisc there).
	 * bpf_redirect_peer would skip it: the pod's packets go through cni0
	 * and the veth instead. */
	ENDPOINT_F_SHAPED = 1,
};

/* The node's own view, written by the agent before programs are attached.
 * A zeroed config (no agent yet) makes both programs pass everything on. */
struct node_config {
	__u8 pod_subnet[4];   /* this node's pod subnet, e.g. 10.244.1.0 */
	__u32 pod_prefixlen;  /* e.g. 24; 0 = not configured */
	__u8 gateway[4];      /* the bridge's own address, e.g. 10.244.1.1 */
	__u32 bridge_ifindex; /* cni0 */
	__u32 underlay_ifindex; /* eth0 */
	__u32 flags;          /* enum config_flag */
	/* IPv6 (dual stack). pod6_prefixlen 0: this node has no IPv6 pod
	 * subnet, and IPv6 packets pass to the kernel. */
	__u8 pod6_subnet[16]; /* e.g. fd00:10:244:1:: */
	__u32 pod6_prefixlen; /* e.g. 64 */
	__u8 gateway6[16];    /* the bridge's IPv6 address, e.g. fd00:10:244:1::1 */
};

/* When the fast path may act. With neither CONFIG_F_CONNTRACK nor
 * CONFIG_F_IGNORE_CONNTRACK the programs fail closed: nothing is redirected. */
enum config_flag {
	/* The conntrack table lookup is usable: flows the kernel tracks
	 * (NATed ones above all) stay on the kernel path. */
	CONFIG_F_CONNTRACK = 1,
	/* --unsafe-ignore-conntrack: no conntrack check at all, for clusters
	 * without kube-proxy or any NAT. */
	CONFIG_F_IGNORE_CONNTRACK = 2,
	/* The agent wants no fast path now (a NetworkPolicy engine enforces
	 * in netfilter, or conntrack cannot be checked): pass everything on. */
	CONFIG_F_STEP_ASIDE = 4,
};

/* Which program counted. */
enum hgw_program {
	PROG_FROM_PODS = 0,
	PROG_FROM_UNDERLAY = 1,
	PROG_MAX = 2,
};

/* Which kind of frame a counter is about: the EtherType the device read.
 * "other" holds what is not IP at all (ARP, LLDP, ...). */
enum hgw_family {
	FAMILY_IPV4 = 0,
	FAMILY_IPV6 = 1,
	FAMILY_OTHER = 2,
	FAMILY_MAX = 3,
};

/* Why a packet took the path it took. Every return of the programs counts
 * exactly one reason: the first check that kept it off the fast path. The
 * reasons are the same for both families (TTL stands for IPv6's hop limit,
 * ICMP for ICMPv6); a few exist for one family only. */
enum hgw_reason {
	REASON_REDIRECT = 0,     /* fast path: bpf_redirect_neigh */
	REASON_NOT_IP = 1,       /* ARP, a VLAN device's frame, ...: kernel */
	REASON_MALFORMED = 2,    /* truncated or inconsistent header */
	REASON_IP_OPTIONS = 3,   /* IHL > 5: the kernel handles options */
	REASON_FRAGMENT = 4,     /* the kernel reassembles for conntrack */
	REASON_NOT_FOR_HOST = 5, /* L2 broadcast/multicast/other host */
	REASON_LOCAL_DEST = 6,   /* destination on this node: kernel/bridge */
	REASON_NO_ROUTE = 7,     /* no LPM entry / not our pod subnet */
	REASON_TTL_EXPIRED = 8,  /* TTL <= 1: kernel sends time exceeded */
	REASON_TOO_BIG = 9,      /* over egress MTU: kernel sends frag-needed */
	REASON_NO_CONFIG = 10,   /* agent has not written config yet */
	REASON_CT_NAT = 11,      /* conntrack NATed this flow: kernel un-NATs */
	REASON_CT_TRACKED = 12,  /* conntrack tracks this flow: keep it there */
	REASON_ICMP_ERROR = 13,  /* ICMP error of a kernel-path flow: may need un-NAT */
	REASON_REDIRECT_PEER = 14, /* fast path: bpf_redirect_peer into a known pod */
	REASON_STEP_ASIDE = 15,  /* the agent asked for no fast path now */
	REASON_NO_CONNTRACK = 16, /* conntrack cannot be checked: fail closed */
	REASON_CT_UNREADABLE = 17, /* the entry br_netfilter attached cannot be read */
	REASON_CT_OTHER_PROTO = 18, /* not TCP/UDP/ICMP echo: the lookup cannot key it */
	REASON_MARTIAN_SRC = 19, /* source 0/8, 127/8, multicast, 240/4; IPv6: ::, ::1, multicast, link-local, v4-mapped */
	REASON_SPOOFED_SRC = 20, /* from a pod, not that pod's (or any pod's) address */
	REASON_SRC_NOT_POD = 21, /* from the underlay, source not a peer's pod */
	REASON_DST_NOT_POD = 22, /* to a peer subnet's network/gateway/broadcast */
	REASON_TC_FILTERS = 23,  /* tcx: classic tc filters on this device come first */
	REASON_CT_CLASH = 24,    /* a new flow whose reply a tracked (NATed) flow has as its own */
	REASON_NO_IPV6_CONFIG = 25, /* IPv6, and this node has no IPv6 pod subnet */
	REASON_EXT_HEADER = 26,  /* IPv6 extension headers: the kernel walks them */
	REASON_MAX = 27,
};

/* One counter cell of the per-CPU `stats` array, indexed by
 * (family * PROG_MAX + program) * REASON_MAX + reason. */
struct counter {
	__u64 packets;
	__u64 bytes;
};

#endif /* HGW_H */
