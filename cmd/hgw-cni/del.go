package main

import (
	"errors"
	"fmt"
	"net/netip"
	"os"

	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
)

// del removes what ADD added, as the previous result names it, else as
// ADD's record does; whatever is already gone is fine, so DEL can run any
// number of times. With neither there is nothing to identify the pod by:
// the agent's reconciliation removes entries whose veth is gone.
func (pl plugin) del(req request) error {
	recs := recordsOf(req.conf)
	rec, err := recs.read(req.ContainerID, req.IfName)
	if err != nil {
		// Not ours to fail on: DEL must succeed to let the pod go.
		pl.log.Warn("attachment record unreadable, ignored", "container", req.ContainerID, "err", err)
	}
	var a attachment
	switch {
	case req.prev != nil:
		a, err = attachmentOfResult(req.prev)
	case rec != nil:
		a, err = attachmentOfRecord(*rec)
	default:
		return nil
	}
	if err != nil {
		return err
	}
	if err := pl.release(req.conf.BPFFSRoot, a); err != nil {
		return err
	}
	return recs.remove(req.ContainerID, req.IfName)
}

// attachment is what one pod got from ADD: from_pods on its host veths
// (index 0: gone, or the name is another veth's now) and endpoint
// entries for its addresses.
type attachment struct {
	veths []hostVeth
	ips   []netip.Addr
}

type hostVeth struct {
	name  string
	index int
}

// attachmentOfResult reads the host veths and the pod's addresses from
// the previous result (the bridge plugin also lists the bridge itself).
func attachmentOfResult(res *types100.Result) (attachment, error) {
	var a attachment
	for _, iface := range res.Interfaces {
		if iface.Sandbox != "" {
			continue
		}
		l, err := netlink.LinkByName(iface.Name)
		var notFound netlink.LinkNotFoundError
		switch {
		case errors.As(err, &notFound):
			a.veths = append(a.veths, hostVeth{name: iface.Name}) // gone with the pod: only a pin may be left
		case err != nil:
			return attachment{}, fmt.Errorf("look up %s: %w", iface.Name, err)
		default:
			if _, ok := l.(*netlink.Veth); ok {
				a.veths = append(a.veths, hostVeth{name: iface.Name, index: l.Attrs().Index})
			}
		}
	}
	a.ips = podAddrs(res)
	return a, nil
}

// attachmentOfRecord is the attachment ADD recorded. A veth of that name
// with another index is a newer pod's: not ours to detach.
func attachmentOfRecord(r record) (attachment, error) {
	var a attachment
	for _, ep := range r.Endpoints {
		a.ips = append(a.ips, ep.IP)
	}
	l, err := netlink.LinkByName(r.HostVeth)
	var notFound netlink.LinkNotFoundError
	switch {
	case errors.As(err, &notFound):
		a.veths = append(a.veths, hostVeth{name: r.HostVeth})
	case err != nil:
		return attachment{}, fmt.Errorf("look up %s: %w", r.HostVeth, err)
	case len(r.Endpoints) > 0 && l.Attrs().Index == int(r.Endpoints[0].Ifindex):
		a.veths = append(a.veths, hostVeth{name: r.HostVeth, index: l.Attrs().Index})
	}
	return a, nil
}

// release detaches from_pods from the attachment's veths and removes its
// endpoint entries. Maps of another version's layout are the agent's to
// clean: only the link pins go then.
func (pl plugin) release(root string, a attachment) error {
	maps, err := datapath.OpenPinned(root)
	if errors.Is(err, os.ErrNotExist) {
		return nil // no datapath here: nothing was added
	}
	if err != nil && !errors.Is(err, datapath.ErrLayoutMismatch) {
		return err
	}
	var errs []error
	vethIndex := 0
	for _, v := range a.veths {
		if err := datapath.DetachPinned(root, v.name, datapath.FromPods); err != nil {
			errs = append(errs, err)
		}
		if v.index != 0 {
			vethIndex = v.index
		}
	}
	if maps == nil {
		pl.log.Warn("pinned maps are another version's: the pod's endpoint entries are left to the agent", "pin_root", root, "err", err)
		return errors.Join(errs...)
	}
	defer maps.Close()
	for _, ip := range a.ips {
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

// podAddrs is every address of the result (both families) that is on a
// sandbox interface (or on no interface in particular).
func podAddrs(res *types100.Result) []netip.Addr {
	var out []netip.Addr
	for _, ipc := range res.IPs {
		if ipc.Interface != nil && (*ipc.Interface < 0 || *ipc.Interface >= len(res.Interfaces) || res.Interfaces[*ipc.Interface].Sandbox == "") {
			continue
		}
		if a, ok := routedAddr(ipc); ok {
			out = append(out, a)
		}
	}
	return out
}
