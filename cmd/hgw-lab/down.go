package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/hgw-ebpf/hgw-ebpf/internal/lab"
)

func newDownCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "down",
		Short: "Stop the lab and remove every namespace, process, pin and file of it",
		Long: `Stops the lab process (a foreground or detached 'up'), every process left in
the lab's namespaces (agents, iperf3 servers, shells from 'exec'), runs
'hgw-ebpf cleanup' for every node, and deletes the namespaces, the pins under
/sys/fs/bpf/<prefix> and the state directory. It finds the lab by its prefix,
so it also cleans up after a crash that lost the state file. Running it when
nothing is left is fine.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			err := lab.Down(cmd.Context(), lab.DownOptions{
				Prefix: g.prefix, StateRoot: g.stateRoot, BinDir: g.binDir, Log: g.logger(),
			})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "lab %q removed\n", g.prefix)
			return nil
		},
	}
}
