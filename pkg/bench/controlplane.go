package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/vishvananda/netlink"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/hgw-ebpf/hgw-ebpf/pkg/datapath"
	"github.com/hgw-ebpf/hgw-ebpf/pkg/lab"
	"github.com/hgw-ebpf/hgw-ebpf/pkg/reconcile"
	"github.com/hgw-ebpf/hgw-ebpf/pkg/registry"
)

// DefaultControlPlanePrefix names the control-plane bench's lab.
const DefaultControlPlanePrefix = "hgwcp"

// The synthetic cluster: a flannel network wide enough for thousands of
// /24 leases, and peers on a /16 of the benchmarking range that the node's
// eth0 gets as a second address, so every peer is on-link (host-gw routes
// need that) without a device per peer.
var (
	cpNetwork   = netip.MustParsePrefix("10.0.0.0/8")
	cpNodeAddr  = netip.PrefixFrom(netip.MustParseAddr("198.19.0.1"), 16) // peers: 198.19.1.0 and up
	cpNewLeases = netip.MustParsePrefix("10.250.0.0/16")                  // where the timed new leases go
)

// ControlPlaneOptions configure `hgw-lab bench controlplane`.
type ControlPlaneOptions struct {
	Prefix    string // lab prefix (DefaultControlPlanePrefix if empty)
	StateRoot string
	BinDir    string
	CNIPath   string
	Rounds    int // default 3; every round starts from a fresh node
	Leases    int // synthetic peers (default 5000)
	NewLeases int // leases created one by one and timed to the map (default 100)
	Log       *slog.Logger
	Progress  io.Writer // one line per step; os.Stderr if nil
}

func (o *ControlPlaneOptions) setDefaults() error {
	if o.Prefix == "" {
		o.Prefix = DefaultControlPlanePrefix
	}
	if err := lab.ValidatePrefix(o.Prefix); err != nil {
		return fmt.Errorf("bench prefix: %w", err)
	}
	if o.Rounds == 0 {
		o.Rounds = 3
	}
	if o.Leases == 0 {
		o.Leases = 5000
	}
	if o.NewLeases == 0 {
		o.NewLeases = 100
	}
	switch {
	case o.Rounds < 1 || o.Rounds > 20:
		return fmt.Errorf("rounds %d: want 1..20", o.Rounds)
	case o.Leases < 1 || o.Leases > maxSyntheticLeases:
		return fmt.Errorf("leases %d: want 1..%d", o.Leases, maxSyntheticLeases)
	case o.NewLeases < 1 || o.NewLeases > 256:
		return fmt.Errorf("new leases %d: want 1..256", o.NewLeases)
	}
	if o.Log == nil {
		o.Log = discard()
	}
	if o.Progress == nil {
		o.Progress = os.Stderr
	}
	return nil
}

// SyntheticLease is one made-up peer.
type SyntheticLease struct {
	Subnet   netip.Prefix
	PublicIP netip.Addr
}

// maxSyntheticLeases keeps peers inside cpNodeAddr's /16 (from .1.0 up) and
// subnets below cpNewLeases.
const maxSyntheticLeases = 60000

// SyntheticLeases returns n distinct /24 leases of cpNetwork with distinct
// peers in cpNodeAddr's /16, none overlapping skip (the node's own subnet's
// network) or cpNewLeases, none at the node's own address.
func SyntheticLeases(n int, skip netip.Prefix) []SyntheticLease {
	out := make([]SyntheticLease, 0, n)
	for i := 0; len(out) < n && i < 1<<16; i++ {
		subnet := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24)
		if skip.Overlaps(subnet) || cpNewLeases.Overlaps(subnet) {
			continue
		}
		k := len(out) + 256 // from 198.19.1.0: clear of the node's 198.19.0.1
		out = append(out, SyntheticLease{Subnet: subnet, PublicIP: netip.AddrFrom4([4]byte{198, 19, byte(k >> 8), byte(k)})})
	}
	return out
}

// newLease is the k-th timed new lease.
func newLease(k int) SyntheticLease {
	return SyntheticLease{
		Subnet:   netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 250, byte(k), 0}), 24),
		PublicIP: netip.AddrFrom4([4]byte{198, 19, 250, byte(k)}),
	}
}

func leaseKey(prefix string, s netip.Prefix) string {
	return strings.TrimSuffix(prefix, "/") + "/subnets/" + strings.Replace(s.String(), "/", "-", 1)
}

func leaseValue(l SyntheticLease) (string, error) {
	b, err := json.Marshal(registry.LeaseAttrs{PublicIP: l.PublicIP.String(), BackendType: "host-gw"})
	return string(b), err
}

