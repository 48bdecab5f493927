package reconcile

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/hgw-ebpf/hgw-ebpf/pkg/datapath"
)

// RouteProtocol tags the kernel routes the agent owns ("proto 104" in
// `ip route`). Only routes with this tag are ever deleted; flanneld's routes
// (proto boot) for the same subnet are replaced, which is how a node moves
// from flanneld to hgw-ebpf.
const RouteProtocol netlink.RouteProtocol = 104

// RouteMap is the BPF routes map (datapath.RouteMap satisfies it).
type RouteMap interface {
	List() ([]datapath.Route, error)
	Put(datapath.Route) error
	Delete(netip.Prefix) error
}

// Options configure a Reconciler.
type Options struct {
	Link           netlink.Link    // the underlay device
	RouteMap       RouteMap        // nil: kernel routes only
	Handle         *netlink.Handle // nil: this thread's network namespace
	Netns          *netns.NsHandle // namespace of Handle, for route events; nil: current
	Log            *slog.Logger
	ResyncInterval time.Duration
	// Observe is called after every Apply; OnRepair when one of our
	// routes was deleted behind our back.
	Observe  func(Result, time.Duration)
	OnRepair func()
}

// Result is what one Apply changed, per table.
type Result struct {
	Added, Changed, Removed  int
	KernelRoutes, MapEntries int // entries after the run
	Errors                   []error
}

// Reconciler applies the desired peers.
type Reconciler struct {
	opts Options
	h    *netlink.Handle
	poke chan struct{}

	mu      sync.Mutex
	desired []Peer
	known   bool                      // desired was set at least once
	deleted map[netip.Prefix]struct{} // routes Apply deleted, whose events are ours
}

