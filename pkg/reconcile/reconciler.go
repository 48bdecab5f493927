package reconcile

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

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

// RemoveAll deletes every route and map entry of ours: a node leaving the
// cluster (--cleanup-on-exit).
func (r *Reconciler) RemoveAll() error {
	_, err := r.Apply(context.Background(), nil)
	return err
}