// ControlPlaneSample is one round.
type ControlPlaneSample struct {
	Round int `json:"round"`
	// From `hgw-ebpf run` started to every lease's kernel route and map
	// entry in place, and to each of the two alone.
	ProgramSeconds Float `json:"program_seconds"`
	RoutesSeconds  Float `json:"kernel_routes_seconds"`
	MapSeconds     Float `json:"map_entries_seconds"`
	// From a new lease's Put to its map entry, per lease, in order.
	NewLeaseMs []float64 `json:"new_lease_ms"`
	RSSBytes   uint64    `json:"agent_rss_bytes"` // with every lease programmed
	Error      string    `json:"error,omitempty"`
}

// ControlPlaneResult is a run; written as controlplane.json.
type ControlPlaneResult struct {
	Started   time.Time            `json:"started"`
	Finished  time.Time            `json:"finished"`
	Machine   Machine              `json:"machine"`
	Rounds    int                  `json:"rounds"`
	Leases    int                  `json:"leases"`
	NewLeases int                  `json:"new_leases"`
	Samples   []ControlPlaneSample `json:"samples"`
}

// RunControlPlane measures the agent's control plane at scale: rounds of a
// fresh one-node lab whose etcd holds o.Leases synthetic leases. Every lab
// is removed when it returns.
func RunControlPlane(ctx context.Context, o ControlPlaneOptions) (*ControlPlaneResult, error) {
	if err := o.setDefaults(); err != nil {
		return nil, err
	}
	began := time.Now()
	progress := func(format string, args ...any) {
		fmt.Fprintf(o.Progress, "[%6.1fs] %s\n", time.Since(began).Seconds(), fmt.Sprintf(format, args...))
	}
	res := &ControlPlaneResult{Started: began, Machine: describeMachine(ctx), Rounds: o.Rounds, Leases: o.Leases, NewLeases: o.NewLeases}
	down := lab.DownOptions{Prefix: o.Prefix, StateRoot: o.StateRoot, BinDir: o.BinDir, Log: o.Log}
	progress("removing leftovers of earlier runs (prefix %s)", o.Prefix)
	if err := lab.Down(ctx, down); err != nil {
		return nil, err
	}
	var errs []error
	for round := 1; round <= o.Rounds && ctx.Err() == nil; round++ {
		s := controlPlaneRound(ctx, &o, round, progress)
		res.Samples = append(res.Samples, s)
		if s.Error != "" {
			errs = append(errs, fmt.Errorf("round %d: %s", round, s.Error))
		}
	}
	res.Finished = time.Now()
	res.Machine.LoadEnd = loadAvg()
	return res, errors.Join(append(errs, ctx.Err())...)
}

func controlPlaneRound(ctx context.Context, o *ControlPlaneOptions, round int, progress func(string, ...any)) (s ControlPlaneSample) {
	s = ControlPlaneSample{Round: round, ProgramSeconds: Float(math.NaN()), RoutesSeconds: Float(math.NaN()), MapSeconds: Float(math.NaN())}
	fail := func(err error) ControlPlaneSample {
		s.Error = err.Error()
		progress("round %d/%d: %v", round, o.Rounds, err)
		return s
	}
	l, err := lab.Up(ctx, lab.Config{Prefix: o.Prefix, StateRoot: o.StateRoot, BinDir: o.BinDir, CNIPath: o.CNIPath,
		Nodes: 1, PodsPerNode: 0, Datapath: lab.DatapathEBPF, Log: o.Log})
	if err != nil {
		return fail(err)
	}
	defer l.Close()
	node := l.State().Nodes[0]
	own, err := netip.ParsePrefix(node.Subnet)
	if err != nil {
		return fail(fmt.Errorf("node subnet %q: %w", node.Subnet, err))
	}
	// The agent is stopped while etcd fills, then timed from its start.
	if err := l.StopAgent(node.Name); err != nil {
		return fail(err)
	}
	h, err := lab.HandleAt(node.Name)
	if err != nil {
		return fail(err)
	}
	defer h.Close()
	if err := addPeerNet(h); err != nil {
		return fail(fmt.Errorf("%s: %w", node.Name, err))
	}
	leases := SyntheticLeases(o.Leases, netip.PrefixFrom(own.Addr(), 16).Masked())
	progress("round %d/%d: writing %d leases into etcd", round, o.Rounds, len(leases))
	etcdLease, err := putLeases(ctx, l.Etcd(), leases)
	if err != nil {
		return fail(err)
	}
	maps, err := datapath.OpenPinned(node.PinRoot)
	if err != nil {
		return fail(err)
	}
	defer maps.Close()

	start := time.Now()
	if err := l.StartAgent(node.Name); err != nil {
		return fail(err)
	}
	routesAt, mapAt, err := waitProgrammed(ctx, h, maps.Routes(), len(leases), 60*time.Second)
	if err != nil {
		return fail(err)
	}
	s.RoutesSeconds, s.MapSeconds = Float(routesAt.Sub(start).Seconds()), Float(mapAt.Sub(start).Seconds())
	s.ProgramSeconds = max(s.RoutesSeconds, s.MapSeconds)
	pid := mustAgentPID(l, node.Name)
	if s.RSSBytes, err = processRSS(pid); err != nil {
		return fail(err)
	}
	progress("round %d/%d: %d leases programmed %.2fs after agent start (routes %.2fs, map %.2fs), RSS %.1f MiB",
		round, o.Rounds, len(leases), s.ProgramSeconds, s.RoutesSeconds, s.MapSeconds, float64(s.RSSBytes)/(1<<20))

	for k := range o.NewLeases {
		d, err := timeNewLease(ctx, l.Etcd(), etcdLease, maps.Routes(), newLease(k), 5*time.Second)
		if err != nil {
			return fail(fmt.Errorf("new lease %d: %w", k, err))
		}
		s.NewLeaseMs = append(s.NewLeaseMs, float64(d.Microseconds())/1000)
	}
	progress("round %d/%d: new lease -> map entry p50 %.1f ms, p99 %.1f ms over %d leases",
		round, o.Rounds, Percentile(s.NewLeaseMs, 50), Percentile(s.NewLeaseMs, 99), len(s.NewLeaseMs))
	return s
}

