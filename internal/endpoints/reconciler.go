// Package endpoints keeps the datapath's `endpoints` map and the per-pod
// from_pods attachments equal to what the kernel says about the bridge's
// pods, so the endpoint fast path works for pods the hgw-cni plugin never
// saw (plain bridge conflist, pods created while the map was gone) and stale
// entries go away. The plugin and this reconciler write the same facts; the
// kernel is the one source of truth, read afresh on every run.
package endpoints

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
)

// EndpointMap is the map the reconciler keeps (datapath.EndpointMap).
type EndpointMap interface {
	Put(datapath.Endpoint) error
	DeleteIf(datapath.Endpoint) (bool, error)
	List() ([]datapath.Endpoint, error)
}

// Options configure a Reconciler.
type Options struct {
	Bridge  string // the pods' bridge, e.g. cni0
	PinRoot string // where the datapath pins its links
	Map     EndpointMap
	// Attach attaches from_pods to a pod's host-side veth (or swaps the
	// program of an existing attachment in place).
	Attach         func(dev string) error
	ResyncInterval time.Duration
	Log            *slog.Logger
}

// Reconciler is the level-triggered endpoint reconciler of one node.
type Reconciler struct {
	opts     Options
	h        *netlink.Handle
	upgraded bool // every port's program swapped for ours once
}

// New returns a reconciler working in the calling thread's network
// namespace.
func New(opts Options) (*Reconciler, error) {
	if opts.Bridge == "" || opts.Map == nil || opts.Attach == nil || opts.PinRoot == "" {
		return nil, errors.New("endpoints reconciler: bridge, pin root, map and attach are required")
	}
	if opts.ResyncInterval <= 0 {
		opts.ResyncInterval = 10 * time.Second
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	h, err := netlink.NewHandle()
	if err != nil {
		return nil, fmt.Errorf("netlink handle: %w", err)
	}
	return &Reconciler{opts: opts, h: h}, nil
}

// Close releases the netlink handle.
func (r *Reconciler) Close() { r.h.Close() }

// Result says what one Apply changed.
type Result struct {
	Entries                 int // in the map afterwards
	Added, Updated, Removed int
	Attached, Detached      int
	Errors                  []error
}

// Apply makes the map and the attachments match the kernel once.
func (r *Reconciler) Apply() Result {
	var res Result
	// The map first, the kernel second: an entry the plugin writes in
	// between has its veth already enslaved, so it is never taken for stale.
	actual, err := r.opts.Map.List()
	if err != nil {
		res.Errors = append(res.Errors, err)
		return res
	}
	v, err := kernelView(r.h, r.opts.Bridge)
	if err != nil {
		res.Errors = append(res.Errors, err)
		return res
	}
	have := make(map[netip.Addr]datapath.Endpoint, len(actual))
	for _, a := range actual {
		have[a.IP] = a
	}
	keep := map[netip.Addr]bool{}
	onPort := map[int]bool{} // ports with an endpoint: they get from_pods
	for _, d := range v.desired {
		keep[d.IP] = true
		onPort[int(d.Ifindex)] = true
		a, ok := have[d.IP]
		if ok && a.Equal(d) {
			continue
		}
		if err := r.opts.Map.Put(d); err != nil {
			res.Errors = append(res.Errors, err)
			continue
		}
		if ok {
			res.Updated++
		} else {
			res.Added++
		}
		r.opts.Log.Info("endpoint learned from the kernel", "ip", d.IP, "dev", v.ports[int(d.Ifindex)].name, "mac", d.PodMAC)
	}
	for _, a := range actual {
		if keep[a.IP] {
			continue
		}
		if _, live := v.ports[int(a.Ifindex)]; !live {
			// The listing is stale by now: a new pod may have the address.
			deleted, err := r.opts.Map.DeleteIf(a)
			if err != nil {
				res.Errors = append(res.Errors, err)
				continue
			}
			if deleted {
				res.Removed++
				r.opts.Log.Info("stale endpoint removed: its veth is gone", "ip", a.IP, "ifindex", a.Ifindex)
			}
			continue
		}
		// Written by the plugin, not (yet) visible in the neighbour table:
		// keep it, but follow a bridge whose MAC changed.
		keep[a.IP] = true
		onPort[int(a.Ifindex)] = true
		if a.GatewayMAC.String() != v.gatewayMAC.String() && len(v.gatewayMAC) == 6 {
			a.GatewayMAC = v.gatewayMAC
			if err := r.opts.Map.Put(a); err != nil {
				res.Errors = append(res.Errors, err)
				continue
			}
			res.Updated++
		}
	}
	res.Entries = len(keep)
	r.attach(v, onPort, &res)
	return res
}

// attach puts from_pods on every port with an endpoint and removes the
// attachments of veths that are gone.
func (r *Reconciler) attach(v view, onPort map[int]bool, res *Result) {
	atts, err := datapath.Attachments(r.opts.PinRoot)
	if err != nil {
		res.Errors = append(res.Errors, err)
		return
	}
	attached := map[string]bool{}
	for _, a := range atts {
		if a.Program != datapath.FromPods || a.Dev == r.opts.Bridge {
			continue
		}
		if p, ok := v.ports[a.Ifindex]; ok && p.name == a.Dev {
			attached[a.Dev] = true
			continue
		}
		if isPortName(v, a.Dev) {
			continue // defunct link of a live port: Attach below replaces it
		}
		if err := datapath.DetachPinned(r.opts.PinRoot, a.Dev, datapath.FromPods); err != nil {
			res.Errors = append(res.Errors, err)
			continue
		}
		res.Detached++
	}
	var todo []port
	for idx := range onPort {
		if p, ok := v.ports[idx]; ok && !(attached[p.name] && r.upgraded) {
			todo = append(todo, p)
		}
	}
	if len(todo) > 0 {
		// hgw-cni attaches a new pod's veth too, under this lock: without
		// it both could attach and one fail to pin its link.
		unlock, err := datapath.LockPinRoot(r.opts.PinRoot)
		if err != nil {
			res.Errors = append(res.Errors, err)
			return
		}
		for _, p := range todo {
			if err := r.opts.Attach(p.name); err != nil {
				res.Errors = append(res.Errors, fmt.Errorf("attach %s to %s: %w", datapath.FromPods, p.name, err))
				continue
			}
			if !attached[p.name] {
				res.Attached++
			}
		}
		unlock()
	}
	if len(res.Errors) == 0 {
		r.upgraded = true
	}
}

func isPortName(v view, dev string) bool {
	for _, p := range v.ports {
		if p.name == dev {
			return true
		}
	}
	return false
}
