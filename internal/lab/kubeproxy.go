package lab

import (
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"net/netip"
	"strings"
)

// ServicePort is one port of a Kubernetes service, the unit kube-proxy
// programs: its chains are named after it.
type ServicePort struct {
	Name      string // "namespace/name:port", kube-proxy's comment and chain-hash input
	Protocol  string // "tcp" or "udp"
	ClusterIP netip.Addr
	Port      int
	NodePort  int  // 0: ClusterIP only
	LocalOnly bool // externalTrafficPolicy: Local
	Endpoints []netip.AddrPort
}

// KubeNode describes the node whose netfilter state KubeProxyRules writes.
type KubeNode struct {
	ClusterCIDR netip.Prefix  // the pod network (flannel's Network)
	NodeSubnet  netip.Prefix  // this node's pod subnet: endpoints in it are local
	Services    []ServicePort // real services, with endpoints that answer
	// Synthetic adds that many ClusterIP services whose endpoints
	// (SyntheticEndpoints each, 2 if zero) are spread over PodSubnets: rule
	// volume of a busy cluster. No pod answers there; only their cost
	// matters.
	Synthetic          int
	SyntheticEndpoints int
	PodSubnets         []netip.Prefix
}

// chainHash is kube-proxy's chain-name hash: the first 16 characters of the
// base32 SHA-256 of the port name and protocol (and endpoint, for SEPs).
func chainHash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return base32.StdEncoding.EncodeToString(sum[:])[:16]
}

// syntheticBase is where synthetic ClusterIPs start: inside kube-apiserver's
// default 10.96.0.0/12, away from the few real services a lab defines.
var syntheticBase = netip.MustParseAddr("10.100.0.0")

func syntheticIP(i int) netip.Addr {
	a := syntheticBase.As4()
	n := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	n += uint32(10 + i)
	return netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
}

// syntheticServices are n.Synthetic services, a DNS-like UDP one now and then.
func (n KubeNode) syntheticServices() []ServicePort {
	eps := n.SyntheticEndpoints
	if eps <= 0 {
		eps = 2
	}
	out := make([]ServicePort, n.Synthetic)
	for i := range out {
		s := ServicePort{Name: fmt.Sprintf("bench/svc-%d:http", i), Protocol: "tcp", Port: 80, ClusterIP: syntheticIP(i)}
		if i%10 == 0 {
			s.Name, s.Protocol, s.Port = fmt.Sprintf("bench/svc-%d:dns", i), "udp", 53
		}
		for j := range eps {
			sub := n.PodSubnets[(i+j)%len(n.PodSubnets)].Masked().Addr().As4()
			sub[3] = byte(2 + (i*7+j)%250)
			s.Endpoints = append(s.Endpoints, netip.AddrPortFrom(netip.AddrFrom4(sub), 8080))
		}
		out[i] = s
	}
	return out
}

func (n KubeNode) validate() error {
	if n.Synthetic < 0 || n.Synthetic > 60000 {
		return fmt.Errorf("synthetic services %d: want 0..60000", n.Synthetic)
	}
	if !n.ClusterCIDR.IsValid() || !n.NodeSubnet.IsValid() {
		return fmt.Errorf("kube-proxy rules need the cluster CIDR and the node's subnet")
	}
	if n.Synthetic > 0 && len(n.PodSubnets) == 0 {
		return fmt.Errorf("synthetic services need pod subnets for their endpoints")
	}
	for _, s := range n.Services {
		if s.Protocol != "tcp" && s.Protocol != "udp" {
			return fmt.Errorf("service %s: protocol %q, want tcp or udp", s.Name, s.Protocol)
		}
		if !s.ClusterIP.Is4() || s.Port <= 0 || s.Port > 65535 || s.NodePort < 0 || s.NodePort > 65535 {
			return fmt.Errorf("service %s: bad cluster IP %s, port %d or node port %d", s.Name, s.ClusterIP, s.Port, s.NodePort)
		}
		if len(s.Endpoints) == 0 {
			return fmt.Errorf("service %s: no endpoints", s.Name)
		}
	}
	return nil
}

// svcChains are the chain names kube-proxy derives for one service port.
type svcChains struct {
	svc, ext, svl string
	seps          []string
}

