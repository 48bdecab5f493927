package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sys/unix"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
	"github.com/hgw-ebpf/hgw-ebpf/internal/lab"
	"github.com/hgw-ebpf/hgw-ebpf/internal/peers"
	"github.com/hgw-ebpf/hgw-ebpf/internal/procstat"
	"github.com/hgw-ebpf/hgw-ebpf/internal/registry"
)

// DefaultControlPlanePrefix names the control-plane bench's lab.
const DefaultControlPlanePrefix = "hgwcp"

// The synthetic cluster: flannel's widest network, and peers on a /15 of
// the benchmarking range that the node's eth0 gets as a second address
// (its lab address, 198.18.0.x/24, is inside it), so every peer is on-link
// (host-gw routes need that) without a device per peer. The leases are
// /25s: 10.0.0.0/8 holds 65,536 /24s in all, one of them the node's, so
// 65,536 peers with the node's own /16 and the new leases' /16 left out
// need the next length down. The route and map work does not depend on it.
var (
	cpNetwork   = netip.MustParsePrefix("10.0.0.0/8")
	cpNodeAddr  = netip.PrefixFrom(netip.MustParseAddr("198.19.255.254"), 15) // peers: 198.18.1.0 and up
	cpNewLeases = netip.MustParsePrefix("10.250.0.0/16")                      // where the timed new leases go
)

// Route forms the control-plane bench compares.
const (
	FormNexthop = "nexthop" // the agent's default: routes through nexthop objects
	FormPlain   = "plain"   // --plain-routes: one gateway route each, as flanneld
)

// ControlPlaneOptions configure `hgw-lab bench controlplane`.
type ControlPlaneOptions struct {
	LabOptions          // Prefix: DefaultControlPlanePrefix if empty
	Rounds     int      // per lease count and form (default 1); every round starts from a fresh node
	Leases     []int    // synthetic peers per run (default 5000), each 1..MaxSyntheticLeases
	Forms      []string // FormNexthop, FormPlain (default both)
	NewLeases  int      // leases created one by one and timed (default 100)
	// Registry is where the leases are: lab.RegistryEtcd (default) or
	// lab.RegistryKube (Nodes of a real kube-apiserver; the agent runs
	// --kube-subnet-mgr).
	Registry string
}

func (o *ControlPlaneOptions) setDefaults() error {
	o.LabOptions.setDefaults(DefaultControlPlanePrefix)
	if err := lab.ValidatePrefix(o.Prefix); err != nil {
		return fmt.Errorf("bench prefix: %w", err)
	}
	if o.Rounds == 0 {
		o.Rounds = 1
	}
	if len(o.Leases) == 0 {
		o.Leases = []int{5000}
	}
	if len(o.Forms) == 0 {
		o.Forms = []string{FormNexthop, FormPlain}
	}
	if o.NewLeases == 0 {
		o.NewLeases = 100
	}
	if o.Registry == "" {
		o.Registry = lab.RegistryEtcd
	}
	if o.Registry != lab.RegistryEtcd && o.Registry != lab.RegistryKube {
		return fmt.Errorf("registry %q: want %s or %s", o.Registry, lab.RegistryEtcd, lab.RegistryKube)
	}
	if o.Rounds < 1 || o.Rounds > 20 {
		return fmt.Errorf("rounds %d: want 1..20", o.Rounds)
	}
	for _, n := range o.Leases {
		if n < 1 || n > MaxSyntheticLeases {
			return fmt.Errorf("leases %d: want 1..%d", n, MaxSyntheticLeases)
		}
	}
	slices.Sort(o.Leases)
	for _, f := range o.Forms {
		if f != FormNexthop && f != FormPlain {
			return fmt.Errorf("route form %q: want %s or %s", f, FormNexthop, FormPlain)
		}
	}
	if o.NewLeases < 1 || o.NewLeases > 256 {
		return fmt.Errorf("new leases %d: want 1..256", o.NewLeases)
	}
	return nil
}

// SyntheticLease is one made-up peer.
type SyntheticLease struct {
	Subnet   netip.Prefix
	PublicIP netip.Addr
}

// MaxSyntheticLeases is flannel's largest network's count of subnets.
const MaxSyntheticLeases = 65536

