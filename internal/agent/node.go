package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
	"github.com/hgw-ebpf/hgw-ebpf/internal/metrics"
	"github.com/hgw-ebpf/hgw-ebpf/internal/registry"
	"github.com/hgw-ebpf/hgw-ebpf/internal/subnetfile"
)

// node is the running agent's state that the event handlers share.
type node struct {
	cfg     Config
	log     *slog.Logger
	ul      underlay
	ul6     underlay6 // zero without IPv6 in the network
	network netip.Prefix
	// network6 is the cluster's IPv6 network, zero unless it is
	// dual-stack.
	network6 netip.Prefix
	reg      registry.Manager
	dp       *datapath.Datapath // the pinned maps (and the first programs)
	families []*familyRoutes    // IPv4's first
	fws      []*iptablesDuties  // IPv4's, IPv6's on a dual-stack node; none without iptables
	probes   probes
	without  datapath.Features // kernel features to load the programs without (tests)
	// fatal ends Run with err: for what the agent must not carry on
	// after (flanneld exits there too).
	fatal func(err error)

	metrics    *metrics.Metrics
	ready      *metrics.Readiness
	firstApply chan struct{} // closed after the first reconcile
	applyOnce  sync.Once

	mu      sync.Mutex
	fast    FastPath           // what the programs may do now
	progs   *datapath.Datapath // the programs to attach (reloaded once conntrack can be asked)
	progsCT bool               // progs were loaded with the conntrack lookup usable
	// lease is ours: its subnets (IPv6's zero without IPv6) and the public
	// IPs it names (--public-ip, or a public-ip-overwrite).
	lease registry.Lease
}

// acquire takes this node's lease (IPv6 too on a dual-stack network) and
// records it.
func (n *node) acquire(ctx context.Context, netCfg registry.Config) (registry.Lease, registry.AcquireOptions, error) {
	var err error
	if n.ul6, err = resolveDualStack(netCfg, n.ul, n.cfg.PublicIPv6, n.log); err != nil {
		return registry.Lease{}, registry.AcquireOptions{}, err
	}
	acq := acquireOptions(n.cfg, n.ul.publicIP, n.ul6.publicIP, n.log)
	lease, err := n.reg.Acquire(ctx, acq)
	if err != nil {
		return registry.Lease{}, acq, fmt.Errorf("acquire subnet lease: %w", err)
	}
	n.log.Info("subnet lease acquired", "subnet", lease.Subnet, "ipv6_subnet", lease.IPv6Subnet, "key", lease.Key,
		"public_ip", lease.PublicIP, "expires", expiry(lease))
	n.ready.Set(leaseCondition(n.cfg), true)
	n.setOwn(lease)
	return lease, acq, nil
}

// start puts in place what the node needs before it takes part: flanneld's
// iptables rules, the programs (with --datapath routes: none, also none
// that an earlier run left), and the route reconcilers.
func (n *node) start() error {
	if err := n.startIPTables(); err != nil {
		return err
	}
	if n.cfg.Datapath == DatapathEBPF {
		if err := n.startDatapath(); err != nil {
			return err
		}
		if err := n.metrics.AddFastPath(n.dp); err != nil {
			return err
		}
		n.ready.Set(condAttached, true)
	} else {
		n.removeDatapath()
		n.ready.SetNote(noteFastPath, "fast path: off (--datapath routes)")
	}
	return n.startReconcilers()
}

// close releases this process's handles (once); what is pinned stays.
func (n *node) close() {
	for _, f := range n.families {
		f.rec.Close()
	}
	n.mu.Lock()
	progs := n.progs
	n.progs = nil
	n.mu.Unlock()
	if progs != nil && progs != n.dp {
		progs.Close()
	}
	if n.dp != nil {
		n.dp.Close()
		n.dp = nil
	}
}

// supervise runs what keeps the node current until ctx ends or one of
// them fails for good: the route reconcilers, the registry watch, the
// lease's keepalive, the node checks and the endpoint reconciler. It
// writes the subnet file once the peers' routes are in place.
func (n *node) supervise(ctx context.Context, lease registry.Lease, acq registry.AcquireOptions) error {
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	var wg sync.WaitGroup
	errc := make(chan error, 8) // room for every goroutine below: a late error never blocks wg.Wait
	n.fatal = func(err error) {
		select {
		case errc <- err:
		default:
		}
		stop()
	}
	goRun := func(name string, fn func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(runCtx); err != nil && runCtx.Err() == nil {
				n.fatal(fmt.Errorf("%s: %w", name, err))
			}
		}()
	}
	for _, f := range n.families {
		goRun(f.fam.Name()+" reconciler", f.rec.Run)
	}
	goRun("registry watch", func(ctx context.Context) error {
		// After a re-read of every lease the reconcilers compare in full.
		relist := func() { n.metrics.EtcdReconnects.Inc(); n.resyncRoutes() }
		return n.reg.Watch(ctx, n.onChange, registry.WatchHooks{Event: n.metrics.WatchEvents.Inc, Relist: relist})
	})
	goRun("lease keepalive", func(ctx context.Context) error {
		return n.reg.KeepAlive(ctx, lease, acq, n.onLeaseChange)
	})
	goRun("node checks", n.runChecks)
	if n.dp != nil {
		goRun("endpoints", n.runEndpoints)
	}
	// The subnet file tells the CNI plugins the node is ready for pods:
	// write it once routes to the peers are in place, not before.
	select {
	case <-runCtx.Done():
	case <-n.firstApply:
		if err := n.nodeReady(runCtx); err != nil {
			n.fatal(err)
		}
	}
	<-runCtx.Done()
	wg.Wait()
	close(errc)
	return <-errc
}

