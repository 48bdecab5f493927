package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/hgw-ebpf/hgw-ebpf/internal/lab"
)

func newPingCmd(g *globals) *cobra.Command {
	var parallel int
	cmd := &cobra.Command{
		Use:   "ping",
		Short: "Ping every pod from every other pod and print the matrix",
		Long: `Sends one ICMP echo request ('ping -c 1 -W 1', retried once) from every pod to
every other pod, several at a time, and prints a matrix of round-trip times
(rows: source, columns: destination); in a dual-stack lab (up --dual-stack)
once over IPv4 and once over IPv6. Fails if any pair cannot reach the
other.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := g.loadState()
			if err != nil {
				return err
			}
			var failed, total int
			for _, r := range pingFamilies(*st) {
				if st.DualStack {
					fmt.Fprintf(cmd.OutOrStdout(), "%s:\n", r.name)
				}
				results := r.pingAll(cmd.Context(), parallel)
				bad := st.WriteMatrix(cmd.OutOrStdout(), results)
				for _, res := range results {
					if !res.OK {
						fmt.Fprintf(cmd.ErrOrStderr(), "%s -> %s (%s): %s\n", res.From, res.To, r.name, res.Output)
					}
				}
				failed, total = failed+bad, total+len(results)
			}
			if failed > 0 {
				return fmt.Errorf("%d of %d pairs failed", failed, total)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "all %d pairs OK\n", total)
			return nil
		},
	}
	cmd.Flags().IntVar(&parallel, "parallel", 32, "probes in flight at once")
	return cmd
}

// pingFamily is one address family over which every pod pings every other.
type pingFamily struct {
	name    string
	pingAll func(ctx context.Context, parallel int) []lab.PingResult
}

// pingFamilies are IPv4, and IPv6 after it in a dual-stack lab.
func pingFamilies(st lab.State) []pingFamily {
	fams := []pingFamily{{"IPv4", st.PingAll}}
	if st.DualStack {
		fams = append(fams, pingFamily{"IPv6", st.PingAll6})
	}
	return fams
}
