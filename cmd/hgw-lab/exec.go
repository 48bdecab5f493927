package main

import (
	"os"

	"github.com/spf13/cobra"
)

func newExecCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "exec NODE|POD -- CMD [ARG...]",
		Short: "Run a command inside a node's or a pod's network namespace",
		Long: `Runs CMD inside the network namespace of a node (n1, or its full name
hgwlab-n1), a pod (n1-p2) or the underlay (ul). Only the network namespace
changes: the file system, /sys/fs/bpf included, is the host's. The exit code
is CMD's.`,
		Example: `  hgw-lab exec n1 -- ip route
  hgw-lab exec n1-p1 -- ping -c 3 10.244.2.2
  hgw-lab exec n2 -- hgw-ebpf status --bpffs-root /sys/fs/bpf/hgwlab/hgwlab-n2
  hgw-lab exec n1-p1 -- bash`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := g.loadState()
			if err != nil {
				return err
			}
			return st.Exec(cmd.Context(), args[0], args[1:], os.Stdin, os.Stdout, os.Stderr)
		},
	}
}
