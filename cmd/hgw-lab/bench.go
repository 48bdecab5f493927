package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/hgw-ebpf/hgw-ebpf/internal/bench"
	"github.com/hgw-ebpf/hgw-ebpf/internal/lab"
)

func newBenchCmd(g *globals) *cobra.Command {
	var o bench.Options
	cmd := g.benchCmd(&cobra.Command{
		Use:   "bench",
		Short: "Measure host, routes, ebpf and vxlan side by side, and host, routes and ebpf over IPv6 (dataplane)",
		Long:  benchHelp,
		Example: `  hgw-lab bench --rounds 3
  hgw-lab bench --datapaths host,routes,ebpf --profiles kube --services 5000`,
		Args: cobra.NoArgs,
	}, &o.LabOptions, func(ctx context.Context, out io.Writer) error {
		res, err := bench.Run(ctx, o)
		if res == nil {
			return err
		}
		return errors.Join(err, writeBenchReport(out, res, o.OutDir))
	})
	f := cmd.Flags()
	f.IntVar(&o.Rounds, "rounds", 5, "interleaved rounds; every datapath is measured once per round")
	f.StringSliceVar(&o.Profiles, "profiles", bench.AllProfiles, "node profiles: bare (no netfilter rules), kube (kube-proxy + flannel rules, conntrack)")
	f.StringSliceVar(&o.Datapaths, "datapaths", bench.AllDatapaths, "datapaths to compare")
	f.IntVar(&o.Services, "services", 1000, "services in the kube profile's kube-proxy rules")
	f.DurationVar(&o.Duration, "duration", 3*time.Second, "length of each throughput and fixed-load run")
	f.DurationVar(&o.LatencyDuration, "latency-duration", 2*time.Second, "length of each latency and connection-rate run")
	f.IntVar(&o.PPS, "pps", 50000, "offered UDP packets per second for the CPU-per-packet figure")
	f.StringVar(&o.OutDir, "out", "bench-out", "directory for results.json and the PNG charts")
	cmd.AddCommand(newBenchControlPlaneCmd(g))
	return cmd
}

func newBenchControlPlaneCmd(g *globals) *cobra.Command {
	var (
		o      bench.ControlPlaneOptions
		outDir string
	)
	cmd := g.benchCmd(&cobra.Command{
		Use:   "controlplane",
		Short: "Measure the agent's control plane with up to 65,536 leases",
		Long:  benchControlPlaneHelp,
		Example: `  hgw-lab bench controlplane
  hgw-lab bench controlplane --leases 5000,20000,65536
  hgw-lab bench controlplane --leases 65536 --forms nexthop --rounds 3
  hgw-lab bench controlplane --registry kube --leases 5000 --forms nexthop`,
		Args: cobra.NoArgs,
	}, &o.LabOptions, func(ctx context.Context, out io.Writer) error {
		res, err := bench.RunControlPlane(ctx, o)
		if res == nil {
			return err
		}
		fmt.Fprintf(out, "hgw-lab bench controlplane: %d CPUs (%s), kernel %s, load %s -> %s; %d round(s), leases %v in %s, forms %v, %d new leases\n\n",
			res.Machine.CPUs, res.Machine.CPU, res.Machine.Kernel, res.Machine.LoadStart, res.Machine.LoadEnd,
			res.Rounds, res.Leases, res.Registry, res.Forms, res.NewLeases)
		errs := []error{err, res.WriteTable(out)}
		path, jerr := res.WriteJSON(outDir)
		if jerr == nil {
			fmt.Fprintf(os.Stderr, "samples: %s\n", path)
		}
		chart, cerr := res.WriteChart(outDir)
		if cerr == nil {
			fmt.Fprintf(os.Stderr, "chart: %s\n", chart)
		}
		return errors.Join(append(errs, jerr, cerr)...)
	})
	f := cmd.Flags()
	f.IntVar(&o.Rounds, "rounds", 1, "rounds per lease count and form, each on a fresh node")
	f.IntSliceVar(&o.Leases, "leases", []int{5000}, fmt.Sprintf("synthetic leases (peers) in etcd, one run each (1..%d)", bench.MaxSyntheticLeases))
	f.StringSliceVar(&o.Forms, "forms", []string{bench.FormNexthop, bench.FormPlain}, "route forms: nexthop, plain")
	f.IntVar(&o.NewLeases, "new-leases", 100, "leases created one by one and timed to their map entry and kernel route")
	f.StringVar(&o.Registry, "registry", lab.RegistryEtcd, "where the leases are: etcd, or kube (Nodes of a real kube-apiserver, the agent with --kube-subnet-mgr)")
	f.StringVar(&outDir, "out", "bench-out", "directory for controlplane.json and controlplane.png")
	return cmd
}

