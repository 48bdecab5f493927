package peers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
)

// RouteMap is the BPF routes map of the reconciler's family
// (*datapath.RouteMap for IPv4, *datapath.Route6Map for IPv6). Put must
// overwrite an existing entry in one update.
type RouteMap interface {
	List() ([]datapath.Route, error)
	Put(datapath.Route) error
	Delete(netip.Prefix) error
}

// BatchRouteMap is a RouteMap that writes many entries per system call
// (*datapath.RouteMap is one). PutBatch writes in order and returns how
// many were written before the first failure.
type BatchRouteMap interface {
	RouteMap
	PutBatch([]datapath.Route) (int, error)
}

// Options configure a Reconciler.
type Options struct {
	// Family is what the Reconciler routes (IPv4 if zero): only routes,
	// nexthop objects, addresses and events of that family are its
	// business. A dual-stack node runs one Reconciler per family.
	Family   Family
	Link     netlink.Link // the underlay device the peers are on
	RouteMap RouteMap     // nil: kernel routes only (--datapath routes)
	// Netns is the network namespace the routes are in and the route
	// events come from; nil: the namespace of the thread calling New.
	Netns *netns.NsHandle
	// PlainRoutes installs plain gateway routes even where the kernel has
	// nexthop objects (for tools that cannot read `nhid` routes). Objects
	// of ours left by an earlier run are removed.
	PlainRoutes bool
	Log         *slog.Logger
	// ResyncInterval is how often Run makes the full comparison without
	// a trigger (default 10s).
	ResyncInterval time.Duration
	// Observe, if set, is called after every run Run makes, with its
	// Result and duration (metrics). OnRepair, if set, is called when one
	// of our routes or nexthops was deleted by someone else.
	Observe  func(Result, time.Duration)
	OnRepair func()
}

// DefaultResyncInterval is the periodic safety net behind the event-driven
// runs (--resync-interval).
const DefaultResyncInterval = 10 * time.Second

// Result is what one run did. Counts are per peer subnet, whichever of
// the two tables needed the write.
type Result struct {
	Added   int // peers that were in neither table
	Changed int // peers with a wrong or missing entry in a table (also repairs)
	Removed int // stale subnets taken out
	// Blocked counts desired peers left alone because another program's
	// route holds their destination, or a local route or address
	// overlaps them (each logged once).
	Blocked int
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
	Op     string // "replace", "nexthop", "put" or "delete"
	Err    error
}

func (e *ItemError) Error() string {
	return fmt.Sprintf("%s %s %s: %v", e.Table, e.Op, e.Subnet, e.Err)
}

func (e *ItemError) Unwrap() error { return e.Err }

// Reconciler makes the kernel routes and the routes map equal to the
// desired peers: Apply once, or Run on every Update and Change, timer and
// repair.
type Reconciler struct {
	opts Options
	fam  Family
	poke chan struct{}

	applyMu sync.Mutex // one run at a time (Run, Apply, RemoveAll); holds what follows, to localMu
	c       *conn      // the full runs' socket
	// dc is the incremental runs' socket: they run between the steps of a
	// full run, while a dump may be half read on c.
	dc *conn
	nh nhMode
	// The desired peers as Run took them in (Update replaces them, Change
	// edits them), and their changes not applied yet.
	last  prefixMap[desiredPeer]
	delta map[netip.Prefix]pending
	// active is the full run under way, if any: the incremental runs it
	// lets through tell it what they took over.
	active *fullRun
	// What the last full run saw and later runs changed: the IDs of our
	// nexthop objects by peer (for the incremental runs: no listing), and
	// our entries in each table.
	nexthops      addrMap[uint32]
	kernelN, mapN int
	blockLogged   map[netip.Prefix]string // subnet -> reason already logged
	nhLogged      map[uint32]bool         // nexthop IDs of others already logged
	blockedSet    map[netip.Prefix]string // subnets the last full run did not route, and why
	localMu       sync.Mutex
	local         []netip.Prefix // local prefixes from the last listing
	localListed   bool

	mu        sync.Mutex
	inbox     inbox                      // what Update, Change and the route events brought since Run last looked
	waiting   atomic.Bool                // inbox is not empty: a full run lets it through
	known     bool                       // Update was called at least once
	full      bool                       // the next run makes the full comparison
	deleted   map[netip.Prefix]time.Time // routes a run deleted recently: their events are ours
	deadNH    map[uint32]time.Time       // nexthops a run deleted recently
	subscribe func() (subscription, error)
}