func chainsOf(s ServicePort) svcChains {
	h := chainHash(s.Name + s.Protocol)
	c := svcChains{svc: "KUBE-SVC-" + h, ext: "KUBE-EXT-" + h, svl: "KUBE-SVL-" + h}
	for _, ep := range s.Endpoints {
		c.seps = append(c.seps, "KUBE-SEP-"+chainHash(s.Name+s.Protocol+ep.String()))
	}
	return c
}

// KubeProxyRules is the iptables-restore input of a node running kube-proxy
// in iptables mode (the chains and rule shapes of kube-proxy 1.2x): service
// portals, NodePorts (externalTrafficPolicy Cluster: DNAT and masquerade;
// Local: DNAT to this node's endpoints only, drop where it has none), the
// 0x4000 masquerade mark, and KUBE-FORWARD with its `--ctstate INVALID -j
// DROP`. Feed it to `iptables-restore --noflush` inside the node's
// namespace. flanneld's own rules are FlannelRules.
func KubeProxyRules(n KubeNode) (string, error) {
	if err := n.validate(); err != nil {
		return "", err
	}
	svcs := append(append([]ServicePort(nil), n.Services...), n.syntheticServices()...)
	var r restoreWriter
	noLocal := r.natTable(n, svcs)
	r.filterTable(noLocal)
	return r.b.String(), nil
}

// restoreWriter writes iptables-restore input, table by table.
type restoreWriter struct {
	b   strings.Builder
	pos map[string]int // the last position a built-in chain's jump took
}

func (r *restoreWriter) w(format string, args ...any) { fmt.Fprintf(&r.b, format+"\n", args...) }

// table starts a table's section.
func (r *restoreWriter) table(name string) {
	r.w("*%s", name)
	r.pos = map[string]int{}
}

// jump puts a rule into a built-in chain. kube-proxy prepends its jumps to
// the built-in chains, so they come before flanneld's whoever started
// first: -I at increasing positions keeps them at the top in this order.
// Built-in chains are not declared: that would reset their policies.
func (r *restoreWriter) jump(chain, rule string) {
	r.pos[chain]++
	r.w("-I %s %d %s", chain, r.pos[chain], rule)
}

// declare declares (or empties) chains of ours.
func (r *restoreWriter) declare(chains ...string) {
	for _, c := range chains {
		r.w(":%s - [0:0]", c)
	}
}

// natTable writes the nat table: portals, masquerade marking, every
// service's chains. It returns the eTP=Local NodePorts without an
// endpoint on this node, which the filter table drops.
func (r *restoreWriter) natTable(n KubeNode, svcs []ServicePort) (noLocal []ServicePort) {
	r.table("nat")
	r.declare("KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ")
	chains := make([]svcChains, len(svcs))
	for i, s := range svcs {
		c := chainsOf(s)
		chains[i] = c
		r.declare(c.svc)
		if s.NodePort != 0 {
			r.declare(c.ext)
		}
		if s.NodePort != 0 && s.LocalOnly {
			r.declare(c.svl)
		}
		r.declare(c.seps...)
	}
	r.jump("PREROUTING", `-m comment --comment "kubernetes service portals" -j KUBE-SERVICES`)
	r.jump("OUTPUT", `-m comment --comment "kubernetes service portals" -j KUBE-SERVICES`)
	r.jump("POSTROUTING", `-m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING`)
	r.w(`-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000`)
	r.w(`-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN`)
	r.w(`-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0`)
	r.w(`-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully`)
	for i, s := range svcs {
		r.w(`-A KUBE-SERVICES -d %s/32 -p %s -m comment --comment "%s cluster IP" -m %s --dport %d -j %s`,
			s.ClusterIP, s.Protocol, s.Name, s.Protocol, s.Port, chains[i].svc)
	}
	r.w(`-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS`)
	for i, s := range svcs {
		if !r.service(n, s, chains[i]) {
			noLocal = append(noLocal, s)
		}
	}
	r.w("COMMIT")
	return noLocal
}

