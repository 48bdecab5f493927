// Command hgw-cni is a chained CNI plugin, listed after `bridge` in a
// conflist: it tells the hgw-ebpf datapath about each pod the bridge plugin
// attached, so that packets for the pod are handed straight into its
// namespace (bpf_redirect_peer) and its own packets are taken at its veth.
//
// ADD writes the pod's endpoint (IPv4, host-side veth, pod MAC, gateway MAC)
// into the pinned `endpoints` map and attaches from_pods to the host-side
// veth; DEL removes both; CHECK verifies them. It needs no running agent,
// only bpffs and kernel >= 6.6 for tcx (older kernels: tc filters).
//
// Network configuration (besides the standard fields):
//
//	"bpffsRoot": the agent's --bpffs-root (default /sys/fs/bpf/hgw)
//	"attachMode": auto (default), tcx or tc
package main

import (
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"
)

// buildVersion is set by the build (-X main.buildVersion=...).
var buildVersion = "dev"

func main() {
	skel.PluginMainFuncs(skel.CNIFuncs{Add: cmdAdd, Del: cmdDel, Check: cmdCheck},
		version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"),
		"hgw-cni "+buildVersion+": hgw-ebpf endpoint fast path (chained after bridge)")
}
