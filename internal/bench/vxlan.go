package bench

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/hgw-ebpf/hgw-ebpf/internal/lab"
	"github.com/hgw-ebpf/hgw-ebpf/internal/nldump"
)

// flannel's vxlan backend defaults: device flannel.<VNI>, VNI 1, the Linux
// port 8472 (not IANA's 4789), and the pod MTU lowered by the 50-byte
// VXLAN/UDP/IP/Ethernet header.
const (
	vxlanDev  = "flannel.1"
	vxlanVNI  = 1
	vxlanPort = 8472
	vxlanMTU  = 1450
)

// setUpVXLAN turns a static lab (host-gw routes the lab added) into what
// flanneld's vxlan backend leaves on each node: a flannel.1 VTEP on eth0
// holding <subnet>.0/32, and for every peer an on-link route
// `<peer subnet> via <peer subnet>.0 dev flannel.1 onlink`, a permanent
// neighbour entry for that gateway with the peer VTEP's MAC, and an FDB
// entry sending that MAC to the peer's eth0 address. The pods get MTU 1450
// as flannel's subnet file (FLANNEL_MTU) would give them.
func setUpVXLAN(st lab.State, log *slog.Logger) error {
	macs := map[string]net.HardwareAddr{}
	for _, n := range st.Nodes {
		mac, err := addVTEP(n)
		if err != nil {
			return err
		}
		macs[n.Name] = mac
	}
	for _, n := range st.Nodes {
		for _, peer := range st.Nodes {
			if peer.Name == n.Name {
				continue
			}
			if err := addVXLANPeer(n, peer, macs[peer.Name]); err != nil {
				return err
			}
		}
		if err := lowerPodMTU(n.Name, st.PodsOf(n.Name)); err != nil {
			return err
		}
		log.Info("vxlan ready", "node", n.Name, "dev", vxlanDev, "mac", macs[n.Name].String())
	}
	return nil
}

// vtepAddr is flannel's VTEP address: the network address of the subnet.
func vtepAddr(subnet string) (netip.Addr, netip.Prefix, error) {
	p, err := netip.ParsePrefix(subnet)
	if err != nil {
		return netip.Addr{}, netip.Prefix{}, fmt.Errorf("node subnet %q: %w", subnet, err)
	}
	return p.Masked().Addr(), p.Masked(), nil
}

func addVTEP(n lab.Node) (net.HardwareAddr, error) {
	h, err := lab.HandleAt(n.Name)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		return nil, fmt.Errorf("find eth0 in %s: %w", n.Name, err)
	}
	vx := &netlink.Vxlan{
		LinkAttrs:    netlink.LinkAttrs{Name: vxlanDev, MTU: vxlanMTU},
		VxlanId:      vxlanVNI,
		VtepDevIndex: eth0.Attrs().Index,
		SrcAddr:      net.ParseIP(n.IP),
		Port:         vxlanPort,
		Learning:     false, // flannel programs the FDB itself
	}
	if err := h.LinkAdd(vx); err != nil {
		return nil, fmt.Errorf("add %s in %s: %w", vxlanDev, n.Name, err)
	}
	addr, _, err := vtepAddr(n.Subnet)
	if err != nil {
		return nil, err
	}
	link, err := h.LinkByName(vxlanDev)
	if err != nil {
		return nil, fmt.Errorf("find %s in %s: %w", vxlanDev, n.Name, err)
	}
	ipn := &net.IPNet{IP: addr.AsSlice(), Mask: net.CIDRMask(32, 32)}
	if err := h.AddrAdd(link, &netlink.Addr{IPNet: ipn}); err != nil {
		return nil, fmt.Errorf("add %s to %s in %s: %w", ipn, vxlanDev, n.Name, err)
	}
	if err := h.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("set %s up in %s: %w", vxlanDev, n.Name, err)
	}
	return link.Attrs().HardwareAddr, nil
}

// addVXLANPeer programs n's route, neighbour and FDB entry for peer,
// replacing the host-gw route the static lab installed.
func addVXLANPeer(n, peer lab.Node, peerMAC net.HardwareAddr) error {
	h, err := lab.HandleAt(n.Name)
	if err != nil {
		return err
	}
	defer h.Close()
	link, err := h.LinkByName(vxlanDev)
	if err != nil {
		return fmt.Errorf("find %s in %s: %w", vxlanDev, n.Name, err)
	}
	idx := link.Attrs().Index
	gw, subnet, err := vtepAddr(peer.Subnet)
	if err != nil {
		return err
	}
	neigh := &netlink.Neigh{
		LinkIndex: idx, Family: unix.AF_INET, State: netlink.NUD_PERMANENT,
		IP: gw.AsSlice(), HardwareAddr: peerMAC,
	}
	if err := h.NeighSet(neigh); err != nil {
		return fmt.Errorf("neighbour %s in %s: %w", gw, n.Name, err)
	}
	fdb := &netlink.Neigh{
		LinkIndex: idx, Family: unix.AF_BRIDGE, State: netlink.NUD_PERMANENT, Flags: netlink.NTF_SELF,
		IP: net.ParseIP(peer.IP), HardwareAddr: peerMAC,
	}
	if err := h.NeighSet(fdb); err != nil {
		return fmt.Errorf("fdb %s dst %s in %s: %w", peerMAC, peer.IP, n.Name, err)
	}
	route := &netlink.Route{
		LinkIndex: idx,
		Dst:       &net.IPNet{IP: subnet.Addr().AsSlice(), Mask: net.CIDRMask(subnet.Bits(), 32)},
		Gw:        gw.AsSlice(),
		Flags:     int(netlink.FLAG_ONLINK),
	}
	if err := h.RouteReplace(route); err != nil {
		return fmt.Errorf("route %s via %s dev %s in %s: %w", subnet, gw, vxlanDev, n.Name, err)
	}
	return nil
}

// lowerPodMTU gives the pods' eth0 and their node-side veths (cni0's
// ports) flannel's vxlan MTU, as the CNI plugin would with FLANNEL_MTU=1450.
func lowerPodMTU(node string, pods []lab.Pod) error {
	h, err := lab.HandleAt(node)
	if err != nil {
		return err
	}
	defer h.Close()
	links, err := nldump.Retry(h.LinkList)
	if err != nil {
		return fmt.Errorf("list links in %s: %w", node, err)
	}
	var bridgeIdx int
	for _, l := range links {
		if l.Attrs().Name == "cni0" {
			bridgeIdx = l.Attrs().Index
		}
	}
	for _, l := range links {
		if bridgeIdx != 0 && l.Attrs().MasterIndex == bridgeIdx {
			if err := h.LinkSetMTU(l, vxlanMTU); err != nil {
				return fmt.Errorf("MTU of %s in %s: %w", l.Attrs().Name, node, err)
			}
		}
	}
	for _, p := range pods {
		ph, err := lab.HandleAt(p.Name)
		if err != nil {
			return err
		}
		l, err := ph.LinkByName("eth0")
		if err == nil {
			err = ph.LinkSetMTU(l, vxlanMTU)
		}
		ph.Close()
		if err != nil {
			return fmt.Errorf("MTU of eth0 in %s: %w", p.Name, err)
		}
	}
	return nil
}
