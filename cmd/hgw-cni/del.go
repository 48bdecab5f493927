package main

import (
	"errors"
	"fmt"
	"net/netip"
	"os"

	"github.com/containernetworking/cni/pkg/skel"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/hgw-ebpf/hgw-ebpf/pkg/datapath"
)

// cmdDel removes what ADD added, as far as the (cached) previous result
// names it; whatever is already gone is fine, so DEL can run any number of
// times. Without a previous result there is nothing to identify the pod by:
// the agent's reconciliation removes entries whose veth is gone.
func cmdDel(args *skel.CmdArgs) error {
	conf, res, err := parseConf(args.StdinData)
	if err != nil {
		return err
	}
	if res == nil {
		return nil
	}
	maps, err := datapath.OpenPinned(conf.BPFFSRoot)
	if errors.Is(err, os.ErrNotExist) {
		return nil // no datapath here: nothing was added
	}
	if err != nil {
		return err
	}
	defer maps.Close()

	var errs []error
	vethIndex := 0
	for _, iface := range res.Interfaces {
		if iface.Sandbox != "" {
			continue
		}
		l, err := netlink.LinkByName(iface.Name)
		var notFound netlink.LinkNotFoundError
		switch {
		case errors.As(err, &notFound):
			// Gone with the pod: only a pin may be left.
		case err != nil:
			errs = append(errs, fmt.Errorf("look up %s: %w", iface.Name, err))
			continue
		default:
			if _, ok := l.(*netlink.Veth); !ok {
				continue // the bridge: its attachment is the agent's
			}
			vethIndex = l.Attrs().Index
		}
		if err := datapath.DetachPinned(conf.BPFFSRoot, iface.Name, datapath.FromPods); err != nil {
			errs = append(errs, err)
		}
	}
	for _, ip := range podIPv4s(res) {
		if err := deleteEndpoint(maps.Endpoints(), ip, vethIndex); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// deleteEndpoint removes ip's entry if it is this pod's: on its veth, or on
// a veth that no longer exists. An entry on another live veth belongs to a
// newer pod that got the address since.
func deleteEndpoint(eps *datapath.EndpointMap, ip netip.Addr, vethIndex int) error {
	ep, ok, err := eps.Get(ip)
	if err != nil || !ok {
		return err
	}
	if vethIndex == 0 || int(ep.Ifindex) != vethIndex {
		if _, err := netlink.LinkByIndex(int(ep.Ifindex)); err == nil {
			return nil
		}
	}
	// Only the entry judged above: a pod ADDed meanwhile keeps its own.
	_, err = eps.DeleteIf(ep)
	return err
}

// podIPv4s is every IPv4 address of the result that is on a sandbox
// interface (or on no interface in particular).
func podIPv4s(res *types100.Result) []netip.Addr {
	var out []netip.Addr
	for _, ipc := range res.IPs {
		if ipc.Interface != nil && (*ipc.Interface < 0 || *ipc.Interface >= len(res.Interfaces) || res.Interfaces[*ipc.Interface].Sandbox == "") {
			continue
		}
		if a, ok := netip.AddrFromSlice(ipc.Address.IP.To4()); ok && ipc.Address.IP.To4() != nil {
			out = append(out, a)
		}
	}
	return out
}
