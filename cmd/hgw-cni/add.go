package main

import (
	"errors"
	"fmt"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
)

// add records the attachment, writes the pod's endpoints, then attaches
// from_pods to its veth (in that order: the program takes a pod's frames
// at its veth only once it knows the pod), and passes the previous result
// on unchanged. Without usable pins it leaves the pod to the bridge.
func (pl plugin) add(req request, p pod, eps []datapath.Endpoint) error {
	// Over the agent's pins only: a plugin of another version must not
	// replace the maps live traffic uses, nor make maps no agent fills.
	dp, err := datapath.Load(datapath.Options{PinRoot: req.conf.BPFFSRoot, Mode: datapath.Mode(req.conf.AttachMode), Existing: true})
	if reason, msg := stepAside(err); reason != "" {
		pl.log.Warn(msg, "reason", reason, "container", req.ContainerID, "dev", p.hostVeth, "pin_root", req.conf.BPFFSRoot, "err", err)
		return types.PrintResult(req.conf.PrevResult, req.conf.CNIVersion)
	}
	if err != nil {
		return err
	}
	defer dp.Close()
	// The agent's endpoint reconciler may attach this veth at the same
	// moment; the lock makes one of us find the other's link and update it.
	unlock, err := datapath.LockPinRoot(req.conf.BPFFSRoot)
	if err != nil {
		return err
	}
	defer unlock()
	// Recorded first, so that whatever this ADD leaves behind if it stops
	// half way can be found by DEL and GC.
	rec := record{ContainerID: req.ContainerID, IfName: req.IfName, BPFFSRoot: req.conf.BPFFSRoot, HostVeth: p.hostVeth, Endpoints: eps}
	if err := recordsOf(req.conf).write(rec); err != nil {
		return err
	}
	for _, ep := range eps {
		if err := dp.Endpoints().Put(ep); err != nil {
			return err
		}
	}
	if _, err := dp.Attach(p.hostVeth, datapath.FromPods); err != nil {
		return fmt.Errorf("pod %s: %w", req.ContainerID, err)
	}
	return types.PrintResult(req.conf.PrevResult, req.conf.CNIVersion)
}

// stepAside says why ADD leaves a pod to the bridge ("" if it does not).
func stepAside(loadErr error) (reason, msg string) {
	switch {
	case errors.Is(loadErr, datapath.ErrNotPinned):
		return "not_pinned", "no hgw-ebpf datapath pinned yet: the pod is served over the bridge; the agent puts it on the fast path once it runs"
	case errors.Is(loadErr, datapath.ErrLayoutMismatch):
		return "layout_mismatch", "the pinned maps are another version's: fast path skipped for this pod, it is served over the bridge (run agent and plugin of one version)"
	}
	return "", ""
}
