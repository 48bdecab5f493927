package main

import (
	"context"
	"fmt"
	"io"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
	"github.com/hgw-ebpf/hgw-ebpf/internal/lab"
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
			return runDemo(ctx, cfg, cmd.OutOrStdout())
		},
	}
	lc.addFlags(cmd, 3, 2)
	return cmd
}

// runDemo tells the whole story on a fresh 3-node x 2-pod lab, narrated for
// someone who has never seen the project: the cluster, its etcd leases,
// all-pairs connectivity (over IPv6 too in a dual-stack lab), a short
// iperf3 across nodes, the counters that prove the BPF programs carried
// it, one node's routes maps, and the teardown. cfg.Nodes and
// cfg.PodsPerNode default to 3 and 2.
func runDemo(ctx context.Context, cfg lab.Config, w io.Writer) (err error) {
	if cfg.Nodes == 0 {
		cfg.Nodes = 3
	}
	if cfg.PodsPerNode == 0 {
		cfg.PodsPerNode = 2
	}
	if cfg.Nodes < 2 || cfg.PodsPerNode < 1 {
		return fmt.Errorf("demo needs at least 2 nodes with a pod each")
	}
	d := &demo{w: w, total: 7, began: time.Now()}
	if cfg.DualStack {
		d.total++
	}
	d.introduce(cfg)
	l, err := lab.Up(ctx, cfg)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := d.tearDown(l); err == nil {
			err = cerr
		}
	}()
	st := l.State()
	d.topology(st)
	for _, step := range []func(context.Context, *lab.Lab, lab.State) error{
		d.leases, d.pings, d.iperf, d.fastPathCounters, d.routesMaps,
	} {
		if err := step(ctx, l, st); err != nil {
			return err
		}
	}
	return nil
}

// demo narrates: numbered steps, prose, tables.
type demo struct {
	w      io.Writer
	n      int
	total  int
	began  time.Time
	before map[string][]datapath.Counter // every node's counters before the traffic
}

func (d *demo) step(format string, args ...any) {
	d.n++
	fmt.Fprintf(d.w, "\n== Step %d/%d: %s\n\n", d.n, d.total, fmt.Sprintf(format, args...))
}

func (d *demo) say(format string, args ...any) {
	fmt.Fprintf(d.w, format+"\n", args...)
}

func (d *demo) table() *tabwriter.Writer { return tabwriter.NewWriter(d.w, 0, 4, 2, ' ', 0) }

func (d *demo) introduce(cfg lab.Config) {
	d.step("Build a %d-node cluster on this machine, in network namespaces", cfg.Nodes)
	d.say(`Each node is a network namespace with an eth0 on a shared underlay bridge
(198.18.0.0/24), runs its own 'hgw-ebpf run', and has %d pods attached to its
cni0 bridge by the standard CNI 'bridge' + 'host-local' plugins. etcd runs
inside this process. Nothing touches the host's own network namespace.`, cfg.PodsPerNode)
	if cfg.DualStack {
		d.say(`Dual stack: the underlay has fd00:198:18::/64 too, the network config enables
IPv6 (fd00:10:244::/56) as flannel's does, and every pod gets an address of
each family.`)
	}
}

// tearDown removes the lab and says how long the demo took.
func (d *demo) tearDown(l *lab.Lab) error {
	d.step("Tear everything down")
	err := l.Close()
	if err == nil {
		d.say("Removed every namespace, process, pin and file of the lab.")
	}
	d.say("\nDemo finished in %s.", time.Since(d.began).Round(100*time.Millisecond))
	return err
}

