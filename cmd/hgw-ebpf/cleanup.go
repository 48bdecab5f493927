package main

import (
	"fmt"
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/hgw-ebpf/hgw-ebpf/pkg/datapath"
)

func newCleanupCmd() *cobra.Command {
	var root string
	cmd := &cobra.Command{
		Use:   "cleanup",
		Short: "Detach the programs and remove the pinned maps and links",
		Long: `Removes the datapath state under --bpffs-root: detaches both programs (tcx
links and tc filters) and deletes the pinned maps. Traffic continues over the
kernel routes. Safe to run twice or on a node with nothing installed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := datapath.Cleanup(root); err != nil {
				return fmt.Errorf("cleanup %s: %w", root, err)
			}
			slog.Info("datapath removed", "pin_root", root)
			return nil
		},
	}
	addPinRootFlag(cmd, &root)
	return cmd
}
