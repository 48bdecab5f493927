package main

import (
	"github.com/spf13/cobra"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
)

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "hgw-ebpf",
		Short: "eBPF fast path for flannel host-gw clusters",
		Long: `hgw-ebpf replaces flanneld's host-gw backend on a node: it registers the
node's pod subnet in etcd exactly as flanneld does, installs the same kernel
routes to every other node's subnet, and adds TC eBPF programs on the bridge
and the underlay device that forward cross-node pod traffic directly
(bpf_redirect_neigh), skipping the bridge, the FIB walk and netfilter. The
kernel routes stay in place as the fallback.`,
		SilenceUsage: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return applyEnv(cmd)
		},
	}
	root.AddCommand(newVersionCmd(), newStatusCmd(), newCleanupCmd(), newStatsCmd(), newRoutesCmd(), newRunCmd())
	documentEnv(root)
	return root
}

// addPinRootFlag registers --bpffs-root, shared by every command that
// touches the pinned state.
func addPinRootFlag(cmd *cobra.Command, root *string) {
	cmd.Flags().StringVar(root, "bpffs-root", datapath.DefaultPinRoot,
		"bpffs directory holding the agent's pinned maps and links")
}
