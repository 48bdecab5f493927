package lab

import (
	"fmt"
	"net/netip"
)

// The services a lab with Config.KubeProxy defines, all backed by the
// first pod of the last node (so that every other node's NodePorts lead to
// a backend on another node): HTTP on BackendHTTPPort and iperf3 on
// BackendIperfPort in that pod, each behind a ClusterIP and a NodePort, with
// externalTrafficPolicy Cluster and Local; and a DNS-like UDP ClusterIP
// (ServiceDNSIP:53) to BackendDNSPort there.
const (
	BackendHTTPPort  = 8080
	BackendIperfPort = 5201
	BackendDNSPort   = 5353
)

var (
	// ServiceIP is the ClusterIP of the eTP=Cluster service, ServiceLocalIP
	// the one of the eTP=Local service.
	ServiceIP      = netip.MustParseAddr("10.96.0.10")
	ServiceLocalIP = netip.MustParseAddr("10.96.0.11")
	ServiceDNSIP   = netip.MustParseAddr("10.96.0.53")
)

// Service port names (kube-proxy's "namespace/name:port").
const (
	SvcHTTP       = "hgw/web:http"
	SvcIperf      = "hgw/web:iperf"
	SvcLocalHTTP  = "hgw/web-local:http"
	SvcLocalIperf = "hgw/web-local:iperf"
	SvcDNS        = "hgw/dns:dns"
)

// labServices are the lab's services with backend as their one endpoint.
func labServices(backend netip.Addr) []ServicePort {
	http := []netip.AddrPort{netip.AddrPortFrom(backend, BackendHTTPPort)}
	iperf := []netip.AddrPort{netip.AddrPortFrom(backend, BackendIperfPort)}
	dns := []netip.AddrPort{netip.AddrPortFrom(backend, BackendDNSPort)}
	return []ServicePort{
		{Name: SvcDNS, Protocol: "udp", ClusterIP: ServiceDNSIP, Port: 53, Endpoints: dns},
		{Name: SvcHTTP, Protocol: "tcp", ClusterIP: ServiceIP, Port: 80, NodePort: 30080, Endpoints: http},
		{Name: SvcIperf, Protocol: "tcp", ClusterIP: ServiceIP, Port: 5201, NodePort: 30201, Endpoints: iperf},
		{Name: SvcLocalHTTP, Protocol: "tcp", ClusterIP: ServiceLocalIP, Port: 80, NodePort: 30081, LocalOnly: true, Endpoints: http},
		{Name: SvcLocalIperf, Protocol: "tcp", ClusterIP: ServiceLocalIP, Port: 5201, NodePort: 30202, LocalOnly: true, Endpoints: iperf},
	}
}

// Service returns the lab's service port with this name.
func (s State) Service(name string) (ServicePort, bool) {
	for _, sp := range s.Services {
		if sp.Name == name {
			return sp, true
		}
	}
	return ServicePort{}, false
}

// loadKubeProxy gives every node kube-proxy's rules for the lab's services
// (and Config.KubeServices synthetic ones), with bridged packets sent
// through iptables as kube-proxy requires (bridge-nf-call-iptables=1).
func (l *Lab) loadKubeProxy() error {
	st := l.State()
	if len(st.Nodes) == 0 {
		return nil
	}
	backends := st.PodsOf(st.Nodes[len(st.Nodes)-1].Name)
	if len(backends) == 0 {
		return fmt.Errorf("kube-proxy rules: node %s has no pod to back the services", st.Nodes[len(st.Nodes)-1].Name)
	}
	svcs := labServices(netip.MustParseAddr(backends[0].IP))
	var subnets []netip.Prefix
	for _, n := range st.Nodes {
		subnets = append(subnets, netip.MustParsePrefix(n.Subnet))
	}
	for i, n := range st.Nodes {
		rules, err := KubeProxyRules(KubeNode{
			ClusterCIDR: clusterNetwork, NodeSubnet: subnets[i], Services: svcs,
			Synthetic: l.cfg.KubeServices, PodSubnets: subnets,
		})
		if err != nil {
			return err
		}
		if out, err := iptablesRestore(n.Name, rules); err != nil {
			return fmt.Errorf("load kube-proxy rules into %s: %w: %s", n.Name, err, out)
		}
		if err := setSysctl(n.Name, "net/bridge/bridge-nf-call-iptables", "1"); err != nil {
			return fmt.Errorf("kube-proxy needs br_netfilter: %w", err)
		}
	}
	l.mu.Lock()
	l.state.Services = svcs
	l.mu.Unlock()
	return l.saveState()
}
