package lab

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/hgw-ebpf/hgw-ebpf/internal/namedns"
)

// createUnderlay creates the underlay namespace with bridge br0 holding
// 198.18.0.1/24 (and fd00:198:18::1/64 with dualStack). It has no uplink
// and forwarding stays off there, so nothing a node sends to it can go
// further.
func createUnderlay(name string, dualStack bool) error {
	if err := namedns.Create(name); err != nil {
		return err
	}
	if err := withoutDAD(name, dualStack); err != nil {
		return err
	}
	h, err := HandleAt(name)
	if err != nil {
		return err
	}
	defer h.Close()
	if err := linkUp(h, "lo"); err != nil {
		return err
	}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: underlayBridge}}
	if err := h.LinkAdd(br); err != nil {
		return fmt.Errorf("add %s in %s: %w", underlayBridge, name, err)
	}
	if err := addAddr(h, underlayBridge, netip.PrefixFrom(underlayGateway, underlayNet.Bits())); err != nil {
		return err
	}
	if dualStack {
		if err := addAddr(h, underlayBridge, netip.PrefixFrom(underlayGateway6, underlayNet6.Bits())); err != nil {
			return err
		}
	}
	return linkUp(h, underlayBridge)
}

// withoutDAD makes the IPv6 devices created in namespace ns from now on
// skip duplicate address detection, which would keep each address
// unusable for a second or two: the lab's addresses are unique by
// construction. Nothing to do without IPv6 in the lab.
func withoutDAD(ns string, dualStack bool) error {
	if !dualStack {
		return nil
	}
	return setSysctl(ns, "net/ipv6/conf/default/accept_dad", "0")
}

// createNode creates node k's namespace: eth0 (a veth whose peer is plugged
// into the underlay bridge) with 198.18.0.(10+k)/24, lo up, and ip_forward
// on; with dualStack also fd00:198:18::(10+k)/64 and IPv6 forwarding on.
// No default route: the agents get --iface and --public-ip explicitly,
// and the underlay leads nowhere, so a default route would only pretend.
func createNode(underlay, name string, k int, dualStack bool) error {
	if err := namedns.Create(name); err != nil {
		return err
	}
	if err := withoutDAD(name, dualStack); err != nil {
		return err
	}
	addrs := []netip.Prefix{netip.PrefixFrom(nodeIP(k), underlayNet.Bits())}
	if dualStack {
		addrs = append(addrs, netip.PrefixFrom(nodeIP6(k), underlayNet6.Bits()))
	}
	if err := plugIntoUnderlay(underlay, name, underlayPort(k), addrs...); err != nil {
		return err
	}
	if dualStack {
		if err := setSysctl(name, "net/ipv6/conf/all/forwarding", "1"); err != nil {
			return err
		}
	}
	return setSysctl(name, "net/ipv4/ip_forward", "1")
}

// createInternet creates the namespace standing for the world outside the
// cluster: eth0 with InternetIP on the underlay, no route beyond it (so no
// route to a pod subnet), no forwarding.
func createInternet(underlay, name string) error {
	if err := namedns.Create(name); err != nil {
		return err
	}
	return plugIntoUnderlay(underlay, name, internetPort, netip.PrefixFrom(InternetIP, underlayNet.Bits()))
}

// plugIntoUnderlay gives namespace name an eth0 with addrs whose veth
// peer, port, is plugged into the underlay bridge; lo and eth0 come up.
func plugIntoUnderlay(underlay, name, port string, addrs ...netip.Prefix) error {
	ulNs, err := netns.GetFromName(underlay)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", underlay, err)
	}
	defer ulNs.Close()
	nodeNs, err := netns.GetFromName(name)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", name, err)
	}
	defer nodeNs.Close()

	ul, err := netlink.NewHandleAt(ulNs)
	if err != nil {
		return fmt.Errorf("netlink handle in %s: %w", underlay, err)
	}
	defer ul.Close()
	// Both ends are created directly in their namespaces: nothing appears in
	// the root namespace, not even for a moment.
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: port},
		PeerName:      nodeUplink,
		PeerNamespace: netlink.NsFd(nodeNs),
	}
	if err := ul.LinkAdd(veth); err != nil {
		return fmt.Errorf("add veth %s/%s for %s: %w", port, nodeUplink, name, err)
	}
	br, err := ul.LinkByName(underlayBridge)
	if err != nil {
		return fmt.Errorf("find %s in %s: %w", underlayBridge, underlay, err)
	}
	portLink, err := ul.LinkByName(port)
	if err != nil {
		return fmt.Errorf("find %s in %s: %w", port, underlay, err)
	}
	if err := ul.LinkSetMaster(portLink, br); err != nil {
		return fmt.Errorf("plug %s into %s: %w", port, underlayBridge, err)
	}
	if err := ul.LinkSetUp(portLink); err != nil {
		return fmt.Errorf("set %s up: %w", port, err)
	}

	h, err := netlink.NewHandleAt(nodeNs)
	if err != nil {
		return fmt.Errorf("netlink handle in %s: %w", name, err)
	}
	defer h.Close()
	if err := linkUp(h, "lo"); err != nil {
		return err
	}
	for _, addr := range addrs {
		if err := addAddr(h, nodeUplink, addr); err != nil {
			return err
		}
	}
	return linkUp(h, nodeUplink)
}

// removeUnderlayPort deletes node k's veth (and so the node's eth0) before
// the node namespace goes, so the underlay bridge forgets it at once.
func removeUnderlayPort(underlay string, k int) error {
	h, err := HandleAt(underlay)
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(underlayPort(k))
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("find %s in %s: %w", underlayPort(k), underlay, err)
	}
	if err := h.LinkDel(l); err != nil {
		return fmt.Errorf("delete %s in %s: %w", underlayPort(k), underlay, err)
	}
	return nil
}

// setSysctl writes a sysctl of the named namespace. /proc/sys/net resolves
// against the writing thread's namespace, so the write happens on a thread
// inside it: the root namespace's value is never touched.
func setSysctl(ns, key, value string) error {
	return namedns.Do(ns, func() error {
		path := "/proc/sys/" + key
		if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
			return fmt.Errorf("sysctl %s=%s in %s: %w", key, value, ns, err)
		}
		return nil
	})
}

// readSysctl reads a sysctl of the named namespace.
func readSysctl(ns, key string) (string, error) {
	var out string
	err := namedns.Do(ns, func() error {
		b, err := os.ReadFile("/proc/sys/" + key)
		if err != nil {
			return fmt.Errorf("read sysctl %s in %s: %w", key, ns, err)
		}
		out = string(b)
		return nil
	})
	return out, err
}

func linkUp(h *netlink.Handle, name string) error {
	l, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find %s: %w", name, err)
	}
	if err := h.LinkSetUp(l); err != nil {
		return fmt.Errorf("set %s up: %w", name, err)
	}
	return nil
}

func addAddr(h *netlink.Handle, dev string, p netip.Prefix) error {
	l, err := h.LinkByName(dev)
	if err != nil {
		return fmt.Errorf("find %s: %w", dev, err)
	}
	a := &netlink.Addr{IPNet: prefixIPNet(p)}
	if p.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD // see withoutDAD
	}
	if err := h.AddrAdd(l, a); err != nil {
		return fmt.Errorf("add %s to %s: %w", p, dev, err)
	}
	return nil
}

// prefixIPNet keeps the address bits (an interface address, not a network).
func prefixIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
