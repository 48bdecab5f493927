package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
)

// status fails (50, plugin not available) while ADD could not put a pod
// on the fast path: no datapath pinned (the agent never ran on this node),
// or maps of another version's layout.
func (pl plugin) status(req request) error {
	maps, err := datapath.OpenPinned(req.conf.BPFFSRoot)
	if err == nil {
		return maps.Close()
	}
	var msg string
	switch {
	case errors.Is(err, os.ErrNotExist):
		msg = fmt.Sprintf("no hgw-ebpf datapath pinned under %s: the agent has not run on this node", req.conf.BPFFSRoot)
	case errors.Is(err, datapath.ErrLayoutMismatch):
		msg = fmt.Sprintf("the maps pinned under %s are another version's: run hgw-ebpf and hgw-cni of one version", req.conf.BPFFSRoot)
	default:
		msg = fmt.Sprintf("the datapath pinned under %s is unusable", req.conf.BPFFSRoot)
	}
	return types.NewError(types.ErrPluginNotAvailable, msg, err.Error())
}
