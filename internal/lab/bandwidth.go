package lab

import (
	"context"
	"fmt"
)

// bandwidthPlugin is the CNI meta plugin that shapes a pod's traffic with
// tc on its host-side veth: what the pod receives with a tbf root qdisc
// there, what it sends with an ingress qdisc and a u32 filter that hand
// every frame to an ifb device with a tbf. It runs before hgw-cni: under tc
// attach mode it refuses a veth that already carries hgw-cni's clsact qdisc.
const bandwidthPlugin = "bandwidth"

func bandwidthConf() map[string]any {
	return map[string]any{"type": bandwidthPlugin, "capabilities": map[string]bool{"bandwidth": true}}
}

// Limits are a pod's bandwidth limits in bit/s, 0 for none: Ingress what it
// receives, Egress what it sends (kubernetes.io/ingress-bandwidth and
// egress-bandwidth).
type Limits struct {
	Ingress, Egress uint64
}

// AddPodWithLimits is AddPod for a pod whose traffic the bandwidth plugin
// limits, as kubelet asks for one with bandwidth annotations. The lab must
// chain the plugin (Config.Bandwidth).
func (l *Lab) AddPodWithLimits(ctx context.Context, node string, lim Limits) (Pod, error) {
	if !l.cfg.Bandwidth {
		return Pod{}, fmt.Errorf("add pod with bandwidth limits on %s: the lab does not chain the %s plugin", node, bandwidthPlugin)
	}
	if lim.Ingress == 0 && lim.Egress == 0 {
		return Pod{}, fmt.Errorf("add pod with bandwidth limits on %s: no limit given", node)
	}
	args := map[string]uint64{}
	for dir, rate := range map[string]uint64{"ingress": lim.Ingress, "egress": lim.Egress} {
		if rate > 0 {
			// A tenth of a second's worth, at least 64 KiB (a GSO
			// packet must fit the bucket): small beside a measurement
			// over seconds.
			args[dir+"Rate"], args[dir+"Burst"] = rate, max(rate/10, 64<<10*8)
		}
	}
	return l.addPod(ctx, node, map[string]any{"bandwidth": args})
}
