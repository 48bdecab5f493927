package main

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/hgw-ebpf/hgw-ebpf/pkg/bench"
)

func newBenchCmd(g *globals) *cobra.Command {
	var (
		o       bench.Options
		cniPath string
	)
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure host, routes, ebpf and vxlan side by side (dataplane)",
		Long: `Brings up one small lab per datapath at once (2 nodes x 1 pod each, own
underlay namespace, prefixes <prefix>r, <prefix>e, <prefix>n, <prefix>x), then measures
interleaved round by round, on bare nodes and on nodes carrying kube-proxy's
iptables state for --services services:

  host    node1 eth0 -> node2 eth0 (routes lab): the physical limit here
  routes  pod -> pod, 'hgw-ebpf run --datapath routes' (plain host-gw)
  ebpf    pod -> pod, 'hgw-ebpf run'
  ebpf-noct  the same with --unsafe-ignore-conntrack: what the conntrack
          check costs
  vxlan   pod -> pod over flannel.1 (VNI 1, port 8472, MTU 1450), no agent

Figures: iperf3 TCP throughput; sockperf ping-pong RTT p50/p99, TCP and UDP,
client and server pinned to the same CPU; new TCP connections per second;
machine-wide kernel CPU time per packet at a fixed UDP packet rate, and,
for the ebpf datapaths, from_pods' and from_underlay's run time per run
during that load (BPF run-time statistics, on only meanwhile). Prints a
progress line per step on stderr and the table (median, min–max, ratios to
host and routes) on stdout; writes results.json with every sample and one
PNG chart per figure into --out. Every lab is removed at the end, on Ctrl-C,
and (leftovers of a crashed run) at the start.`,
		Example: `  hgw-lab bench --rounds 3
  hgw-lab bench --datapaths host,routes,ebpf --profiles kube --services 5000`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			o.Prefix = bench.DefaultPrefix
			if cmd.Flags().Changed("prefix") {
				o.Prefix = g.prefix
			}
			o.StateRoot, o.BinDir, o.CNIPath, o.Log, o.Progress = g.stateRoot, g.binDir, cniPath, g.logger(), os.Stderr
			res, err := bench.Run(ctx, o)
			if res == nil {
				return err
			}
			var errs []error
			errs = append(errs, err)
			if res.Finished.IsZero() {
				res.Finished = time.Now()
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "hgw-lab bench: %d CPUs (%s), kernel %s, load %s -> %s; %d rounds, %d services, %s runs\n\n",
				res.Machine.CPUs, res.Machine.CPU, res.Machine.Kernel, res.Machine.LoadStart, res.Machine.LoadEnd,
				res.Rounds, res.Services, res.Duration)
			errs = append(errs, res.WriteTable(out))
			res.WriteNotes(out)
			dir := o.OutDir
			if dir == "" {
				dir = "bench-out"
			}
			path, jerr := res.WriteJSON(dir)
			errs = append(errs, jerr)
			if jerr == nil {
				fmt.Fprintf(os.Stderr, "samples: %s\n", path)
			}
			charts, cerr := res.WriteCharts(dir)
			errs = append(errs, cerr)
			for _, c := range charts {
				fmt.Fprintf(os.Stderr, "chart: %s\n", c)
			}
			return errors.Join(errs...)
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.Rounds, "rounds", 5, "interleaved rounds; every datapath is measured once per round")
	f.StringSliceVar(&o.Profiles, "profiles", bench.AllProfiles, "node profiles: bare (no netfilter rules), kube (kube-proxy + flannel rules, conntrack)")
	f.StringSliceVar(&o.Datapaths, "datapaths", bench.AllDatapaths, "datapaths to compare")
	f.IntVar(&o.Services, "services", 1000, "services in the kube profile's kube-proxy rules")
	f.DurationVar(&o.Duration, "duration", 3*time.Second, "length of each throughput and fixed-load run")
	f.DurationVar(&o.LatencyDuration, "latency-duration", 2*time.Second, "length of each latency and connection-rate run")
	f.IntVar(&o.PPS, "pps", 50000, "offered UDP packets per second for the CPU-per-packet figure")
	f.StringVar(&o.OutDir, "out", "bench-out", "directory for results.json and the PNG charts")
	f.StringVar(&cniPath, "cni-path", os.Getenv("CNI_PATH"), "directory of the CNI bridge and host-local plugins (default <bin>/cni)")
	cmd.AddCommand(newBenchControlPlaneCmd(g))
	return cmd
}

func newBenchControlPlaneCmd(g *globals) *cobra.Command {
	var (
		o       bench.ControlPlaneOptions
		cniPath string
		outDir  string
	)
	cmd := &cobra.Command{
		Use:   "controlplane",
		Short: "Measure the agent's control plane with thousands of leases",
		Long: `Brings up a one-node lab (prefix hgwcp unless --prefix is given) per round,
stops its agent, widens the flannel network to 10.0.0.0/8, writes --leases
synthetic /24 leases whose peers are on an extra on-link /16 of eth0
(198.19.0.1/16), then starts the agent and measures:

  the time from 'hgw-ebpf run' starting to every lease's kernel route and
  map entry in place (polled every 50 ms);
  the time from a new lease's etcd Put to its map entry, for --new-leases
  leases created one after the other (p50, p99; polled every 1 ms);
  the agent's RSS with every lease programmed.

Prints a progress line per step on stderr and the table with issue 5's
targets on stdout; writes controlplane.json with every sample into --out.
The lab is removed after each round, on Ctrl-C, and (leftovers of a crashed
run) at the start.`,
		Example: `  hgw-lab bench controlplane
  hgw-lab bench controlplane --rounds 5 --leases 10000`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			if cmd.Flags().Changed("prefix") {
				o.Prefix = g.prefix
			}
			o.StateRoot, o.BinDir, o.CNIPath, o.Log, o.Progress = g.stateRoot, g.binDir, cniPath, g.logger(), os.Stderr
			res, err := bench.RunControlPlane(ctx, o)
			if res == nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "hgw-lab bench controlplane: %d CPUs (%s), kernel %s, load %s -> %s; %d rounds, %d leases, %d new leases\n\n",
				res.Machine.CPUs, res.Machine.CPU, res.Machine.Kernel, res.Machine.LoadStart, res.Machine.LoadEnd,
				res.Rounds, res.Leases, res.NewLeases)
			errs := []error{err, res.WriteTable(out)}
			path, jerr := res.WriteJSON(outDir)
			if jerr == nil {
				fmt.Fprintf(os.Stderr, "samples: %s\n", path)
			}
			return errors.Join(append(errs, jerr)...)
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.Rounds, "rounds", 3, "rounds, each on a fresh node")
	f.IntVar(&o.Leases, "leases", 5000, "synthetic leases (peers) in etcd")
	f.IntVar(&o.NewLeases, "new-leases", 100, "leases created one by one and timed to their map entry")
	f.StringVar(&outDir, "out", "bench-out", "directory for controlplane.json")
	f.StringVar(&cniPath, "cni-path", os.Getenv("CNI_PATH"), "directory of the CNI bridge and host-local plugins (default <bin>/cni)")
	return cmd
}
