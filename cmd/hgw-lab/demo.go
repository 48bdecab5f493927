package main

import (
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/hgw-ebpf/hgw-ebpf/pkg/lab"
)

func newDemoCmd(g *globals) *cobra.Command {
	var lc labConfig
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Show the whole story on a 3-node lab, then remove it (under 2 minutes)",
		Long: `Builds a 3-node x 2-pod lab, shows the subnet leases in etcd, pings every pod
from every other pod (over IPv6 too with --dual-stack), runs a 3-second
iperf3 between pods on different nodes, shows the counters proving the BPF
programs forwarded that traffic and one node's routes maps (bpftool), then
removes the lab. 'make demo' runs it with --dual-stack.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			cfg, err := lc.config(g)
			if err != nil {
				return err
			}
			return lab.Demo(ctx, cfg, cmd.OutOrStdout())
		},
	}
	lc.addFlags(cmd, 3, 2)
	return cmd
}
