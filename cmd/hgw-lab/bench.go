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
	return cmd
}
