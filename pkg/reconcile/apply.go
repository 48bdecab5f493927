package reconcile

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/hgw-ebpf/hgw-ebpf/pkg/datapath"
)

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

	a := r.plan(peers)
	a.upsert(ctx)
	a.removeStale(ctx)
	if err := ctx.Err(); err != nil {
		a.res.Errors = append(a.res.Errors, fmt.Errorf("apply interrupted: %w", err))
	}
	a.res.KernelRoutes += len(a.kernel)
	a.res.MapEntries += len(a.inMap)
	for _, err := range a.res.Errors {
		r.opts.Log.Error("reconcile", "err", err)
	}
	return a.res, errors.Join(a.res.Errors...)
}

// applyRun is one Apply: the desired and the listed state, and the result.
type applyRun struct {
	r    *Reconciler
	res  Result // KernelRoutes/MapEntries hold the change until the end
	want map[netip.Prefix]entry
	keys map[netip.Prefix]string // etcd key per subnet, for the log

	kernel   map[netip.Prefix]kernelEntry
	odd      []netlink.Route
	kernelOK bool // kernel listed: without it nothing is written blind
	inMap    map[netip.Prefix]entry
	mapOK    bool // map present and listed
}

func (r *Reconciler) plan(peers []Peer) *applyRun {
	a := &applyRun{r: r, want: make(map[netip.Prefix]entry, len(peers)), keys: make(map[netip.Prefix]string, len(peers))}
	ifindex := r.opts.Link.Attrs().Index
	for _, p := range peers {
		p.Subnet = p.Subnet.Masked() // the kernel and the map list masked prefixes
		if !p.Subnet.Addr().Is4() || !p.NextHop.Is4() {
			a.res.Errors = append(a.res.Errors, &ItemError{Subnet: p.Subnet, Table: "kernel", Op: "replace",
				Err: fmt.Errorf("peer %s via %s is not IPv4", p.Subnet, p.NextHop)})
			continue
		}
		if _, dup := a.want[p.Subnet]; dup {
			continue // Desired never yields duplicates; the first wins
		}
		a.want[p.Subnet] = entry{nexthop: p.NextHop, ifindex: ifindex}
		a.keys[p.Subnet] = p.Key
	}
	var err error
	if a.kernel, a.odd, err = r.listKernel(); err != nil {
		a.res.Errors = append(a.res.Errors, err)
	}
	a.kernelOK = err == nil
	if r.opts.RouteMap != nil {
		if a.inMap, err = r.listMap(); err != nil {
			a.res.Errors = append(a.res.Errors, err)
		}
		a.mapOK = err == nil
	}
	return a
}

// before is a subnet's entry before the run, from either table.
func (a *applyRun) before(p netip.Prefix) (entry, bool) {
	if e, ok := a.kernel[p]; ok {
		return e.entry, true
	}
	e, ok := a.inMap[p]
	return e, ok
}

// upsert adds or corrects every desired subnet: kernel route, then map
// entry, one subnet at a time.
func (a *applyRun) upsert(ctx context.Context) {
	r := a.r
	for _, subnet := range sortedKeys(a.want, a.needsWrite) {
		if ctx.Err() != nil {
			return
		}
		w := a.want[subnet]
		var wrote []string
		// Without a kernel route (or not knowing it), no map entry: the
		// fast path must never send where the kernel would not.
		routed := false
		if a.kernelOK {
			if a.kernel[subnet].entry == w {
				routed = true
			} else if err := r.h.RouteReplace(kernelRoute(subnet, w.nexthop, w.ifindex)); err != nil {
				a.fail(subnet, "kernel", "replace", fmt.Errorf("%s via %s dev %s: %w", subnet, w.nexthop, r.dev(), err))
			} else {
				routed = true
				wrote = append(wrote, "kernel")
				if _, had := a.kernel[subnet]; !had {
					a.res.KernelRoutes++
				}
			}
		}
		if a.mapOK && routed && a.inMap[subnet] != w {
			rt := datapath.Route{Subnet: subnet, NextHop: w.nexthop, Ifindex: uint32(w.ifindex)}
			if err := r.opts.RouteMap.Put(rt); err != nil {
				a.fail(subnet, "map", "put", err)
			} else {
				wrote = append(wrote, "map")
				if _, had := a.inMap[subnet]; !had {
					a.res.MapEntries++
				}
			}
		}
		if len(wrote) == 0 {
			continue
		}
		attrs := []any{"subnet", subnet, "nexthop", w.nexthop, "dev", r.dev(), "key", a.keys[subnet], "tables", wrote}
		if old, had := a.before(subnet); had {
			a.res.Changed++
			r.opts.Log.Info("peer changed", append(attrs, "was", old.nexthop)...)
		} else {
			a.res.Added++
			r.opts.Log.Info("peer added", attrs...)
		}
	}
}