// SyntheticLeases returns n distinct /25 leases of cpNetwork with distinct
// peers in cpNodeAddr's /15 (from 198.18.1.0, clear of the lab's own
// underlay 198.18.0.0/24), none overlapping skip (the node's own subnet's
// network) or cpNewLeases.
func SyntheticLeases(n int, skip netip.Prefix) []SyntheticLease {
	out := make([]SyntheticLease, 0, n)
	for i := 0; len(out) < n && i < 1<<17; i++ {
		subnet := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 9), byte(i >> 1), byte(i&1) << 7}), 25)
		if skip.Overlaps(subnet) || cpNewLeases.Overlaps(subnet) {
			continue
		}
		k := len(out) + 256
		out = append(out, SyntheticLease{Subnet: subnet, PublicIP: netip.AddrFrom4([4]byte{198, 18 + byte(k>>16), byte(k >> 8), byte(k)})})
	}
	return out
}

// newLease is the k-th timed new lease.
func newLease(k int) SyntheticLease {
	return SyntheticLease{
		Subnet:   netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 250, byte(k), 0}), 25),
		PublicIP: netip.AddrFrom4([4]byte{198, 19, 250, byte(k)}),
	}
}

// leaseKey is the registry's key for the lease of s under prefix.
func leaseKey(prefix string, s netip.Prefix) string {
	return registry.New(nil, prefix, nil).LeaseKey(s)
}

func leaseValue(l SyntheticLease) (string, error) {
	b, err := json.Marshal(registry.LeaseAttrs{PublicIP: l.PublicIP.String(), BackendType: "host-gw"})
	return string(b), err
}

// ControlPlaneSample is one round: one lease count, one route form.
type ControlPlaneSample struct {
	Round  int    `json:"round"`
	Leases int    `json:"leases"`
	Form   string `json:"form"`
	// From `hgw-ebpf run` started to every lease's map entry, and to
	// every lease's kernel route.
	MapSeconds    Float `json:"map_entries_seconds"`
	RoutesSeconds Float `json:"kernel_routes_seconds"`
	// The agent's CPU time (user + system, the kernel's route work
	// included) from its start until the kernel routes were complete.
	CPUSeconds Float `json:"agent_cpu_seconds"`
	// From a new lease's Put to its map entry and to its kernel route
	// (the kernel's notification), per lease, in order.
	NewLeaseMapMs    []float64 `json:"new_lease_map_ms"`
	NewLeaseKernelMs []float64 `json:"new_lease_kernel_ms"`
	RSSBytes         uint64    `json:"agent_rss_bytes"` // with every lease programmed
	Error            string    `json:"error,omitempty"`
}

// ControlPlaneResult is a run; written as controlplane.json.
type ControlPlaneResult struct {
	Registry string `json:"registry"`
	Header
	Leases    []int                `json:"leases"`
	Forms     []string             `json:"forms"`
	NewLeases int                  `json:"new_leases"`
	Samples   []ControlPlaneSample `json:"samples"`
}

// RunControlPlane measures the agent's control plane at scale: for each
// lease count and route form, rounds of a fresh one-node lab whose etcd
// holds that many synthetic leases. Every lab is removed when it returns.
func RunControlPlane(ctx context.Context, o ControlPlaneOptions) (*ControlPlaneResult, error) {
	if err := o.setDefaults(); err != nil {
		return nil, err
	}
	progress := o.progressSince(time.Now())
	res := &ControlPlaneResult{Registry: o.Registry, Header: startHeader(ctx, o.Rounds), Leases: o.Leases, Forms: o.Forms, NewLeases: o.NewLeases}
	down := lab.DownOptions{Prefix: o.Prefix, StateRoot: o.StateRoot, BinDir: o.BinDir, Log: o.Log}
	progress("removing leftovers of earlier runs (prefix %s)", o.Prefix)
	if err := lab.Down(ctx, down); err != nil {
		return nil, err
	}
	var errs []error
	for _, n := range o.Leases {
		for _, form := range o.Forms {
			for round := 1; round <= o.Rounds && ctx.Err() == nil; round++ {
				run := cpRun{o: &o, leases: n, form: form, round: round, progress: progress}
				s := run.measure(ctx)
				res.Samples = append(res.Samples, s)
				if s.Error != "" {
					errs = append(errs, fmt.Errorf("%d leases, %s, round %d: %s", n, form, round, s.Error))
				}
			}
		}
	}
	res.finish()
	return res, errors.Join(append(errs, ctx.Err())...)
}