// ownDeletion tells a route event caused by Apply's own deletion (a peer
// left) from one made behind our back.
func (r *Reconciler) ownDeletion(dst *net.IPNet) bool {
	p, ok := prefixOf(dst)
	if !ok {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ours := r.deleted[p]
	delete(r.deleted, p)
	return ours
}

// New builds a Reconciler.
func New(opts Options) (*Reconciler, error) {
	if opts.Link == nil {
		return nil, errors.New("reconcile: no underlay link")
	}
	if opts.ResyncInterval <= 0 {
		opts.ResyncInterval = 10 * time.Second
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	h := opts.Handle
	if h == nil {
		var err error
		if h, err = netlink.NewHandle(); err != nil {
			return nil, fmt.Errorf("netlink handle: %w", err)
		}
	}
	return &Reconciler{opts: opts, h: h, poke: make(chan struct{}, 1), deleted: map[netip.Prefix]struct{}{}}, nil
}

// Update sets the desired peers and triggers a run.
func (r *Reconciler) Update(peers []Peer) {
	r.mu.Lock()
	r.desired, r.known = peers, true
	r.mu.Unlock()
	r.trigger()
}

func (r *Reconciler) trigger() {
	select {
	case r.poke <- struct{}{}:
	default: // a run is already pending; it will see the latest state
	}
}

// Run applies the desired state on every Update, every resync interval and
// when one of our routes is deleted, until ctx is done. Nothing is applied
// before the first Update: an agent that has not heard from etcd yet leaves
// the existing routes alone.
func (r *Reconciler) Run(ctx context.Context) error {
	events := make(chan netlink.RouteUpdate, 64)
	done := make(chan struct{})
	defer close(done)
	subscribe := func() {
		opts := netlink.RouteSubscribeOptions{
			ErrorCallback: func(err error) {
				select {
				case <-done: // Run returned and closed the socket: not a failure
					return
				default:
				}
				r.opts.Log.Warn("route event subscription", "err", err)
			},
		}
		if r.opts.Netns != nil {
			opts.Namespace = r.opts.Netns
		}
		if err := netlink.RouteSubscribeWithOptions(events, done, opts); err != nil {
			r.opts.Log.Warn("cannot watch route deletions; relying on resync", "err", err)
		}
	}
	subscribe()
	t := time.NewTicker(r.opts.ResyncInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-r.poke:
		case <-t.C:
		case ev, ok := <-events:
			if !ok { // the subscription failed: open a new one
				events = make(chan netlink.RouteUpdate, 64)
				subscribe()
				continue
			}
			if ev.Type != unix.RTM_DELROUTE || ev.Protocol != RouteProtocol {
				continue
			}
			if r.ownDeletion(ev.Dst) {
				continue
			}
			r.opts.Log.Warn("route of ours deleted, repairing", "subnet", ipNetString(ev.Dst))
			if r.opts.OnRepair != nil {
				r.opts.OnRepair()
			}
		}
		r.mu.Lock()
		peers, known := r.desired, r.known
		r.mu.Unlock()
		if !known {
			continue
		}
		start := time.Now()
		res := r.Apply(peers)
		if r.opts.Observe != nil {
			r.opts.Observe(res, time.Since(start))
		}
	}
}

func ipNetString(n *net.IPNet) string {
	if n == nil {
		return "default"
	}
	return n.String()
}

// Apply makes kernel routes and map entries equal to peers. One failing
// item does not stop the others; every error is in the Result.
func (r *Reconciler) Apply(peers []Peer) Result {
	var res Result
	want := make(map[netip.Prefix]netip.Addr, len(peers))
	for _, p := range peers {
		want[p.Subnet] = p.NextHop
	}
	failed := r.applyKernel(want, &res)
	if r.opts.RouteMap != nil {
		// No kernel route, no fast path: the map must never send where
		// the kernel itself would not.
		mapWant := want
		if len(failed) > 0 {
			mapWant = make(map[netip.Prefix]netip.Addr, len(want))
			for p, nh := range want {
				if !failed[p] {
					mapWant[p] = nh
				}
			}
		}
		r.applyMap(mapWant, &res)
	}
	for _, err := range res.Errors {
		r.opts.Log.Error("reconcile", "err", err)
	}
	return res
}

func (r *Reconciler) dev() string { return r.opts.Link.Attrs().Name }

func (r *Reconciler) ourRoutes() ([]netlink.Route, error) { return ourRoutes(r.h) }

// ourRoutes lists the main table's routes with our protocol tag.
func ourRoutes(h *netlink.Handle) ([]netlink.Route, error) {
	filter := &netlink.Route{Table: unix.RT_TABLE_MAIN, Protocol: RouteProtocol}
	for attempt := 0; ; attempt++ {
		routes, err := h.RouteListFiltered(netlink.FAMILY_V4, filter, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
		if errors.Is(err, netlink.ErrDumpInterrupted) && attempt < 5 {
			continue // the table changed during the dump: read it again
		}
		if err != nil {
			return nil, fmt.Errorf("list routes with protocol %d: %w", RouteProtocol, err)
		}
		return routes, nil
	}
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP.To4())
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a, ones), true
}

// applyKernel returns the subnets whose route the kernel refused.
func (r *Reconciler) applyKernel(want map[netip.Prefix]netip.Addr, res *Result) map[netip.Prefix]bool {
	failed := map[netip.Prefix]bool{}
	routes, err := r.ourRoutes()
	if err != nil {
		res.Errors = append(res.Errors, err)
		return failed
	}
	have := map[netip.Prefix]netlink.Route{}
	for _, rt := range routes {
		if p, ok := prefixOf(rt.Dst); ok {
			have[p] = rt
		}
	}
	ifindex := r.opts.Link.Attrs().Index
	// Add and replace first, delete last: a peer's route is never missing.
	for subnet, nh := range want {
		old, exists := have[subnet]
		if exists && old.LinkIndex == ifindex && old.Gw.Equal(nh.AsSlice()) {
			continue
		}
		rt := &netlink.Route{
			LinkIndex: ifindex, Dst: &net.IPNet{IP: subnet.Addr().AsSlice(), Mask: net.CIDRMask(subnet.Bits(), 32)},
			Gw: nh.AsSlice(), Protocol: RouteProtocol, Table: unix.RT_TABLE_MAIN,
		}
		if err := r.h.RouteReplace(rt); err != nil {
			res.Errors = append(res.Errors, fmt.Errorf("route %s via %s dev %s: %w", subnet, nh, r.dev(), err))
			failed[subnet] = true
			continue
		}
		if exists {
			res.Changed++
			r.opts.Log.Info("route changed", "subnet", subnet, "nexthop", nh, "dev", r.dev(), "table", "kernel")
		} else {
			res.Added++
			r.opts.Log.Info("route added", "subnet", subnet, "nexthop", nh, "dev", r.dev(), "table", "kernel")
		}
	}
	for subnet, rt := range have {
		if _, ok := want[subnet]; ok {
			continue
		}
		r.mu.Lock()
		r.deleted[subnet] = struct{}{}
		r.mu.Unlock()
		if err := r.h.RouteDel(&rt); err != nil && !errors.Is(err, unix.ESRCH) {
			res.Errors = append(res.Errors, fmt.Errorf("delete route %s: %w", subnet, err))
			continue
		}
		res.Removed++
		r.opts.Log.Info("route removed", "subnet", subnet, "nexthop", rt.Gw, "dev", r.dev(), "table", "kernel")
	}
	res.KernelRoutes = len(want) - len(failed)
	return failed
}