// inbox is what arrived for Run: a new complete set of peers, changes
// after it, and deletions to repair.
type inbox struct {
	replace  []Peer
	replaced bool
	changes  []PeerChange
	repairs  []event
}

// nhMode is whether routes go through nexthop objects.
type nhMode int

const (
	nhUnknown nhMode = iota // not probed yet
	nhOn
	nhOff  // plain routes asked for; objects of ours are still removed
	nhNone // the kernel has no nexthop objects: plain routes, never listed again
)

// desiredPeer is one desired subnet's next hop, and its lease's key (for
// logs).
type desiredPeer struct {
	nexthop netip.Addr
	key     string
}

// New builds a Reconciler and opens its netlink socket; nothing is
// applied until Apply or Run.
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
	switch opts.Family {
	case 0:
		opts.Family = IPv4
	case IPv4, IPv6:
	default:
		return nil, fmt.Errorf("reconcile: address family %d: want IPv4 or IPv6", opts.Family)
	}
	c, err := dial(opts.Netns)
	if err != nil {
		return nil, err
	}
	dc, err := dial(opts.Netns)
	if err != nil {
		c.Close()
		return nil, err
	}
	r := &Reconciler{opts: opts, fam: opts.Family, c: c, dc: dc, poke: make(chan struct{}, 1), deleted: map[netip.Prefix]time.Time{},
		deadNH: map[uint32]time.Time{}, nexthops: newAddrMap[uint32](0), blockLogged: map[netip.Prefix]string{}, nhLogged: map[uint32]bool{},
		last: newPrefixMap[desiredPeer](0), delta: map[netip.Prefix]pending{}, blockedSet: map[netip.Prefix]string{}}
	r.subscribe = r.subscribeEvents
	if opts.PlainRoutes {
		r.nh = nhOff
	}
	return r, nil
}

// Close releases the netlink sockets; Run must have returned.
func (r *Reconciler) Close() error {
	r.applyMu.Lock()
	defer r.applyMu.Unlock()
	return errors.Join(r.c.Close(), r.dc.Close())
}

func (r *Reconciler) dev() string { return r.opts.Link.Attrs().Name }

func (r *Reconciler) ifindex() int { return r.opts.Link.Attrs().Index }

// RemoveAll deletes every route, nexthop and map entry of ours: a node
// leaving the cluster (--cleanup-on-exit).
func (r *Reconciler) RemoveAll() error {
	_, err := r.Apply(context.Background(), nil)
	return err
}

// LocalPrefixes is this node's local prefixes of r's family as the last
// full run listed them (listed now if none ran yet): every address (as a
// host prefix and as its network) and every connected or local route that
// is not ours. A lease overlapping one of them must not be routed (Desired's
// Input.Local); Apply checks it again against its own listing.
func (r *Reconciler) LocalPrefixes() ([]netip.Prefix, error) {
	r.localMu.Lock()
	listed := r.localListed
	out := r.local
	r.localMu.Unlock()
	if listed {
		return out, nil
	}
	d, err := dumpAt(r.opts.Netns, true, r.fam)
	if err != nil {
		return nil, err
	}
	d.c.Close()
	out = localPrefixes(d.routes, d.addrs)
	r.setLocal(out)
	return out, nil
}

func (r *Reconciler) setLocal(p []netip.Prefix) {
	r.localMu.Lock()
	r.local, r.localListed = p, true
	r.localMu.Unlock()
}

// localPrefixes is the connected and local routes that are not ours, and
// the addresses, without repeats.
func localPrefixes(routes []kroute, addrs []netip.Prefix) []netip.Prefix {
	seen := map[netip.Prefix]bool{}
	var out []netip.Prefix
	add := func(p netip.Prefix) {
		if p.Bits() > 0 && !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	for _, a := range addrs {
		add(a)
	}
	for _, k := range routes {
		if !k.ours() && k.local() {
			add(k.dst)
		}
	}
	return out
}