// addPeerNet gives the node's eth0 the address cpNodeAddr, so the
// synthetic peers are on-link.
func addPeerNet(h *netlink.Handle) error {
	link, err := h.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("find eth0: %w", err)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: cpNodeAddr.Addr().AsSlice(), Mask: net.CIDRMask(cpNodeAddr.Bits(), 32)}}
	if err := h.AddrAdd(link, addr); err != nil {
		return fmt.Errorf("add %s to eth0: %w", cpNodeAddr, err)
	}
	return nil
}

// putLeases widens the network config and writes the leases (with one
// etcd lease of a day, as flanneld's) in transactions of etcd's default
// maximum size.
func putLeases(ctx context.Context, cli *clientv3.Client, leases []SyntheticLease) (clientv3.LeaseID, error) {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	prefix := registry.DefaultPrefix
	cfg := fmt.Sprintf(`{"Network":%q,"SubnetLen":24,"Backend":{"Type":"host-gw"}}`, cpNetwork)
	if _, err := cli.Put(ctx, strings.TrimSuffix(prefix, "/")+"/config", cfg); err != nil {
		return 0, fmt.Errorf("write network config: %w", err)
	}
	grant, err := cli.Grant(ctx, int64((24 * time.Hour).Seconds()))
	if err != nil {
		return 0, fmt.Errorf("grant etcd lease: %w", err)
	}
	const batch = 128
	for i := 0; i < len(leases); i += batch {
		var ops []clientv3.Op
		for _, l := range leases[i:min(i+batch, len(leases))] {
			v, err := leaseValue(l)
			if err != nil {
				return 0, err
			}
			ops = append(ops, clientv3.OpPut(leaseKey(prefix, l.Subnet), v, clientv3.WithLease(grant.ID)))
		}
		if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			return 0, fmt.Errorf("write leases %d..%d: %w", i, i+len(ops)-1, err)
		}
	}
	return grant.ID, nil
}