func (r *Reconciler) applyMap(want map[netip.Prefix]netip.Addr, res *Result) {
	entries, err := r.opts.RouteMap.List()
	if err != nil {
		res.Errors = append(res.Errors, err)
		return
	}
	have := make(map[netip.Prefix]datapath.Route, len(entries))
	for _, e := range entries {
		have[e.Subnet] = e
	}
	ifindex := uint32(r.opts.Link.Attrs().Index)
	// Put overwrites in place: a changed next hop never leaves a gap.
	for subnet, nh := range want {
		old, exists := have[subnet]
		if exists && old.NextHop == nh && old.Ifindex == ifindex {
			continue
		}
		if err := r.opts.RouteMap.Put(datapath.Route{Subnet: subnet, NextHop: nh, Ifindex: ifindex}); err != nil {
			res.Errors = append(res.Errors, err)
			continue
		}
		if exists {
			res.Changed++
		} else {
			res.Added++
		}
		r.opts.Log.Info("map entry set", "subnet", subnet, "nexthop", nh, "dev", r.dev(), "table", "map")
	}
	for subnet := range have {
		if _, ok := want[subnet]; ok {
			continue
		}
		if err := r.opts.RouteMap.Delete(subnet); err != nil {
			res.Errors = append(res.Errors, err)
			continue
		}
		res.Removed++
		r.opts.Log.Info("map entry removed", "subnet", subnet, "table", "map")
	}
	res.MapEntries = len(want)
}

// KernelRoutes lists the agent's kernel routes (protocol RouteProtocol) in
// the namespace of h, in the map's terms.
func KernelRoutes(h *netlink.Handle) ([]datapath.Route, error) {
	routes, err := ourRoutes(h)
	if err != nil {
		return nil, err
	}
	out := make([]datapath.Route, 0, len(routes))
	for _, rt := range routes {
		p, ok := prefixOf(rt.Dst)
		gw, gok := netip.AddrFromSlice(rt.Gw.To4())
		if !ok || !gok {
			continue
		}
		out = append(out, datapath.Route{Subnet: p, NextHop: gw, Ifindex: uint32(rt.LinkIndex)})
	}
	return out, nil
}

// RemoveKernelRoutes deletes every route tagged RouteProtocol in the
// namespace of h, on any device: `hgw-ebpf cleanup` without an agent.
func RemoveKernelRoutes(h *netlink.Handle) (int, error) {
	routes, err := ourRoutes(h)
	if err != nil {
		return 0, err
	}
	var errs []error
	n := 0
	for _, rt := range routes {
		if err := h.RouteDel(&rt); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("delete route %s: %w", ipNetString(rt.Dst), err))
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}

// RemoveAll deletes every route and map entry the agent owns: what a node
// leaving the cluster does.
func (r *Reconciler) RemoveAll() error {
	res := r.Apply(nil)
	return errors.Join(res.Errors...)
}
