package main

import (
	"fmt"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
)

// check verifies that every endpoint ADD wrote is in the map as the
// kernel sees the pod now, and that from_pods is attached to its veth. A
// pod ADD left to the bridge (no record) has nothing of ours to check.
func (pl plugin) check(req request, p pod, want []datapath.Endpoint) error {
	if rec, err := recordsOf(req.conf).read(req.ContainerID, req.IfName); err != nil || rec == nil {
		return err
	}
	maps, err := datapath.OpenPinned(req.conf.BPFFSRoot)
	if err != nil {
		return err
	}
	defer maps.Close()
	for _, w := range want {
		got, ok, err := maps.Endpoints().Get(w.IP)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("endpoint %s missing from the endpoints map under %s", w.IP, req.conf.BPFFSRoot)
		}
		if got.Ifindex != w.Ifindex || got.PodMAC.String() != w.PodMAC.String() || got.GatewayMAC.String() != w.GatewayMAC.String() {
			return fmt.Errorf("endpoint %s is {ifindex %d, pod %s, gateway %s}, want {ifindex %d, pod %s, gateway %s}",
				w.IP, got.Ifindex, got.PodMAC, got.GatewayMAC, w.Ifindex, w.PodMAC, w.GatewayMAC)
		}
	}
	atts, err := datapath.Attachments(req.conf.BPFFSRoot)
	if err != nil {
		return err
	}
	for _, a := range atts {
		if a.Dev == p.hostVeth && a.Program == datapath.FromPods && a.Ifindex == int(want[0].Ifindex) {
			return nil
		}
	}
	return fmt.Errorf("%s is not attached to host veth %s", datapath.FromPods, p.hostVeth)
}
