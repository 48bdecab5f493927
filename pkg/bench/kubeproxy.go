package bench

import (
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"net/netip"
	"strings"
)

// KubeNode describes the node whose netfilter state KubeProxyRules writes.
type KubeNode struct {
	Services    int            // ClusterIP services, each with EndpointsPerService endpoints
	Endpoints   int            // endpoints per service; 2 if zero
	ClusterCIDR netip.Prefix   // the pod network (flannel's Network)
	NodeSubnet  netip.Prefix   // this node's pod subnet (flannel's lease)
	PodSubnets  []netip.Prefix // subnets the endpoints live in, spread round-robin
}

// serviceCIDR is kube-apiserver's default --service-cluster-ip-range.
var serviceCIDR = netip.MustParsePrefix("10.96.0.0/12")

// chainHash is kube-proxy's chain-name hash: the first 16 characters of the
// base32 SHA-256 of the port name and protocol (and endpoint, for SEPs).
func chainHash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return base32.StdEncoding.EncodeToString(sum[:])[:16]
}

// serviceIP is the i-th ClusterIP, skipping .0 of the range (the kubernetes
// service would be .1; the first service gets .10 as kube-dns does).
func serviceIP(i int) netip.Addr {
	a := serviceCIDR.Addr().As4()
	n := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	n += uint32(10 + i)
	return netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
}

// endpointIP is endpoint j of service i: a pod address in one of the pod
// subnets. No pod answers there: only the rule shapes matter, the benchmark
// traffic is pod to pod and never matches a ClusterIP.
func endpointIP(subnets []netip.Prefix, i, j int) netip.Addr {
	s := subnets[(i+j)%len(subnets)].Masked().Addr().As4()
	host := 2 + (i*7+j)%250
	s[3] = byte(host)
	return netip.AddrFrom4(s)
}

