package reconcile

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/hgw-ebpf/hgw-ebpf/pkg/datapath"
)

// RouteMap is the BPF routes map (*datapath.RouteMap satisfies it). Put
// must overwrite an existing entry in one update.
type RouteMap interface {
	List() ([]datapath.Route, error)
	Put(datapath.Route) error
	Delete(netip.Prefix) error
}

// Options configure a Reconciler.
type Options struct {
	Link     netlink.Link // the underlay device the peers are on
	RouteMap RouteMap     // nil: kernel routes only (--datapath routes)
	// Handle and Netns name one network namespace: Handle does the route
	// work, Netns is where Run listens for route deletions. Both nil: the
	// namespace of the calling thread.
	Handle *netlink.Handle
	Netns  *netns.NsHandle
	Log    *slog.Logger
	// ResyncInterval is how often Run applies without a trigger
	// (default 10s).
	ResyncInterval time.Duration
	// Observe, if set, is called after every Apply that Run makes, with
	// its Result and duration (metrics). OnRepair, if set, is called when
	// one of our routes was deleted by someone else.
	Observe  func(Result, time.Duration)
	OnRepair func()
}

// DefaultResyncInterval is the periodic safety net behind the event-driven
// runs (--resync-interval).
const DefaultResyncInterval = 10 * time.Second

// Result is what one Apply did. Counts are per peer subnet, whichever of
// the two tables needed the write.
type Result struct {
	Added   int // peers that were in neither table
	Changed int // peers with a wrong or missing entry in a table (also repairs)
	Removed int // stale subnets taken out
	// Entries of ours present after the run.
	KernelRoutes, MapEntries int
	// Errors holds one *ItemError per failed write, plus listing errors.
	Errors []error
}

// ItemError is the failure of one subnet in one table; the other items of
// the run were still applied.
type ItemError struct {
	Subnet netip.Prefix
	Table  string // "kernel" or "map"
	Op     string // "replace", "put" or "delete"
	Err    error
}

func (e *ItemError) Error() string {
	return fmt.Sprintf("%s %s %s: %v", e.Table, e.Op, e.Subnet, e.Err)
}

func (e *ItemError) Unwrap() error { return e.Err }

// Reconciler makes the kernel routes and the routes map equal to the
// desired peers: Apply once, or Run on every Update, timer and repair.
type Reconciler struct {
	opts Options
	h    *netlink.Handle
	poke chan struct{}

	applyMu sync.Mutex // one Apply at a time (Run and RemoveAll)

	mu      sync.Mutex
	desired []Peer
	known   bool                       // Update was called at least once
	deleted map[netip.Prefix]time.Time // routes Apply deleted recently: their events are ours
}