// ownLease is our lease as last acquired.
func (n *node) ownLease() registry.Lease {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.lease
}

func (n *node) writeSubnetFile() error {
	own := n.ownLease()
	env := subnetfile.Env{Network: n.network, Subnet: own.Subnet, MTU: n.ul.link.Attrs().MTU, IPMasq: n.cfg.IPMasq}
	if own.IPv6Subnet.IsValid() {
		env.IPv6Network, env.IPv6Subnet = n.network6, own.IPv6Subnet
	}
	return subnetfile.Write(n.cfg.SubnetFile, env)
}

// nodeReady tells the CNI plugins (the subnet file) and the lease's
// source that the node routes its peers.
func (n *node) nodeReady(ctx context.Context) error {
	if err := n.writeSubnetFile(); err != nil {
		return err
	}
	own := n.ownLease()
	n.log.Info("node ready", "datapath", n.cfg.Datapath, "subnet", own.Subnet, "ipv6_subnet", own.IPv6Subnet, "subnet_file", n.cfg.SubnetFile)
	if r, ok := n.reg.(registry.ReadyReporter); ok {
		if err := r.ReportReady(ctx); err != nil {
			n.log.Warn("report the node's network ready", "err", err)
		}
	}
	return nil
}

// setOwn records our lease: its subnets and the public IPs it names
// (a Kubernetes Node's may be an operator's overwrite of ours), and its
// expiry for the lease metric.
func (n *node) setOwn(l registry.Lease) {
	n.mu.Lock()
	n.lease = l
	n.mu.Unlock()
	if n.metrics != nil {
		n.metrics.SetLeaseExpiry(l.Expiration)
	}
}

// onChange follows the registry's leases into each family's desired
// peers: the leases that changed, in the common case.
func (n *node) onChange(c registry.Change) {
	n.ready.Set(condSynced, true)
	for _, f := range n.families {
		for _, sk := range n.follow(f, c) {
			n.log.Warn("lease not routed", "family", f.fam, "key", sk.Key, "reason", sk.Reason, "err", sk.Err)
		}
		n.countSkips(f)
	}
}

// onLeaseChange follows a re-acquired lease (ours vanished from etcd).
// The same subnet again changes nothing. Another subnet means another node
// took ours: routing it away would cut our pods off, and they cannot move
// to the new subnet while they run, so the agent exits as flanneld does
// (pods must be recreated; the next start keeps the new lease).
func (n *node) onLeaseChange(l registry.Lease) {
	own := n.ownLease()
	for _, s := range []struct{ was, now netip.Prefix }{{own.Subnet, l.Subnet}, {own.IPv6Subnet, l.IPv6Subnet}} {
		if s.now != s.was {
			n.fatal(fmt.Errorf("this node's subnet changed from %s to %s when its lease was re-acquired (another node holds %s now): "+
				"exiting as flanneld does; pods with addresses in %s must be recreated", s.was, s.now, s.was, s.was))
			return
		}
	}
	n.log.Warn("own lease re-acquired", "subnet", l.Subnet, "ipv6_subnet", l.IPv6Subnet, "key", l.Key, "public_ip", l.PublicIP)
	n.setOwn(l)
}

func (n *node) cleanup() error {
	var errs []error
	for _, f := range n.families {
		if err := f.rec.RemoveAll(); err != nil {
			errs = append(errs, fmt.Errorf("remove %s routes: %w", f.fam.Name(), err))
		}
	}
	if n.dp != nil {
		if err := datapath.Cleanup(n.cfg.PinRoot); err != nil {
			errs = append(errs, err)
		}
	}
	if err := n.removeIPTables(); err != nil {
		errs = append(errs, fmt.Errorf("remove iptables rules: %w", err))
	}
	own := n.ownLease()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := n.reg.Release(ctx, own.Subnet, own.PublicIP); err != nil {
		errs = append(errs, fmt.Errorf("release lease %s: %w", own.Subnet, err))
	}
	if len(errs) == 0 {
		n.log.Info("cleaned up: routes, programs, pins, iptables rules and lease removed", "subnet", own.Subnet)
	}
	return errors.Join(errs...)
}

// linkIndex re-reads a device's ifindex: the bridge may be re-created.
func linkIndex(name string) (uint32, error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return 0, fmt.Errorf("look up %s: %w", name, err)
	}
	return uint32(l.Attrs().Index), nil
}