// cpRun is one round.
type cpRun struct {
	o        *ControlPlaneOptions
	leases   int
	form     string
	round    int
	progress func(string, ...any)
}

func (c cpRun) say(format string, args ...any) {
	c.progress("%d leases, %s, round %d/%d: %s", c.leases, c.form, c.round, c.o.Rounds, fmt.Sprintf(format, args...))
}

// programTimeout bounds the wait for every route: plain routes cost the
// kernel time quadratic in their number (minutes at 65,536).
func programTimeout(n int) time.Duration {
	return 60*time.Second + time.Duration(n)*5*time.Millisecond
}

func (c cpRun) measure(ctx context.Context) (s ControlPlaneSample) {
	nan := Float(math.NaN())
	s = ControlPlaneSample{Round: c.round, Leases: c.leases, Form: c.form, MapSeconds: nan, RoutesSeconds: nan, CPUSeconds: nan}
	err := c.measureInto(ctx, &s)
	if err != nil {
		s.Error = err.Error()
		c.say("%v", err)
	}
	return s
}

// measureInto fills s: a one-node lab whose agent is stopped while the
// registry fills, then timed from its start, then new leases one by one.
func (c cpRun) measureInto(ctx context.Context, s *ControlPlaneSample) error {
	var args []string
	if c.form == FormPlain {
		args = append(args, "--plain-routes")
	}
	// The agent's default resync: the lab's 2 s would make every other
	// new lease meet a full comparison of tens of thousands of peers.
	l, err := lab.Up(ctx, lab.Config{Prefix: c.o.Prefix, StateRoot: c.o.StateRoot, BinDir: c.o.BinDir, CNIPath: c.o.CNIPath,
		Nodes: 1, PodsPerNode: 0, Datapath: lab.DatapathEBPF, ResyncInterval: peers.DefaultResyncInterval,
		AgentArgs: args, Registry: c.o.Registry, Log: c.o.Log})
	if err != nil {
		return err
	}
	defer l.Close()
	node := l.State().Nodes[0]
	if err := l.StopAgent(node.Name); err != nil {
		return err
	}
	store, leases, err := c.fill(ctx, l, node)
	if err != nil {
		return err
	}
	maps, err := datapath.OpenPinned(node.PinRoot)
	if err != nil {
		return err
	}
	defer maps.Close()
	watch, err := watchRoutes(node.Name)
	if err != nil {
		return err
	}
	defer watch.stop()
	if err := c.timeStart(ctx, l, node.Name, maps, watch, leases, s); err != nil {
		return err
	}
	for k := range c.o.NewLeases {
		// A node leaves first (the cluster keeps its size, and the map
		// its room), then a new one joins: the join is timed.
		if err := removeLease(ctx, store, maps.Routes(), leases[k%len(leases)], 5*time.Second); err != nil {
			return fmt.Errorf("new lease %d: %w", k, err)
		}
		toMap, toKernel, err := timeNewLease(ctx, store, maps.Routes(), watch, newLease(k), 5*time.Second)
		if err != nil {
			return fmt.Errorf("new lease %d: %w", k, err)
		}
		s.NewLeaseMapMs = append(s.NewLeaseMapMs, ms(toMap))
		s.NewLeaseKernelMs = append(s.NewLeaseKernelMs, ms(toKernel))
	}
	c.say("new lease -> map p50 %.1f ms, p99 %.1f ms; -> kernel route p99 %.1f ms over %d leases",
		Percentile(s.NewLeaseMapMs, 50), Percentile(s.NewLeaseMapMs, 99), Percentile(s.NewLeaseKernelMs, 99), len(s.NewLeaseMapMs))
	return nil
}