// New builds a Reconciler; nothing is applied until Apply or Run.
func New(opts Options) (*Reconciler, error) {
	if opts.Link == nil || opts.Link.Attrs() == nil || opts.Link.Attrs().Index <= 0 {
		return nil, errors.New("reconcile: no underlay link")
	}
	if opts.ResyncInterval <= 0 {
		opts.ResyncInterval = DefaultResyncInterval
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	h := opts.Handle
	if h == nil {
		// The zero Handle opens a socket per request in the calling
		// thread's namespace: nothing to close.
		h = &netlink.Handle{}
	}
	return &Reconciler{opts: opts, h: h, poke: make(chan struct{}, 1), deleted: map[netip.Prefix]time.Time{}}, nil
}

func (r *Reconciler) dev() string { return r.opts.Link.Attrs().Name }

// entry is one subnet's state in one table.
type entry struct {
	nexthop netip.Addr
	ifindex int
}

// Apply makes the kernel routes and map entries of ours equal to peers,
// idempotently: what is right is not written again. Order keeps every live
// peer reachable: kernel add/replace, then map put (a changed next hop is
// overwritten in place, never deleted first), then map delete, then kernel
// delete — so the map never points where the kernel has no route. One
// failing item does not stop the others; all failures are in Result.Errors
// and, joined, in the returned error. ctx stops the run between items.
func (r *Reconciler) Apply(ctx context.Context, peers []Peer) (Result, error) {
	r.applyMu.Lock()
	defer r.applyMu.Unlock()

	var res Result
	ifindex := r.opts.Link.Attrs().Index
	want := make(map[netip.Prefix]entry, len(peers))
	keys := make(map[netip.Prefix]string, len(peers))
	for _, p := range peers {
		p.Subnet = p.Subnet.Masked() // the kernel and the map list masked prefixes
		if !p.Subnet.Addr().Is4() || !p.NextHop.Is4() {
			res.Errors = append(res.Errors, &ItemError{Subnet: p.Subnet, Table: "kernel", Op: "replace",
				Err: fmt.Errorf("peer %s via %s is not IPv4", p.Subnet, p.NextHop)})
			continue
		}
		if _, dup := want[p.Subnet]; dup {
			continue // Desired never yields duplicates; the first wins
		}
		want[p.Subnet] = entry{nexthop: p.NextHop, ifindex: ifindex}
		keys[p.Subnet] = p.Key
	}

	kernel, odd, kerr := r.listKernel()
	if kerr != nil {
		res.Errors = append(res.Errors, kerr)
	}
	var (
		inMap map[netip.Prefix]entry
		merr  error
	)
	if r.opts.RouteMap != nil {
		if inMap, merr = r.listMap(); merr != nil {
			res.Errors = append(res.Errors, merr)
		}
	}
	// Which tables held a subnet before the run, for the log and counts.
	before := func(p netip.Prefix) (entry, bool) {
		if e, ok := kernel[p]; ok {
			return e.entry, true
		}
		e, ok := inMap[p]
		return e, ok
	}
	useMap := r.opts.RouteMap != nil && merr == nil

	subnets := sortedKeys(want)
	for _, subnet := range subnets {
		if ctx.Err() != nil {
			break
		}
		w := want[subnet]
		var wrote []string
		// Without a kernel route (or not knowing it), no map entry: the
		// fast path must never send where the kernel would not.
		routed := false
		if kerr == nil {
			if kernel[subnet].entry == w {
				routed = true
			} else if err := r.h.RouteReplace(kernelRoute(subnet, w.nexthop, w.ifindex)); err != nil {
				res.Errors = append(res.Errors, &ItemError{Subnet: subnet, Table: "kernel", Op: "replace", Err: fmt.Errorf("%s via %s dev %s: %w", subnet, w.nexthop, r.dev(), err)})
			} else {
				routed = true
				wrote = append(wrote, "kernel")
				if _, had := kernel[subnet]; !had {
					res.KernelRoutes++
				}
			}
		}
		if useMap && routed && inMap[subnet] != w {
			rt := datapath.Route{Subnet: subnet, NextHop: w.nexthop, Ifindex: uint32(w.ifindex)}
			if err := r.opts.RouteMap.Put(rt); err != nil {
				res.Errors = append(res.Errors, &ItemError{Subnet: subnet, Table: "map", Op: "put", Err: err})
			} else {
				wrote = append(wrote, "map")
				if _, had := inMap[subnet]; !had {
					res.MapEntries++
				}
			}
		}
		if len(wrote) == 0 {
			continue
		}
		attrs := []any{"subnet", subnet, "nexthop", w.nexthop, "dev", r.dev(), "key", keys[subnet], "tables", wrote}
		if old, had := before(subnet); had {
			res.Changed++
			r.opts.Log.Info("peer changed", append(attrs, "was", old.nexthop)...)
		} else {
			res.Added++
			r.opts.Log.Info("peer added", attrs...)
		}
	}

	// Stale entries go last: map first, then the kernel route under it.
	removed := map[netip.Prefix][]string{}
	if useMap {
		for _, subnet := range sortedKeys(inMap) {
			if _, ok := want[subnet]; ok || ctx.Err() != nil {
				continue
			}
			if err := r.opts.RouteMap.Delete(subnet); err != nil {
				res.Errors = append(res.Errors, &ItemError{Subnet: subnet, Table: "map", Op: "delete", Err: err})
				continue
			}
			res.MapEntries--
			removed[subnet] = append(removed[subnet], "map")
		}
	}
	for _, subnet := range sortedKeys(kernel) {
		if _, ok := want[subnet]; ok || ctx.Err() != nil {
			continue
		}
		if err := r.deleteRoute(kernel[subnet].route); err != nil {
			res.Errors = append(res.Errors, &ItemError{Subnet: subnet, Table: "kernel", Op: "delete", Err: err})
			continue
		}
		res.KernelRoutes--
		removed[subnet] = append(removed[subnet], "kernel")
	}
	// Routes of ours that Apply never installs (a metric, a TOS): a
	// leftover or a hand-made one, in the way of the real one.
	for _, rt := range odd {
		if ctx.Err() != nil {
			break
		}
		p, _ := prefixOf(rt.Dst)
		if err := r.deleteRoute(rt); err != nil {
			res.Errors = append(res.Errors, &ItemError{Subnet: p, Table: "kernel", Op: "delete", Err: err})
			continue
		}
		r.opts.Log.Info("odd route of ours removed", "subnet", p, "metric", rt.Priority, "dev", r.dev())
	}
	for _, subnet := range sortedKeys(removed) {
		old, _ := before(subnet)
		res.Removed++
		r.opts.Log.Info("peer removed", "subnet", subnet, "nexthop", old.nexthop, "dev", r.dev(), "tables", removed[subnet])
	}

	if err := ctx.Err(); err != nil {
		res.Errors = append(res.Errors, fmt.Errorf("apply interrupted: %w", err))
	}
	res.KernelRoutes += len(kernel)
	res.MapEntries += len(inMap)
	for _, err := range res.Errors {
		r.opts.Log.Error("reconcile", "err", err)
	}
	return res, errors.Join(res.Errors...)
}

// kernelEntry is one route of ours as listed, and the route itself for an
// exact delete.
type kernelEntry struct {
	entry
	route netlink.Route
}

// listKernel is our kernel routes by subnet, as Apply installs them
// (metric 0, TOS 0); a route of ours on another device or without a
// gateway is listed too, so that it gets replaced or removed. Other routes
// of ours are returned as odd, for removal.
func (r *Reconciler) listKernel() (map[netip.Prefix]kernelEntry, []netlink.Route, error) {
	routes, err := ourRoutes(r.h)
	if err != nil {
		return nil, nil, err
	}
	out := make(map[netip.Prefix]kernelEntry, len(routes))
	var odd []netlink.Route
	for _, rt := range routes {
		p, ok := prefixOf(rt.Dst)
		if !ok || rt.Priority != 0 || rt.Tos != 0 {
			odd = append(odd, rt)
			continue
		}
		gw, _ := netip.AddrFromSlice(rt.Gw.To4())
		out[p] = kernelEntry{entry: entry{nexthop: gw, ifindex: rt.LinkIndex}, route: rt}
	}
	return out, odd, nil
}

func (r *Reconciler) listMap() (map[netip.Prefix]entry, error) {
	list, err := r.opts.RouteMap.List()
	if err != nil {
		return nil, fmt.Errorf("list routes map: %w", err)
	}
	out := make(map[netip.Prefix]entry, len(list))
	for _, e := range list {
		out[e.Subnet] = entry{nexthop: e.NextHop, ifindex: int(e.Ifindex)}
	}
	return out, nil
}

// deleteRoute removes one route of ours exactly as listed, remembering it
// so that Run does not take the kernel's deletion event for a repair.
func (r *Reconciler) deleteRoute(rt netlink.Route) error {
	subnet, _ := prefixOf(rt.Dst)
	r.noteDeletion(subnet)
	err := r.h.RouteDel(&rt)
	if errors.Is(err, unix.ESRCH) {
		return nil // already gone: the goal
	}
	if err != nil {
		r.forgetDeletion(subnet)
		return fmt.Errorf("delete route %s via %s: %w", routeString(rt.Dst), rt.Gw, err)
	}
	return nil
}

// RemoveAll deletes every route and map entry of ours: a node leaving the
// cluster (--cleanup-on-exit).
func (r *Reconciler) RemoveAll() error {
	_, err := r.Apply(context.Background(), nil)
	return err
}

func sortedKeys[V any](m map[netip.Prefix]V) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(m))
	for p := range m {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	return out
}