// KubeProxyRules is the iptables-restore input of a node running kube-proxy
// in iptables mode (the chains and rule shapes of kube-proxy 1.2x) with
// flannel's forward and masquerade rules, for n.Services services. Feed it
// to `iptables-restore --noflush` inside the node's namespace.
func KubeProxyRules(n KubeNode) (string, error) {
	if n.Services < 0 || n.Services > 60000 {
		return "", fmt.Errorf("services %d: want 0..60000", n.Services)
	}
	if !n.ClusterCIDR.IsValid() || !n.NodeSubnet.IsValid() || len(n.PodSubnets) == 0 {
		return "", fmt.Errorf("kube rules need the cluster CIDR, the node subnet and pod subnets")
	}
	eps := n.Endpoints
	if eps <= 0 {
		eps = 2
	}
	cluster, node := n.ClusterCIDR.Masked().String(), n.NodeSubnet.Masked().String()
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }

	// nat: kube-proxy's service portals and SNAT marking, flannel's masquerade.
	type svc struct {
		name, proto, svcChain string
		ip                    netip.Addr
		port                  int
		seps                  []string
		epIPs                 []netip.Addr
	}
	svcs := make([]svc, n.Services)
	for i := range svcs {
		s := svc{name: fmt.Sprintf("bench/svc-%d:http", i), proto: "tcp", port: 80, ip: serviceIP(i)}
		if i%10 == 0 { // a DNS-like UDP service now and then
			s.name, s.proto, s.port = fmt.Sprintf("bench/svc-%d:dns", i), "udp", 53
		}
		s.svcChain = "KUBE-SVC-" + chainHash(s.name+s.proto)
		for j := range eps {
			ep := endpointIP(n.PodSubnets, i, j)
			s.epIPs = append(s.epIPs, ep)
			s.seps = append(s.seps, "KUBE-SEP-"+chainHash(s.name+s.proto+ep.String()))
		}
		svcs[i] = s
	}
	w("*nat")
	for _, c := range []string{"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"} {
		w(":%s ACCEPT [0:0]", c)
	}
	for _, c := range []string{"KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ", "FLANNEL-POSTRTG"} {
		w(":%s - [0:0]", c)
	}
	for _, s := range svcs {
		w(":%s - [0:0]", s.svcChain)
		for _, sep := range s.seps {
			w(":%s - [0:0]", sep)
		}
	}
	w(`-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`)
	w(`-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`)
	w(`-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING`)
	w(`-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG`)
	w(`-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000`)
	w(`-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN`)
	w(`-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0`)
	w(`-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully`)
	for _, s := range svcs {
		w(`-A KUBE-SERVICES -d %s/32 -p %s -m comment --comment "%s cluster IP" -m %s --dport %d -j %s`,
			s.ip, s.proto, s.name, s.proto, s.port, s.svcChain)
	}
	w(`-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS`)
	for _, s := range svcs {
		w(`-A %s ! -s %s -d %s/32 -p %s -m comment --comment "%s cluster IP" -m %s --dport %d -j KUBE-MARK-MASQ`,
			s.svcChain, cluster, s.ip, s.proto, s.name, s.proto, s.port)
		for j, sep := range s.seps {
			// kube-proxy spreads load with decreasing probabilities: 1/n, 1/(n-1), ..., then the last one catches all.
			if left := len(s.seps) - j; left > 1 {
				w(`-A %s -m comment --comment "%s -> %s:8080" -m statistic --mode random --probability %.11f -j %s`,
					s.svcChain, s.name, s.epIPs[j], 1/float64(left), sep)
			} else {
				w(`-A %s -m comment --comment "%s -> %s:8080" -j %s`, s.svcChain, s.name, s.epIPs[j], sep)
			}
		}
		for j, sep := range s.seps {
			w(`-A %s -s %s/32 -m comment --comment "%s" -j KUBE-MARK-MASQ`, sep, s.epIPs[j], s.name)
			w(`-A %s -p %s -m comment --comment "%s" -m %s -j DNAT --to-destination %s:8080`, sep, s.proto, s.name, s.proto, s.epIPs[j])
		}
	}
	// flannel (>= 0.20) masquerade: pod traffic inside the cluster network keeps its source.
	w(`-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN`)
	w(`-A FLANNEL-POSTRTG -s %s -d %s -m comment --comment "flanneld masq" -j RETURN`, node, cluster)
	w(`-A FLANNEL-POSTRTG -s %s -d %s -m comment --comment "flanneld masq" -j RETURN`, cluster, node)
	w(`-A FLANNEL-POSTRTG ! -s %s -d %s -m comment --comment "flanneld masq" -j RETURN`, cluster, node)
	w(`-A FLANNEL-POSTRTG -s %s ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully`, cluster)
	w(`-A FLANNEL-POSTRTG ! -s %s -d %s -m comment --comment "flanneld masq" -j MASQUERADE --random-fully`, cluster, cluster)
	w("COMMIT")

	// filter: the per-packet part every forwarded packet crosses.
	w("*filter")
	for _, c := range []string{"INPUT", "FORWARD", "OUTPUT"} {
		w(":%s ACCEPT [0:0]", c)
	}
	for _, c := range []string{"KUBE-FORWARD", "KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-NODEPORTS", "KUBE-PROXY-FIREWALL", "KUBE-FIREWALL", "FLANNEL-FWD"} {
		w(":%s - [0:0]", c)
	}
	w(`-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL`)
	w(`-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS`)
	w(`-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES`)
	w(`-A INPUT -j KUBE-FIREWALL`)
	w(`-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL`)
	w(`-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD`)
	w(`-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`)
	w(`-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES`)
	w(`-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD`)
	w(`-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL`)
	w(`-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`)
	w(`-A OUTPUT -j KUBE-FIREWALL`)
	w(`-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet connections" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP`)
	w(`-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP`)
	w(`-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT`)
	w(`-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`)
	w(`-A FLANNEL-FWD -s %s -m comment --comment "flanneld forward" -j ACCEPT`, cluster)
	w(`-A FLANNEL-FWD -d %s -m comment --comment "flanneld forward" -j ACCEPT`, cluster)
	w("COMMIT")
	return b.String(), nil
}