// waitProgrammed polls until the node has n kernel routes of the agent and
// n map entries, and returns when each got there. Polling every 50 ms
// bounds the figure's resolution and the CPU the poll takes from the agent.
func waitProgrammed(ctx context.Context, h *netlink.Handle, rm *datapath.RouteMap, n int, timeout time.Duration) (routesAt, mapAt time.Time, err error) {
	deadline := time.Now().Add(timeout)
	var routes, entries int
	for {
		now := time.Now()
		if routesAt.IsZero() {
			rs, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: reconcile.RouteProtocol}, netlink.RT_FILTER_PROTOCOL)
			if err != nil {
				return routesAt, mapAt, fmt.Errorf("list routes: %w", err)
			}
			if routes = len(rs); routes >= n {
				routesAt = now
			}
		}
		if mapAt.IsZero() {
			es, err := rm.List()
			if err != nil {
				return routesAt, mapAt, err
			}
			if entries = len(es); entries >= n {
				mapAt = now
			}
		}
		if !routesAt.IsZero() && !mapAt.IsZero() {
			return routesAt, mapAt, nil
		}
		if now.After(deadline) {
			return routesAt, mapAt, fmt.Errorf("after %s: %d of %d kernel routes, %d map entries", timeout, routes, n, entries)
		}
		select {
		case <-ctx.Done():
			return routesAt, mapAt, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// timeNewLease writes one lease and polls the map every millisecond until
// the programs would send its subnet to its peer.
func timeNewLease(ctx context.Context, cli *clientv3.Client, id clientv3.LeaseID, rm *datapath.RouteMap, l SyntheticLease, timeout time.Duration) (time.Duration, error) {
	v, err := leaseValue(l)
	if err != nil {
		return 0, err
	}
	pctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	if _, err := cli.Put(pctx, leaseKey(registry.DefaultPrefix, l.Subnet), v, clientv3.WithLease(id)); err != nil {
		return 0, fmt.Errorf("put %s: %w", l.Subnet, err)
	}
	for {
		rt, ok, err := rm.Match(l.Subnet)
		if err != nil {
			return 0, err
		}
		if ok && rt.NextHop == l.PublicIP {
			return time.Since(start), nil
		}
		select {
		case <-pctx.Done():
			return 0, fmt.Errorf("%s via %s not in the map after %s", l.Subnet, l.PublicIP, timeout)
		case <-time.After(time.Millisecond):
		}
	}
}

func mustAgentPID(l *lab.Lab, node string) int {
	n, _ := l.State().Node(node)
	return n.AgentPID
}

// processRSS is VmRSS of pid, in bytes.
func processRSS(pid int) (uint64, error) {
	if pid == 0 {
		return 0, errors.New("agent not running")
	}
	f, err := os.Open(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return 0, fmt.Errorf("agent status: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("parse VmRSS %q: %w", rest, err)
			}
			return kb * 1024, nil
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}

// Percentile is the nearest-rank p-th percentile of vals (NaN if empty).
func Percentile(vals []float64, p float64) float64 {
	var v []float64
	for _, x := range vals {
		if !math.IsNaN(x) {
			v = append(v, x)
		}
	}
	if len(v) == 0 {
		return math.NaN()
	}
	slices.Sort(v)
	rank := int(math.Ceil(p / 100 * float64(len(v))))
	return v[min(max(rank, 1), len(v))-1]
}

// WriteTable prints the figures with their targets (issue 5).
func (r *ControlPlaneResult) WriteTable(w io.Writer) error {
	var prog, routes, mapd, p50, p99, rss []float64
	for _, s := range r.Samples {
		prog, routes, mapd = append(prog, float64(s.ProgramSeconds)), append(routes, float64(s.RoutesSeconds)), append(mapd, float64(s.MapSeconds))
		if len(s.NewLeaseMs) > 0 {
			p50, p99 = append(p50, Percentile(s.NewLeaseMs, 50)), append(p99, Percentile(s.NewLeaseMs, 99))
		}
		if s.RSSBytes > 0 {
			rss = append(rss, float64(s.RSSBytes)/(1<<20))
		}
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "figure\tmedian\tmin–max\tn\ttarget\t")
	row := func(name string, vals []float64, target string, met func(float64) bool) {
		s := Summarize(vals)
		verdict := ""
		if met != nil && s.N > 0 {
			verdict = "not met"
			if met(s.Max) {
				verdict = "met (every round)"
			} else if met(s.Median) {
				verdict = "met (median)"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s–%s\t%d\t%s %s\t\n", name, num(s.Median), num(s.Min), num(s.Max), s.N, target, verdict)
	}
	row(fmt.Sprintf("%d leases programmed [s]", r.Leases), prog, "< 2 s", func(v float64) bool { return v < 2 })
	row("  kernel routes complete [s]", routes, "", nil)
	row("  map entries complete [s]", mapd, "", nil)
	row("new lease -> map p50 [ms]", p50, "", nil)
	row("new lease -> map p99 [ms]", p99, "< 100 ms", func(v float64) bool { return v < 100 })
	row(fmt.Sprintf("agent RSS at %d peers [MiB]", r.Leases), rss, "", nil)
	return tw.Flush()
}

// WriteJSON writes dir/controlplane.json and returns its path.
func (r *ControlPlaneResult) WriteJSON(dir string) (string, error) {
	return writeJSON(dir, "controlplane.json", r)
}