// service writes one service port's chains: its ClusterIP, its endpoints
// and, for a NodePort, its external chain. It reports false for an
// eTP=Local NodePort with no endpoint on this node.
func (r *restoreWriter) service(n KubeNode, s ServicePort, c svcChains) (hasLocal bool) {
	cluster := n.ClusterCIDR.Masked().String()
	r.w(`-A %s ! -s %s -d %s/32 -p %s -m comment --comment "%s cluster IP" -m %s --dport %d -j KUBE-MARK-MASQ`,
		c.svc, cluster, s.ClusterIP, s.Protocol, s.Name, s.Protocol, s.Port)
	spread(r.w, c.svc, s, s.Endpoints, c.seps)
	for j, sep := range c.seps {
		ep := s.Endpoints[j]
		r.w(`-A %s -s %s/32 -m comment --comment "%s" -j KUBE-MARK-MASQ`, sep, ep.Addr(), s.Name)
		r.w(`-A %s -p %s -m comment --comment "%s" -m %s -j DNAT --to-destination %s`, sep, s.Protocol, s.Name, s.Protocol, ep)
	}
	if s.NodePort == 0 {
		return true
	}
	r.w(`-A KUBE-NODEPORTS -p %s -m comment --comment "%s" -m %s --dport %d -j %s`, s.Protocol, s.Name, s.Protocol, s.NodePort, c.ext)
	if !s.LocalOnly {
		// The client's address is lost: the reply must come back here to be un-NATed.
		r.w(`-A %s -m comment --comment "masquerade traffic for %s external destinations" -j KUBE-MARK-MASQ`, c.ext, s.Name)
		r.w(`-A %s -j %s`, c.ext, c.svc)
		return true
	}
	r.w(`-A %s -s %s -m comment --comment "pod traffic for %s external destinations" -j %s`, c.ext, cluster, s.Name, c.svc)
	r.w(`-A %s -m comment --comment "masquerade LOCAL traffic for %s external destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ`, c.ext, s.Name)
	r.w(`-A %s -m comment --comment "route LOCAL traffic for %s external destinations" -m addrtype --src-type LOCAL -j %s`, c.ext, s.Name, c.svc)
	r.w(`-A %s -j %s`, c.ext, c.svl)
	var local []netip.AddrPort
	var localSeps []string
	for j, ep := range s.Endpoints {
		if n.NodeSubnet.Masked().Contains(ep.Addr()) {
			local, localSeps = append(local, ep), append(localSeps, c.seps[j])
		}
	}
	spread(r.w, c.svl, s, local, localSeps)
	return len(local) > 0
}

// filterTable writes the filter table: the per-packet part every
// forwarded packet crosses, with a drop for each eTP=Local NodePort in
// noLocal.
func (r *restoreWriter) filterTable(noLocal []ServicePort) {
	r.table("filter")
	r.declare("KUBE-FORWARD", "KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-NODEPORTS", "KUBE-PROXY-FIREWALL", "KUBE-FIREWALL")
	r.jump("INPUT", `-m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL`)
	r.jump("INPUT", `-m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS`)
	r.jump("INPUT", `-m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES`)
	r.jump("INPUT", `-j KUBE-FIREWALL`)
	r.jump("FORWARD", `-m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL`)
	r.jump("FORWARD", `-m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD`)
	r.jump("FORWARD", `-m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`)
	r.jump("FORWARD", `-m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES`)
	r.jump("OUTPUT", `-m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL`)
	r.jump("OUTPUT", `-m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`)
	r.jump("OUTPUT", `-j KUBE-FIREWALL`)
	r.w(`-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet connections" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP`)
	for _, s := range noLocal {
		r.w(`-A KUBE-EXTERNAL-SERVICES -p %s -m comment --comment "%s has no local endpoints" -m addrtype --dst-type LOCAL -m %s --dport %d -j DROP`,
			s.Protocol, s.Name, s.Protocol, s.NodePort)
	}
	r.w(`-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP`)
	r.w(`-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT`)
	r.w(`-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`)
	r.w("COMMIT")
}

// spread writes chain's jumps to the endpoints' SEP chains as kube-proxy
// balances them: probabilities 1/n, 1/(n-1), ..., the last one catches all.
func spread(w func(string, ...any), chain string, s ServicePort, eps []netip.AddrPort, seps []string) {
	for j, sep := range seps {
		if left := len(seps) - j; left > 1 {
			w(`-A %s -m comment --comment "%s -> %s" -m statistic --mode random --probability %.11f -j %s`,
				chain, s.Name, eps[j], 1/float64(left), sep)
		} else {
			w(`-A %s -m comment --comment "%s -> %s" -j %s`, chain, s.Name, eps[j], sep)
		}
	}
}