// fill gives the node's underlay the peers' network and writes their
// leases into the registry.
func (c cpRun) fill(ctx context.Context, l *lab.Lab, node lab.Node) (peerStore, []SyntheticLease, error) {
	own, err := netip.ParsePrefix(node.Subnet)
	if err != nil {
		return nil, nil, fmt.Errorf("node subnet %q: %w", node.Subnet, err)
	}
	h, err := lab.HandleAt(node.Name)
	if err != nil {
		return nil, nil, err
	}
	defer h.Close()
	if err := addPeerNet(h); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", node.Name, err)
	}
	// c.leases counts the node's own lease too: a cluster of 65,536
	// subnets is 65,535 peers, as many as the routes map holds.
	leases := SyntheticLeases(c.leases-1, netip.PrefixFrom(own.Addr(), 16).Masked())
	if len(leases) == 0 {
		return nil, nil, errors.New("no peer: want at least 2 leases")
	}
	store, err := newPeerStore(l, c.o.Registry)
	if err != nil {
		return nil, nil, err
	}
	c.say("writing %d peers' leases into %s", len(leases), c.o.Registry)
	filling := time.Now()
	if err := store.fill(ctx, leases); err != nil {
		return nil, nil, err
	}
	c.say("leases written in %.1fs", time.Since(filling).Seconds())
	return store, leases, nil
}

