package main

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/containernetworking/cni/pkg/skel"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
)

// pod is what the bridge plugin's result says about one pod.
type pod struct {
	hostVeth string           // host-side veth, in the node's namespace
	podMAC   net.HardwareAddr // the pod's interface (ifName in its sandbox)
	ips      []netip.Addr     // the pod interface's addresses, IPv4 and IPv6
}

// podFromResult reads the pod's interface, its addresses (both families:
// a dual-stack pod has an endpoint entry for each) and the host end of its
// veth from the previous result: the sandbox interface named
// ifName, and the interface without a sandbox that is a veth in this
// namespace (the bridge plugin also lists the bridge itself).
func podFromResult(res *types100.Result, ifName string) (pod, error) {
	var p pod
	podIdx := -1
	for i, iface := range res.Interfaces {
		if iface.Sandbox != "" {
			if iface.Name == ifName || podIdx < 0 {
				podIdx = i
			}
			continue
		}
		l, err := netlink.LinkByName(iface.Name)
		if err != nil {
			continue // gone, or not ours to know
		}
		if _, ok := l.(*netlink.Veth); ok {
			p.hostVeth = iface.Name
		}
	}
	if podIdx < 0 {
		return pod{}, errors.New("prevResult lists no interface inside the pod's sandbox")
	}
	if p.hostVeth == "" {
		return pod{}, errors.New("prevResult lists no host-side veth present in this namespace")
	}
	mac, err := net.ParseMAC(res.Interfaces[podIdx].Mac)
	if err != nil {
		return pod{}, fmt.Errorf("MAC %q of pod interface %s: %w", res.Interfaces[podIdx].Mac, res.Interfaces[podIdx].Name, err)
	}
	p.podMAC = mac
	for _, ipc := range res.IPs {
		if ipc.Interface != nil && *ipc.Interface != podIdx {
			continue
		}
		if a, ok := routedAddr(ipc); ok {
			p.ips = append(p.ips, a)
		}
	}
	if len(p.ips) == 0 {
		return pod{}, errors.New("prevResult has no address for the pod")
	}
	return p, nil
}

// routedAddr is the pod address of one result IP, of either family;
// link-local addresses are the link's, never routed to a pod.
func routedAddr(ipc *types100.IPConfig) (netip.Addr, bool) {
	a, ok := netip.AddrFromSlice(ipc.Address.IP)
	if !ok {
		return netip.Addr{}, false
	}
	a = a.Unmap()
	return a, !a.IsLinkLocalUnicast()
}

// endpoints resolves the veth and its bridge (the pods' gateway) in this
// namespace and returns the map entries for the pod.
func (p pod) endpoints() ([]datapath.Endpoint, error) {
	veth, err := netlink.LinkByName(p.hostVeth)
	if err != nil {
		return nil, fmt.Errorf("look up host veth %s: %w", p.hostVeth, err)
	}
	master := veth.Attrs().MasterIndex
	if master == 0 {
		return nil, fmt.Errorf("host veth %s is on no bridge", p.hostVeth)
	}
	br, err := netlink.LinkByIndex(master)
	if err != nil {
		return nil, fmt.Errorf("look up bridge of %s: %w", p.hostVeth, err)
	}
	out := make([]datapath.Endpoint, 0, len(p.ips))
	for _, ip := range p.ips {
		out = append(out, datapath.Endpoint{
			IP: ip, Ifindex: uint32(veth.Attrs().Index), PodMAC: p.podMAC, GatewayMAC: br.Attrs().HardwareAddr,
		})
	}
	return out, nil
}

// chained makes verb the CNI command of ADD or CHECK, which both start
// from the netconf, the pod the previous plugin (bridge) reported, and the
// endpoints that pod should have.
func chained(verb func(req request, p pod, eps []datapath.Endpoint) error) func(*skel.CmdArgs) error {
	return withConf(func(req request) error {
		if req.prev == nil {
			return errNoPrevResult
		}
		p, err := podFromResult(req.prev, req.IfName)
		if err != nil {
			return err
		}
		eps, err := p.endpoints()
		if err != nil {
			return err
		}
		return verb(req, p, eps)
	})
}