func (d *demo) topology(st lab.State) {
	tw := d.table()
	fmt.Fprintln(tw, "  NODE\tETH0\tPOD SUBNET\tPODS")
	for _, n := range st.Nodes {
		var pods []string
		for _, p := range st.PodsOf(n.Name) {
			pods = append(pods, fmt.Sprintf("%s=%s", strings.TrimPrefix(p.Name, n.Name+"-"), p.Addrs()))
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", n.Name, n.Addrs(), n.Subnets(), strings.Join(pods, " "))
	}
	tw.Flush()
}

func (d *demo) leases(ctx context.Context, l *lab.Lab, st lab.State) error {
	d.step("The subnet leases in etcd (flannel's schema)")
	d.say(`Every agent leased a /24 for its pods, exactly as flanneld does: the key is
the subnet, the value says which node IP to route it via. Every other node
turns each lease into a kernel route AND an entry in the BPF 'routes' map.`)
	if st.DualStack {
		d.say(`With IPv6 one lease holds both subnets (a /24 and a /64), and the value the
node's IPv6 as well; the IPv6 subnet goes into the kernel and the 'routes6' map.`)
	}
	leases, err := l.Leases(ctx)
	if err != nil {
		return err
	}
	tw := d.table()
	fmt.Fprintln(tw, "  KEY\tVALUE\tTTL")
	for _, le := range leases {
		ttl := "none (reservation)"
		if le.TTL > 0 {
			ttl = (time.Duration(le.TTL) * time.Second).String()
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", le.Key, le.Value, ttl)
	}
	return tw.Flush()
}

// pings pings every pair of pods over each family and prints the
// matrices; the counters before them are what the traffic is measured
// against.
func (d *demo) pings(ctx context.Context, _ *lab.Lab, st lab.State) error {
	d.before = d.counters(st)
	for i, f := range pingFamilies(st) {
		if i == 0 {
			d.step("Every pod pings every other pod")
		} else {
			d.step("Every pod pings every other pod over %s", f.name)
		}
		results := f.pingAll(ctx, 16)
		if failed := st.WriteMatrix(&indent{w: d.w}, results); failed > 0 {
			return fmt.Errorf("%d of %d pod pairs cannot reach each other over %s", failed, len(results), f.name)
		}
		d.say("All %d pairs answered over %s (round-trip times above).", len(results), f.name)
	}
	return nil
}

// counters snapshots every node's counters (none without BPF programs).
func (d *demo) counters(st lab.State) map[string][]datapath.Counter {
	out := map[string][]datapath.Counter{}
	if st.Datapath != lab.DatapathEBPF {
		return out
	}
	for _, n := range st.Nodes {
		if c, err := n.Counters(); err == nil {
			out[n.Name] = c
		}
	}
	return out
}

// passed sums every counter that is not a redirect of any kind: packets
// the programs handed to the kernel.
func passed(counters []datapath.Counter) uint64 {
	var sum uint64
	for _, c := range counters {
		sum += c.Packets
	}
	return sum - datapath.Redirected(counters, "from_pods") - datapath.Redirected(counters, "from_underlay")
}

func (d *demo) fastPathCounters(_ context.Context, _ *lab.Lab, st lab.State) error {
	d.step("The fast-path counters: who forwarded those packets")
	if st.Datapath != lab.DatapathEBPF {
		d.say("Datapath %q has no BPF programs: the kernel routes did all the work.", st.Datapath)
		return nil
	}
	d.say(`from_pods runs on each pod's host-side veth (and on cni0 for pods not yet
known) and sends cross-node packets straight to eth0 (bpf_redirect_neigh);
from_underlay runs on eth0 and hands them straight into the pod's namespace
(bpf_redirect_peer). Redirected packets skipped the bridge, the kernel's
routing and netfilter; every other reason means "left to the kernel" (here
mostly the agents' etcd traffic, ARP and IPv6 neighbour discovery).`)
	after := d.counters(st)
	tw := d.table()
	fmt.Fprintln(tw, "  NODE\tfrom_pods redirected\tfrom_underlay redirected\tleft to the kernel")
	var total uint64
	for _, n := range st.Nodes {
		moved := datapath.Delta(d.before[n.Name], after[n.Name])
		fp, fu := datapath.Redirected(moved, "from_pods"), datapath.Redirected(moved, "from_underlay")
		total += fp + fu
		fmt.Fprintf(tw, "  %s\t%d\t%d\t%d\n", n.Name, fp, fu, passed(moved))
	}
	tw.Flush()
	if total == 0 {
		return fmt.Errorf("no packet was redirected by the BPF programs")
	}
	d.say("%d packets took the fast path during the ping and the iperf3 run.", total)
	return nil
}

func (d *demo) routesMaps(ctx context.Context, _ *lab.Lab, st lab.State) error {
	node := st.Nodes[0]
	maps := []string{"routes"}
	if st.DualStack {
		maps = append(maps, "routes6")
	}
	d.step("%s's BPF %s map, as bpftool prints it", node.Name, strings.Join(maps, " and "))
	if st.Datapath != lab.DatapathEBPF {
		d.say("(no map with datapath %q)", st.Datapath)
		return nil
	}
	for _, m := range maps {
		path := filepath.Join(node.PinRoot, m)
		d.say("$ bpftool map dump pinned %s", path)
		out, err := st.Output(ctx, node.Name, "bpftool", "map", "dump", "pinned", path)
		fmt.Fprint(&indent{w: d.w}, out)
		if err != nil {
			return fmt.Errorf("bpftool: %w", err)
		}
	}
	return nil
}

// iperf runs a 3-second iperf3 client from the first pod against a server
// it starts in the last one (on another node), and kills the server by
// PID afterwards.
func (d *demo) iperf(ctx context.Context, _ *lab.Lab, st lab.State) error {
	d.step("A 3-second iperf3 TCP stream between pods on different nodes")
	client, server := st.Pods[0], st.Pods[len(st.Pods)-1]
	d.say("%s (%s) -> %s (%s)", client.Name, client.IP, server.Name, server.IP)
	srv := exec.Command("iperf3", "--server", "--one-off", "--bind", server.IP)
	var srvOut lab.LimitedBuffer
	srv.Stdout, srv.Stderr = &srvOut, &srvOut
	if err := st.Start(server.Name, srv); err != nil {
		return err
	}
	defer func() {
		_ = srv.Process.Signal(syscall.SIGKILL)
		_ = srv.Wait()
	}()
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	var out string
	var err error
	// The server needs a moment to listen; the client retries briefly.
	for attempt := 0; attempt < 20; attempt++ {
		out, err = st.Output(ctx, client.Name, "iperf3", "--client", server.IP, "--time", "3", "--format", "m")
		if err == nil || !strings.Contains(out, "Connection refused") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("iperf3: %w\n%s", err, out)
	}
	// The summary: iperf3 ends with a header and the sender/receiver lines.
	var summary []string
	for _, line := range strings.Split(out, "\n") {
		switch {
		case strings.Contains(line, "Interval"):
			summary = []string{line}
		case strings.HasSuffix(line, "sender") || strings.HasSuffix(line, "receiver"):
			summary = append(summary, line)
		}
	}
	fmt.Fprintln(&indent{w: d.w}, strings.Join(summary, "\n"))
	return nil
}

// indent prefixes every line written through it with two spaces.
type indent struct {
	w       io.Writer
	midLine bool
}

func (i *indent) Write(p []byte) (int, error) {
	var b strings.Builder
	for _, c := range string(p) {
		if !i.midLine {
			b.WriteString("  ")
		}
		b.WriteRune(c)
		i.midLine = c != '\n'
	}
	if _, err := io.WriteString(i.w, b.String()); err != nil {
		return 0, err
	}
	return len(p), nil
}
