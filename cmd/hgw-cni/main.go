// Command hgw-cni is a chained CNI plugin, listed after `bridge` in a
// conflist: it tells the hgw-ebpf datapath about each pod the bridge plugin
// attached, so that packets for the pod are handed straight into its
// namespace (bpf_redirect_peer) and its own packets are taken at its veth.
//
// ADD writes the pod's endpoints (one per address, IPv4 and IPv6; host-side
// veth, pod MAC, gateway MAC) into the `endpoints` map the agent pinned and attaches from_pods to the
// host-side veth; DEL removes both; CHECK verifies them; GC removes them
// for attachments the runtime no longer lists; STATUS fails while no
// usable datapath is pinned. The maps are the agent's: ADD never creates
// or replaces them. Where the agent has not run yet, or pinned maps of
// another version's layout, ADD leaves the pod to the bridge (logged on
// stderr, with the reason) and the agent puts it on the fast path later.
// No agent has to be running: a pod created while it restarts is served
// at once. Kernel >= 6.6 for tcx (older kernels: tc filters).
//
// Network configuration (besides the standard fields):
//
//	"bpffsRoot": the agent's --bpffs-root (default /sys/fs/bpf/hgw)
//	"attachMode": auto (default), tcx or tc
//	"dataDir": where ADD records what it wrote for each attachment, for
//	           DEL and GC (default /run/hgw-cni; tmpfs, like the pins)
package main

import (
	"log/slog"
	"os"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"
)

// buildVersion is set by the build (-X main.buildVersion=...).
var buildVersion = "dev"

// plugin carries what every command needs: where to say what happened.
// The runtime keeps a plugin's stderr in its own log.
type plugin struct {
	log *slog.Logger
}

func main() {
	pl := plugin{log: slog.New(slog.NewTextHandler(os.Stderr, nil)).With("plugin", "hgw-cni")}
	cmds := skel.CNIFuncs{
		Add: chained(pl.add), Check: chained(pl.check),
		Del: withConf(pl.del), GC: withConf(pl.gc), Status: withConf(pl.status),
	}
	skel.PluginMainFuncs(cmds, version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"),
		"hgw-cni "+buildVersion+": hgw-ebpf endpoint fast path (chained after bridge)")
}
