package main

import (
	"fmt"

	"github.com/spf13/cobra"
)

func newPingCmd(g *globals) *cobra.Command {
	var parallel int
	cmd := &cobra.Command{
		Use:   "ping",
		Short: "Ping every pod from every other pod and print the matrix",
		Long: `Sends one ICMP echo request ('ping -c 1 -W 1', retried once) from every pod to
every other pod, several at a time, and prints a matrix of round-trip times
(rows: source, columns: destination). Fails if any pair cannot reach the
other.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := g.loadState()
			if err != nil {
				return err
			}
			results := st.PingAll(cmd.Context(), parallel)
			failed := st.WriteMatrix(cmd.OutOrStdout(), results)
			if failed > 0 {
				for _, r := range results {
					if !r.OK {
						fmt.Fprintf(cmd.ErrOrStderr(), "%s -> %s: %s\n", r.From, r.To, r.Output)
					}
				}
				return fmt.Errorf("%d of %d pairs failed", failed, len(results))
			}
			fmt.Fprintf(cmd.OutOrStdout(), "all %d pairs OK\n", len(results))
			return nil
		},
	}
	cmd.Flags().IntVar(&parallel, "parallel", 32, "probes in flight at once")
	return cmd
}