// timeStart starts the agent and times it until the map and the kernel
// routes are complete, then reads its CPU time and RSS.
func (c cpRun) timeStart(ctx context.Context, l *lab.Lab, node string, maps *datapath.Maps, watch *routeWatch,
	leases []SyntheticLease, s *ControlPlaneSample) error {
	start := time.Now()
	if err := l.StartAgent(node); err != nil {
		return err
	}
	mapAt, err := waitMapFilled(ctx, maps.Routes(), leases, programTimeout(len(leases)))
	if err != nil {
		return err
	}
	pid := mustAgentPID(l, node)
	s.MapSeconds = Float(mapAt.Sub(start).Seconds())
	c.say("map complete %.2fs after agent start", float64(s.MapSeconds))
	routesAt, err := watch.waitCount(ctx, len(leases), start.Add(programTimeout(len(leases))))
	if err != nil {
		return err
	}
	agent, err := procstat.Read(pid)
	if err != nil {
		return fmt.Errorf("agent CPU time: %w", err)
	}
	s.RoutesSeconds, s.CPUSeconds = Float(routesAt.Sub(start).Seconds()), Float(agent.CPU().Seconds())
	if s.RSSBytes, err = processRSS(pid); err != nil {
		return err
	}
	c.say("kernel routes complete %.2fs after agent start, agent CPU %.2fs, RSS %.1f MiB",
		float64(s.RoutesSeconds), float64(s.CPUSeconds), float64(s.RSSBytes)/(1<<20))
	return nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

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
	ctx, cancel := context.WithTimeout(ctx, 120*time.Second)
	defer cancel()
	prefix := registry.DefaultPrefix
	cfg := fmt.Sprintf(`{"Network":%q,"SubnetLen":24,"Backend":{"Type":"host-gw"}}`, cpNetwork)
	if _, err := cli.Put(ctx, registry.ConfigKey(prefix), cfg); err != nil {
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

// waitMapFilled waits until every lease has its map entry. The agent
// writes a start's new entries in address order, in one batch: the
// highest lease's entry (looked up every 2 ms, one system call) is the
// last, and a listing then confirms the count (a listing of 65,536
// entries every few milliseconds would take the CPU the agent needs).
func waitMapFilled(ctx context.Context, rm *datapath.RouteMap, leases []SyntheticLease, timeout time.Duration) (time.Time, error) {
	last := leases[0]
	for _, l := range leases {
		if l.Subnet.Addr().Compare(last.Subnet.Addr()) > 0 {
			last = l
		}
	}
	deadline := time.Now().Add(timeout)
	for {
		now := time.Now()
		rt, ok, err := rm.Match(last.Subnet)
		if err != nil {
			return now, err
		}
		if ok && rt.NextHop == last.PublicIP {
			all, err := rm.List()
			if err != nil {
				return now, err
			}
			if len(all) >= len(leases) {
				return now, nil
			}
		}
		if now.After(deadline) {
			return now, fmt.Errorf("after %s: map entries incomplete", timeout)
		}
		select {
		case <-ctx.Done():
			return now, ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// routeWatch follows the kernel's notifications of new routes of the
// agent's protocol in a node: when each destination first appeared.
type routeWatch struct {
	mu      sync.Mutex
	seen    map[netip.Prefix]time.Time
	changed chan struct{}
	err     error
	done    chan struct{}
}

func watchRoutes(node string) (*routeWatch, error) {
	ns, err := netns.GetFromName(node)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", node, err)
	}
	defer ns.Close()
	w := &routeWatch{seen: map[netip.Prefix]time.Time{}, changed: make(chan struct{}, 1), done: make(chan struct{})}
	ch := make(chan netlink.RouteUpdate, 4096)
	opts := netlink.RouteSubscribeOptions{Namespace: &ns, ReceiveBufferSize: 64 << 20, ReceiveBufferForceSize: true,
		ErrorCallback: func(err error) {
			w.mu.Lock()
			if w.err == nil {
				w.err = err
			}
			w.mu.Unlock()
		}}
	if err := netlink.RouteSubscribeWithOptions(ch, w.done, opts); err != nil {
		return nil, fmt.Errorf("watch routes in %s: %w", node, err)
	}
	go func() {
		for ev := range ch {
			if ev.Type != unix.RTM_NEWROUTE || ev.Protocol != peers.RouteProtocol || ev.Dst == nil {
				continue
			}
			ones, _ := ev.Dst.Mask.Size()
			a, ok := netip.AddrFromSlice(ev.Dst.IP.To4())
			if !ok {
				continue
			}
			now := time.Now()
			w.mu.Lock()
			if _, had := w.seen[netip.PrefixFrom(a, ones)]; !had {
				w.seen[netip.PrefixFrom(a, ones)] = now
			}
			w.mu.Unlock()
			select {
			case w.changed <- struct{}{}:
			default:
			}
		}
	}()
	return w, nil
}

func (w *routeWatch) stop() { close(w.done) }

// waitCount waits until n distinct routes were seen, and returns when the
// last of them appeared.
func (w *routeWatch) waitCount(ctx context.Context, n int, deadline time.Time) (time.Time, error) {
	for {
		w.mu.Lock()
		count, err := len(w.seen), w.err
		var last time.Time
		if count >= n {
			for _, t := range w.seen {
				if t.After(last) {
					last = t
				}
			}
		}
		w.mu.Unlock()
		switch {
		case count >= n:
			return last, nil
		case err != nil:
			return time.Time{}, fmt.Errorf("route notifications lost after %d of %d: %w", count, n, err)
		case time.Now().After(deadline):
			return time.Time{}, fmt.Errorf("%d of %d kernel routes after the deadline", count, n)
		}
		select {
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		case <-w.changed:
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// when is the time subnet's route was first seen.
func (w *routeWatch) when(subnet netip.Prefix) (time.Time, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	t, ok := w.seen[subnet]
	return t, ok
}

// removeLease deletes a lease and waits until its map entry is gone.
func removeLease(ctx context.Context, store peerStore, rm *datapath.RouteMap, l SyntheticLease, timeout time.Duration) error {
	pctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := store.remove(pctx, l); err != nil {
		return err
	}
	for {
		if _, ok, err := rm.Match(l.Subnet); err != nil || !ok {
			return err
		}
		select {
		case <-pctx.Done():
			return fmt.Errorf("%s still in the map after %s", l.Subnet, timeout)
		case <-time.After(time.Millisecond):
		}
	}
}

// timeNewLease writes one lease and polls the map every 200 µs until the
// programs would send its subnet to its peer, and waits for the kernel's
// notification of its route.
func timeNewLease(ctx context.Context, store peerStore, rm *datapath.RouteMap, w *routeWatch, l SyntheticLease, timeout time.Duration) (toMap, toKernel time.Duration, err error) {
	pctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	if err := store.put(pctx, l); err != nil {
		return 0, 0, err
	}
	for toMap == 0 || toKernel == 0 {
		if toMap == 0 {
			rt, ok, err := rm.Match(l.Subnet)
			if err != nil {
				return 0, 0, err
			}
			if ok && rt.NextHop == l.PublicIP {
				toMap = time.Since(start)
			}
		}
		if at, ok := w.when(l.Subnet); ok && toKernel == 0 {
			toKernel = at.Sub(start)
		}
		select {
		case <-pctx.Done():
			return 0, 0, fmt.Errorf("%s via %s: map %v, kernel %v after %s", l.Subnet, l.PublicIP, toMap, toKernel, timeout)
		case <-time.After(200 * time.Microsecond):
		}
	}
	return toMap, toKernel, nil
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
	v := sortedFinite(vals)
	if len(v) == 0 {
		return math.NaN()
	}
	rank := int(math.Ceil(p / 100 * float64(len(v))))
	return v[min(max(rank, 1), len(v))-1]
}

// cpFigure is one row of the control-plane table.
type cpFigure struct {
	name string
	get  func(ControlPlaneSample) []float64 // the sample's values (one, or one per new lease)
	stat func([]float64) float64            // per round: the value itself, or a percentile
	// target is checked on the nexthop form at the largest lease count.
	target string
	met    func(float64) bool
}

func one(f func(ControlPlaneSample) float64) func(ControlPlaneSample) []float64 {
	return func(s ControlPlaneSample) []float64 { return []float64{f(s)} }
}

func first(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	return v[0]
}

func pct(p float64) func([]float64) float64 {
	return func(v []float64) float64 { return Percentile(v, p) }
}

// cpFigures are the figures a run reports, with the targets the control
// plane is held to.
var cpFigures = []cpFigure{
	{"map complete [s]", one(func(s ControlPlaneSample) float64 { return float64(s.MapSeconds) }), first,
		"< 2 s", func(v float64) bool { return v < 2 }},
	{"kernel routes complete [s]", one(func(s ControlPlaneSample) float64 { return float64(s.RoutesSeconds) }), first,
		"< 6 s", func(v float64) bool { return v < 6 }},
	{"new lease -> map p50 [ms]", func(s ControlPlaneSample) []float64 { return s.NewLeaseMapMs }, pct(50), "", nil},
	{"new lease -> map p99 [ms]", func(s ControlPlaneSample) []float64 { return s.NewLeaseMapMs }, pct(99),
		"< 10 ms", func(v float64) bool { return v < 10 }},
	{"new lease -> kernel p99 [ms]", func(s ControlPlaneSample) []float64 { return s.NewLeaseKernelMs }, pct(99),
		"< 20 ms", func(v float64) bool { return v < 20 }},
	{"agent RSS [MiB]", one(func(s ControlPlaneSample) float64 {
		if s.RSSBytes == 0 {
			return math.NaN()
		}
		return float64(s.RSSBytes) / (1 << 20)
	}), first, "< 150 MiB", func(v float64) bool { return v < 150 }},
	{"agent CPU to routes [s]", one(func(s ControlPlaneSample) float64 { return float64(s.CPUSeconds) }), first, "", nil},
}

// median is a figure's median over the rounds of one lease count and form.
func (r *ControlPlaneResult) median(f cpFigure, n int, form string) float64 {
	var per []float64
	for _, s := range r.Samples {
		if s.Leases == n && s.Form == form && s.Error == "" {
			per = append(per, f.stat(f.get(s)))
		}
	}
	return Summarize(per).Median
}

// WriteTable prints each figure per lease count (median of the rounds),
// and the targets, checked on the nexthop form at the largest
// count, with how the time to complete grows against linear.
func (r *ControlPlaneResult) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	head := "figure\tform\t"
	for _, n := range r.Leases {
		head += fmt.Sprintf("%d\t", n)
	}
	maxN := r.Leases[len(r.Leases)-1]
	fmt.Fprintf(tw, "%starget at %d\t\n", head, maxN)
	for _, f := range cpFigures {
		for _, form := range r.Forms {
			row := f.name + "\t" + form + "\t"
			for _, n := range r.Leases {
				row += num(r.median(f, n, form)) + "\t"
			}
			verdict := ""
			if f.met != nil && form == FormNexthop {
				verdict = f.target + " " + metWord(f.met(r.median(f, maxN, form)))
			}
			fmt.Fprintf(tw, "%s%s\t\n", row, verdict)
		}
	}
	if minN := r.Leases[0]; minN < maxN {
		for _, f := range cpFigures[:2] {
			for _, form := range r.Forms {
				g := r.Growth(f, form)
				verdict := ""
				if form == FormNexthop {
					verdict = "<= 1.5x " + metWord(g <= 1.5)
				}
				fmt.Fprintf(tw, "%s growth %d -> %d [x linear]\t%s\t%s\t%s\t\n", strings.TrimSuffix(f.name, " [s]"), minN, maxN,
					form, strings.Repeat("\t", len(r.Leases)-1)+num(g), verdict)
			}
		}
	}
	return tw.Flush()
}

// Growth is how much faster than linear a time figure grows from the
// smallest to the largest lease count: 1 is linear.
func (r *ControlPlaneResult) Growth(f cpFigure, form string) float64 {
	lo, hi := r.Leases[0], r.Leases[len(r.Leases)-1]
	return (r.median(f, hi, form) / r.median(f, lo, form)) / (float64(hi) / float64(lo))
}

func metWord(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT met"
}

// WriteChart draws controlplane.png into dir: the times to a complete map
// and to complete kernel routes against the lease count, log-log, per
// route form, with a line of linear growth for reference.
func (r *ControlPlaneResult) WriteChart(dir string) (string, error) {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("Time from agent start to complete (median of %d round(s)), log-log", r.Rounds)
	p.X.Label.Text = "leases (peers)"
	p.Y.Label.Text = "seconds"
	p.X.Scale, p.Y.Scale = plot.LogScale{}, plot.LogScale{}
	p.X.Tick.Marker, p.Y.Tick.Marker = plot.LogTicks{Prec: -1}, plot.LogTicks{Prec: -1}
	i := 0
	ymin := math.Inf(1)
	for _, form := range r.Forms {
		for _, f := range cpFigures[:2] {
			var pts plotter.XYs
			for _, n := range r.Leases {
				if v := r.median(f, n, form); v > 0 {
					pts = append(pts, plotter.XY{X: float64(n), Y: v})
					ymin = math.Min(ymin, v)
				}
			}
			if len(pts) == 0 {
				continue
			}
			line, points, err := plotter.NewLinePoints(pts)
			if err != nil {
				return "", fmt.Errorf("chart: %w", err)
			}
			line.Color, points.Color = plotutil.Color(i), plotutil.Color(i)
			points.Shape = plotutil.Shape(i)
			p.Add(line, points)
			p.Legend.Add(fmt.Sprintf("%s: %s", form, strings.TrimSuffix(f.name, " [s]")), line, points)
			i++
		}
	}
	if i == 0 {
		return "", errors.New("chart: no round completed")
	}
	if lo, hi := r.Leases[0], r.Leases[len(r.Leases)-1]; lo < hi {
		ref := plotter.XYs{{X: float64(lo), Y: ymin}, {X: float64(hi), Y: ymin * float64(hi) / float64(lo)}}
		line, err := plotter.NewLine(ref)
		if err != nil {
			return "", fmt.Errorf("chart: %w", err)
		}
		line.Dashes = []vg.Length{vg.Points(4), vg.Points(4)}
		p.Add(line)
		p.Legend.Add("linear growth", line)
	}
	p.Legend.Top, p.Legend.Left = true, true
	path := filepath.Join(dir, r.fileName("png"))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	if err := p.Save(7*vg.Inch, 4.5*vg.Inch, path); err != nil {
		return "", fmt.Errorf("save chart %s: %w", path, err)
	}
	return path, nil
}

// WriteJSON writes dir/controlplane.json and returns its path.
func (r *ControlPlaneResult) WriteJSON(dir string) (string, error) {
	return writeJSON(dir, r.fileName("json"), r)
}

// fileName is controlplane.<ext>, or controlplane-kube.<ext> for a run
// on Kubernetes Nodes, so both runs' files can sit side by side.
func (r *ControlPlaneResult) fileName(ext string) string {
	if r.Registry == lab.RegistryKube {
		return "controlplane-kube." + ext
	}
	return "controlplane." + ext
}