// writeBenchReport prints a dataplane run's table and notes on out and
// writes its samples and charts into dir (bench-out if empty), saying
// where on stderr.
func writeBenchReport(out io.Writer, res *bench.Result, dir string) error {
	if res.Finished.IsZero() {
		res.Finished = time.Now()
	}
	fmt.Fprintf(out, "hgw-lab bench: %d CPUs (%s), kernel %s, load %s -> %s; %d rounds, %d services, %s runs\n\n",
		res.Machine.CPUs, res.Machine.CPU, res.Machine.Kernel, res.Machine.LoadStart, res.Machine.LoadEnd,
		res.Rounds, res.Services, res.Duration)
	errs := []error{res.WriteTable(out)}
	res.WriteNotes(out)
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
}

const benchHelp = `Brings up one small lab per datapath at once (2 nodes x 1 pod each, own
underlay namespace, prefixes <prefix>r, <prefix>e, <prefix>n, <prefix>x), then measures
interleaved round by round, on bare nodes and on nodes carrying kube-proxy's
iptables state for --services services:

  host    node1 eth0 -> node2 eth0 (routes lab): the physical limit here
  routes  pod -> pod, 'hgw-ebpf run --datapath routes' (plain host-gw)
  ebpf    pod -> pod, 'hgw-ebpf run'
  ebpf-noct  the same with --unsafe-ignore-conntrack: what the conntrack
          check costs
  vxlan   pod -> pod over flannel.1 (VNI 1, port 8472, MTU 1450), no agent
  host6, routes6, ebpf6
          host, routes and ebpf over IPv6 (the routes and ebpf labs are then
          dual-stack); their ratios are to host6 and routes6; bare profile
          only (the kube profile's rules are IPv4 iptables rules)

Figures: iperf3 TCP throughput; sockperf ping-pong RTT p50/p99, TCP and UDP,
client and server pinned to the same CPU; new TCP connections per second;
machine-wide kernel CPU time per packet at a fixed UDP packet rate, and,
for the ebpf datapaths, from_pods' and from_underlay's run time per run
during that load (BPF run-time statistics, on only meanwhile). Prints a
progress line per step on stderr and the table (median, min–max, ratios to
host and routes) on stdout; writes results.json with every sample and one
PNG chart per figure into --out. Every lab is removed at the end, on Ctrl-C,
and (leftovers of a crashed run) at the start.`

const benchControlPlaneHelp = `For each --leases count and route form (--forms), and --rounds times, brings up
a one-node lab (prefix hgwcp unless --prefix is given), stops its agent,
widens the flannel network to 10.0.0.0/8, writes that many synthetic /25
leases whose peers are on an extra on-link /15 of eth0 (198.19.255.254/15),
then starts the agent and measures:

  the time from 'hgw-ebpf run' starting to every lease's map entry, and to
  every lease's kernel route (the kernel's route notifications);
  the agent's CPU time (user + system) until then, and its RSS;
  the time from a new lease's etcd Put to its map entry (polled every
  200 µs) and to its kernel route, for --new-leases leases created one
  after the other (p50, p99).

With --registry kube the leases are Kubernetes Nodes instead (a kube lab:
the agent runs --kube-subnet-mgr against a real kube-apiserver): each peer
is a Node with its podCIDR and flanneld's annotations, created (32 requests
at a time) while the agent is stopped, and each timed new lease a Node
created in one request; the files are controlplane-kube.json and .png.

Forms: nexthop (the agent's default: routes through nexthop objects) and
plain (--plain-routes: one gateway route each, as flanneld installs them;
the kernel's cost of these grows with the square of their number, minutes
at 65,536).

Prints a progress line per step on stderr and, on stdout, the table of
figures with the targets the control plane is held to (map complete < 2 s,
kernel routes < 6 s, a new lease's p99 < 10 ms to the map and < 20 ms to
the kernel, agent RSS < 150 MiB); writes controlplane.json with every
sample and controlplane.png (time against leases, log-log) into --out. The
lab is removed after each round, on Ctrl-C, and (leftovers of a crashed
run) at the start.`

// benchCmd completes cmd, a benchmark: it adds --cni-path, and its RunE
// fills lo from the global flags and runs measure until it returns or
// SIGINT or SIGTERM stops it (the labs are removed then too).
func (g *globals) benchCmd(cmd *cobra.Command, lo *bench.LabOptions, measure func(ctx context.Context, out io.Writer) error) *cobra.Command {
	var cniPath string
	cmd.Flags().StringVar(&cniPath, "cni-path", os.Getenv("CNI_PATH"), "directory of the CNI bridge and host-local plugins (default <bin>/cni)")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
		defer stop()
		*lo = g.benchLab(cmd, cniPath)
		return measure(ctx, cmd.OutOrStdout())
	}
	return cmd
}

// benchLab is a benchmark's lab options from the global flags: the
// benchmark's own default prefix unless --prefix is given.
func (g *globals) benchLab(cmd *cobra.Command, cniPath string) bench.LabOptions {
	o := bench.LabOptions{StateRoot: g.stateRoot, BinDir: g.binDir, CNIPath: cniPath, Log: g.logger(), Progress: os.Stderr}
	if cmd.Flags().Changed("prefix") {
		o.Prefix = g.prefix
	}
	return o
}
