package main

import (
	"context"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/hgw-ebpf/hgw-ebpf/internal/lab"
)

// The verbs on a lab that `up` started, found by the prefix.

// onLab completes cmd, a verb on the running lab: its RunE finds the lab
// by the prefix and hands its state to run.
func (g *globals) onLab(cmd *cobra.Command, run func(cmd *cobra.Command, st *lab.State, args []string) error) *cobra.Command {
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		st, err := lab.LoadState(g.stateRoot, g.prefix)
		if err != nil {
			return fmt.Errorf("%w; start one with `hgw-lab up`", err)
		}
		return run(cmd, st, args)
	}
	return cmd
}

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

func newStatusCmd(g *globals) *cobra.Command {
	return g.onLab(&cobra.Command{
		Use:   "status",
		Short: "Show nodes, pods with their addresses, etcd leases and fast-path counters",
		Long: `Shows the running lab: each node with its address, pod subnet and agent, each
pod with its address, the subnet leases in etcd, and for each node the output
of 'hgw-ebpf status' run inside it (attachments, routes map, counters).`,
		Args: cobra.NoArgs,
	}, func(cmd *cobra.Command, st *lab.State, _ []string) error {
		return printStatus(cmd.Context(), cmd.OutOrStdout(), *st)
	})
}

func newExecCmd(g *globals) *cobra.Command {
	return g.onLab(&cobra.Command{
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
	}, func(cmd *cobra.Command, st *lab.State, args []string) error {
		return st.Exec(cmd.Context(), args[0], args[1:], os.Stdin, os.Stdout, os.Stderr)
	})
}

func newPingCmd(g *globals) *cobra.Command {
	var parallel int
	cmd := g.onLab(&cobra.Command{
		Use:   "ping",
		Short: "Ping every pod from every other pod and print the matrix",
		Long: `Sends one ICMP echo request ('ping -c 1 -W 1', retried once) from every pod to
every other pod, several at a time, and prints a matrix of round-trip times
(rows: source, columns: destination); in a dual-stack lab (up --dual-stack)
once over IPv4 and once over IPv6. Fails if any pair cannot reach the
other.`,
		Args: cobra.NoArgs,
	}, func(cmd *cobra.Command, st *lab.State, _ []string) error {
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
	})
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
