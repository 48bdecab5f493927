package lab

import (
	"context"
	"fmt"
)

// bandwidthPlugin is the CNI meta plugin that shapes a pod's traffic with
// tc on its host-side veth (egress: an ingress qdisc and a u32 filter that
// hand every frame to an ifb device with a tbf qdisc). It runs before
// hgw-cni: under tc attach mode it refuses a veth that already carries
// hgw-cni's clsact qdisc.
const bandwidthPlugin = "bandwidth"

func bandwidthConf() map[string]any {
	return map[string]any{"type": bandwidthPlugin, "capabilities": map[string]bool{"bandwidth": true}}
}

// AddPodWithEgressLimit is AddPod for a pod whose egress the bandwidth
// plugin limits to bitsPerSec, as kubelet asks for a pod annotated
// kubernetes.io/egress-bandwidth. The lab must chain the plugin
// (Config.Bandwidth).
func (l *Lab) AddPodWithEgressLimit(ctx context.Context, node string, bitsPerSec uint64) (Pod, error) {
	if !l.cfg.Bandwidth {
		return Pod{}, fmt.Errorf("add pod with an egress limit on %s: the lab does not chain the %s plugin", node, bandwidthPlugin)
	}
	if bitsPerSec == 0 {
		return Pod{}, fmt.Errorf("add pod with an egress limit on %s: the limit must be above 0 bit/s", node)
	}
	// A tenth of a second's worth, at least 64 KiB (a GSO packet must fit
	// the bucket): small beside a measurement over seconds.
	burst := max(bitsPerSec/10, 64<<10*8)
	return l.addPod(ctx, node, map[string]any{
		"bandwidth": map[string]uint64{"egressRate": bitsPerSec, "egressBurst": burst},
	})
}