// removeStale takes out what is not desired: map entries first, then the
// kernel routes under them, then routes of ours Apply never installs.
func (a *applyRun) removeStale(ctx context.Context) {
	r := a.r
	removed := map[netip.Prefix][]string{}
	if a.mapOK {
		for _, subnet := range sortedKeys(a.inMap, a.unwanted) {
			if ctx.Err() != nil {
				break
			}
			if err := r.opts.RouteMap.Delete(subnet); err != nil {
				a.fail(subnet, "map", "delete", err)
				continue
			}
			a.res.MapEntries--
			removed[subnet] = append(removed[subnet], "map")
		}
	}
	for _, subnet := range sortedKeys(a.kernel, a.unwanted) {
		if ctx.Err() != nil {
			break
		}
		if err := r.deleteRoute(a.kernel[subnet].route); err != nil {
			a.fail(subnet, "kernel", "delete", err)
			continue
		}
		a.res.KernelRoutes--
		removed[subnet] = append(removed[subnet], "kernel")
	}
	// A metric or TOS: a leftover or hand-made route of ours, in the way.
	for _, rt := range a.odd {
		if ctx.Err() != nil {
			break
		}
		p, _ := prefixOf(rt.Dst)
		if err := r.deleteRoute(rt); err != nil {
			a.fail(p, "kernel", "delete", err)
			continue
		}
		r.opts.Log.Info("odd route of ours removed", "subnet", p, "metric", rt.Priority, "dev", r.dev())
	}
	for _, subnet := range sortedKeys(removed, nil) {
		old, _ := a.before(subnet)
		a.res.Removed++
		r.opts.Log.Info("peer removed", "subnet", subnet, "nexthop", old.nexthop, "dev", r.dev(), "tables", removed[subnet])
	}
}

func (a *applyRun) fail(subnet netip.Prefix, table, op string, err error) {
	a.res.Errors = append(a.res.Errors, &ItemError{Subnet: subnet, Table: table, Op: op, Err: err})
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

// needsWrite tells whether a desired subnet is missing or wrong in a
// table that upsert would write (with the kernel unlisted, none is).
func (a *applyRun) needsWrite(subnet netip.Prefix) bool {
	w := a.want[subnet]
	return a.kernelOK && (a.kernel[subnet].entry != w || (a.mapOK && a.inMap[subnet] != w))
}

// unwanted tells whether a listed subnet is not desired.
func (a *applyRun) unwanted(subnet netip.Prefix) bool {
	_, ok := a.want[subnet]
	return !ok
}

// sortedKeys orders the subnets of m that keep accepts (all if nil) by
// address, then length: a stable order for writes and logs. Filtering
// first keeps the sort to what changes: a run over thousands of peers
// that are all in place sorts nothing.
func sortedKeys[V any](m map[netip.Prefix]V, keep func(netip.Prefix) bool) []netip.Prefix {
	var out []netip.Prefix
	for p := range m {
		if keep == nil || keep(p) {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	return out
}
