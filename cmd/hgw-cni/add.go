package main

import (
	"fmt"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/hgw-ebpf/hgw-ebpf/pkg/datapath"
)

// cmdAdd writes the pod's endpoints, then attaches from_pods to its veth
// (in that order: the program takes a pod's frames at its veth only once
// it knows the pod), and passes the previous result on unchanged.
func cmdAdd(args *skel.CmdArgs) error {
	conf, p, eps, err := chainedPod(args)
	if err != nil {
		return err
	}
	// Loading the programs over the pinned maps (creating them if no agent
	// ran yet) gives a program to attach without any agent running.
	dp, err := datapath.Load(datapath.Options{PinRoot: conf.BPFFSRoot, Mode: datapath.Mode(conf.AttachMode)})
	if err != nil {
		return err
	}
	defer dp.Close()
	for _, ep := range eps {
		if err := dp.Endpoints().Put(ep); err != nil {
			return err
		}
	}
	if _, err := dp.Attach(p.hostVeth, datapath.FromPods); err != nil {
		return fmt.Errorf("pod %s: %w", args.ContainerID, err)
	}
	return types.PrintResult(conf.PrevResult, conf.CNIVersion)
}
