package agent

import (
	"context"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
	"github.com/hgw-ebpf/hgw-ebpf/internal/endpoints"
)

// runEndpoints keeps the endpoints map and the per-pod from_pods
// attachments in line with the bridge's pods as the kernel sees them, next
// to (and independent of) the hgw-cni plugin.
func (n *node) runEndpoints(ctx context.Context) error {
	r, err := endpoints.New(endpoints.Options{
		Bridge: n.cfg.Bridge, PinRoot: n.cfg.PinRoot, Map: n.dp.Endpoints(),
		Attach: func(dev string) error {
			_, err := n.programs().Attach(dev, datapath.FromPods)
			return err
		},
		ResyncInterval: n.cfg.ResyncInterval, Log: n.log,
	})
	if err != nil {
		return err
	}
	defer r.Close()
	return r.Run(ctx)
}
