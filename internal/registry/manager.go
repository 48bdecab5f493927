package registry

import (
	"context"
	"net/netip"
)

// Manager is a subnet manager, as flanneld calls it: where this node's
// lease is taken and kept, and where every node's lease is read. *Registry
// keeps leases in etcd under flannel's schema (flanneld's default);
// package kube keeps them in Kubernetes Node objects, as flanneld
// --kube-subnet-mgr does. Both hand the agent the same Change, so
// everything after them is the same.
type Manager interface {
	// Config reads and checks the network config; every later call
	// parses leases against it.
	Config(ctx context.Context) (Config, error)
	// Acquire takes this node's lease, waiting while the source is
	// unreachable or not ready to give one.
	Acquire(ctx context.Context, opts AcquireOptions) (Lease, error)
	// Watch calls fn once every lease is read (a Full change), and again
	// after every change with the keys that changed, until ctx is done
	// (then it returns nil). While the source is unreachable fn is not
	// called, so the consumer keeps the last good state.
	Watch(ctx context.Context, fn func(Change), hooks WatchHooks) error
	// KeepAlive keeps lease this node's until ctx is done; if it is lost
	// it acquires again and reports the new lease to onChange.
	KeepAlive(ctx context.Context, lease Lease, opts AcquireOptions, onChange func(Lease)) error
	// Release gives up this node's lease of subnet, if it still names
	// publicIP, so that the other nodes drop their routes to it at once.
	Release(ctx context.Context, subnet netip.Prefix, publicIP netip.Addr) error
}

var _ Manager = (*Registry)(nil)

// Change is what Watch hands its consumer: which leases changed, and the
// table of every lease, read in place. A consumer that wants the complete
// set reads Leases (in key order); one that follows changes reads the
// leases of Keys alone: a new lease among tens of thousands costs a
// lookup, not a copy of every lease.
type Change struct {
	// Full: every lease was read anew (the first call, and after a watch
	// broke beyond resuming): any key may have changed, Keys is empty.
	Full bool
	// Keys are the keys whose lease or skipped entry was added, changed
	// or removed since the previous call, each once, in no order.
	Keys []string
	// Leases is every lease and skipped entry after the change. The
	// manager changes it between calls: read it in fn only, never keep
	// it.
	Leases *Table
}

// ReadyReporter is a Manager that tells its source when this node routes
// its peers. The Kubernetes one clears the Node's NetworkUnavailable
// condition, as flanneld does.
type ReadyReporter interface {
	ReportReady(ctx context.Context) error
}
