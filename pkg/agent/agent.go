// Package agent is `hgw-ebpf run`: it takes this node's subnet lease as
// flanneld does (in etcd, or from its Kubernetes Node with
// --kube-subnet-mgr), writes the subnet file for the CNI plugins, and
// keeps the kernel routes and the BPF routes map equal to the leases of the
// other nodes, with the fast-path programs attached.
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
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/hgw-ebpf/hgw-ebpf/pkg/datapath"
	"github.com/hgw-ebpf/hgw-ebpf/pkg/metrics"
	"github.com/hgw-ebpf/hgw-ebpf/pkg/registry"
	"github.com/hgw-ebpf/hgw-ebpf/pkg/registry/kube"
	"github.com/hgw-ebpf/hgw-ebpf/pkg/subnetfile"
)

// Datapath modes of the agent.
const (
	DatapathEBPF   = "ebpf"   // kernel routes + fast-path programs
	DatapathRoutes = "routes" // kernel routes only: plain flannel host-gw
)

// Config is the agent's configuration, one field per `run` flag.
type Config struct {
	Etcd   registry.ClientOptions
	Prefix string
	// Kube, when set, takes the leases from Kubernetes Nodes
	// (--kube-subnet-mgr) instead of etcd.
	Kube     *kube.Options
	Iface    string     // "" = the default route's device
	PublicIP netip.Addr // zero = the device's first IPv4
	// PublicIPv6 is the next hop of this node's IPv6 subnet on a
	// dual-stack network; zero = the device's best global IPv6 (see
	// resolveUnderlay6). Ignored, as by flanneld, without IPv6.
	PublicIPv6     netip.Addr
	SubnetFile     string
	LeaseTTL       time.Duration
	Bridge         string
	Datapath       string // DatapathEBPF or DatapathRoutes
	AttachMode     datapath.Mode
	ResyncInterval time.Duration
	PinRoot        string
	CleanupOnExit  bool   // remove routes, programs, pins and the lease on exit
	MetricsAddr    string // "" disables /metrics, /healthz, /readyz
	// UnsafeIgnoreConntrack forwards flows conntrack tracks on the fast
	// path too: only for clusters without kube-proxy or other NAT.
	UnsafeIgnoreConntrack bool
	// IPMasq installs flanneld's masquerade rules (--ip-masq) and says so
	// in the subnet file.
	IPMasq bool
	// AllowPolicyBypass keeps the fast path on while a NetworkPolicy
	// engine is present, whose rules redirected packets then skip.
	AllowPolicyBypass bool
	// PlainRoutes installs plain gateway routes, not routes through
	// nexthop objects (--plain-routes).
	PlainRoutes bool
}

func (c Config) validate() error {
	switch c.Datapath {
	case DatapathEBPF, DatapathRoutes:
	default:
		return fmt.Errorf("--datapath %q: want %s or %s", c.Datapath, DatapathEBPF, DatapathRoutes)
	}
	if _, err := datapath.ParseMode(string(c.AttachMode)); err != nil {
		return fmt.Errorf("--attach-mode: %w", err)
	}
	if c.ResyncInterval <= 0 {
		return fmt.Errorf("--resync-interval %s must be positive", c.ResyncInterval)
	}
	if c.LeaseTTL < 10*time.Second {
		return fmt.Errorf("--subnet-lease-ttl %s is too short (minimum 10s)", c.LeaseTTL)
	}
	if c.SubnetFile == "" || c.Bridge == "" {
		return errors.New("--subnet-file and --bridge must not be empty")
	}
	if c.Kube == nil && c.Prefix == "" {
		return errors.New("--etcd-prefix must not be empty")
	}
	return nil
}

// Run runs the agent until ctx is cancelled. On return the routes, maps and
// programs stay in place (traffic keeps flowing across a restart) unless
// CleanupOnExit is set.
func Run(ctx context.Context, cfg Config, log *slog.Logger) error {
	if err := cfg.validate(); err != nil {
		return err
	}
	ul, err := resolveUnderlay(cfg.Iface, cfg.PublicIP)
	if err != nil {
		return err
	}
	log.Info("underlay", "dev", ul.link.Attrs().Name, "public_ip", ul.publicIP, "on_link", ul.prefixes)

	// Metrics and probes are served from the start: a probe of an agent
	// still waiting for etcd gets the reason, not a refused connection.
	m := metrics.New(nil)
	ready := metrics.NewReadiness(readinessConditions(cfg)...)
	stopServing, err := serveMetrics(ctx, cfg.MetricsAddr, m, ready, log)
	if err != nil {
		return err
	}
	defer stopServing()

	reg, netCfg, closeReg, err := openRegistry(ctx, cfg, log)
	if err != nil {
		return stopped(ctx, err, log, "stopped while waiting for etcd")
	}
	defer closeReg()
	ul6, err := resolveDualStack(netCfg, ul, cfg.PublicIPv6, log)
	if err != nil {
		return err
	}
	acq := acquireOptions(cfg, ul.publicIP, ul6.publicIP, log)
	lease, err := reg.Acquire(ctx, acq)
	if err != nil {
		return stopped(ctx, fmt.Errorf("acquire subnet lease: %w", err), log, "stopped while waiting for the node's lease")
	}
	log.Info("subnet lease acquired", "subnet", lease.Subnet, "ipv6_subnet", lease.IPv6Subnet, "key", lease.Key,
		"public_ip", lease.PublicIP, "expires", expiry(lease))
	ready.Set(leaseCondition(cfg), true)

	n := &node{cfg: cfg, log: log, ul: ul, ul6: ul6, network: netCfg.Network, network6: netCfg.IPv6Network, reg: reg, probes: nodeProbes(),
		metrics: m, ready: ready, firstApply: make(chan struct{})}
	n.setOwn(lease)
	n.setLeaseExpiry(lease)
	defer n.close()
	if err := n.start(); err != nil {
		return err
	}

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
		return reg.Watch(ctx, n.onChange, registry.WatchHooks{Event: n.metrics.WatchEvents.Inc, Relist: relist})
	})
	goRun("lease keepalive", func(ctx context.Context) error {
		return reg.KeepAlive(ctx, lease, acq, n.onLeaseChange)
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
	runErr := <-errc

	if cfg.CleanupOnExit {
		runErr = errors.Join(runErr, n.cleanup())
	} else {
		log.Info("agent stopped; routes, maps and programs stay in place")
	}
	return runErr
}

// serveMetrics serves /metrics, /healthz and /readyz on addr ("" = off)
// until the returned stop is called.
func serveMetrics(ctx context.Context, addr string, m *metrics.Metrics, ready *metrics.Readiness, log *slog.Logger) (stop func(), err error) {
	if addr == "" {
		return func() {}, nil
	}
	ln, err := metrics.Listen(addr)
	if err != nil {
		return nil, err
	}
	srvCtx, stopSrv := context.WithCancel(ctx)
	served := make(chan struct{})
	go func() {
		defer close(served)
		if err := metrics.Serve(srvCtx, ln, m, ready, log); err != nil {
			log.Error("metrics server stopped", "err", err)
		}
	}()
	return func() { stopSrv(); <-served }, nil
}

// openRegistry connects to where the leases are, etcd (waiting for it
// while no endpoint answers, as flanneld does) or, with Config.Kube, the
// Kubernetes API, and reads the network config. close releases the
// connection.
func openRegistry(ctx context.Context, cfg Config, log *slog.Logger) (registry.Manager, registry.Config, func(), error) {
	var reg registry.Manager
	var close func()
	if cfg.Kube != nil {
		m, err := kube.New(ctx, *cfg.Kube, log)
		if err != nil {
			return nil, registry.Config{}, nil, err
		}
		log.Info("Kubernetes subnet manager", "node", m.NodeName(), "net_config", cfg.Kube.NetConfPath)
		reg, close = m, m.Close
	} else {
		cli, err := dialEtcd(ctx, cfg.Etcd, log)
		if err != nil {
			return nil, registry.Config{}, nil, err
		}
		reg, close = registry.New(cli, cfg.Prefix, log), func() { cli.Close() }
	}
	netCfg, err := reg.Config(ctx)
	if err != nil {
		close()
		return nil, registry.Config{}, nil, err
	}
	if netCfg.BackendType != "" && netCfg.BackendType != "host-gw" {
		log.Warn("network config names another backend; hgw-ebpf always forwards host-gw style",
			"backend", netCfg.BackendType)
	}
	return reg, netCfg, close, nil
}

// stopped is err, unless ctx ended meanwhile (SIGTERM while waiting for
// the registry): that is no failure.
func stopped(ctx context.Context, err error, log *slog.Logger, what string) error {
	if ctx.Err() != nil {
		log.Info(what)
		return nil
	}
	return err
}

// expiry says when a lease expires, for logs.
func expiry(l registry.Lease) string {
	if l.Expiration.IsZero() {
		return "never (no TTL)"
	}
	return l.Expiration.Format(time.RFC3339)
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

// What /readyz waits for, in the order an agent gets there.
const (
	condLease     = "etcd lease acquired"
	condKubeLease = "node subnet acquired" // the Node's podCIDR, annotated
	condAttached  = "programs attached"
	condSynced    = "registry synced"
	condApplied   = "routes applied"
)

func readinessConditions(cfg Config) []string {
	if cfg.Datapath == DatapathEBPF {
		return []string{leaseCondition(cfg), condAttached, condSynced, condApplied}
	}
	return []string{leaseCondition(cfg), condSynced, condApplied}
}

func leaseCondition(cfg Config) string {
	if cfg.Kube != nil {
		return condKubeLease
	}
	return condLease
}

// dialEtcd connects to etcd and, while no endpoint answers (a node that
// boots before etcd is up, an outage), waits for it as flanneld does,
// trying again with a growing pause. Wrong credentials and other errors
// that a retry cannot fix end the agent at once.
func dialEtcd(ctx context.Context, o registry.ClientOptions, log *slog.Logger) (*clientv3.Client, error) {
	const maxPause = 10 * time.Second
	pause := time.Second
	for {
		cli, err := registry.Dial(ctx, o)
		var unreachable *registry.UnreachableError
		if err == nil || !errors.As(err, &unreachable) {
			return cli, err
		}
		log.Warn("waiting for etcd", "err", err, "retry_in", pause)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for etcd: %w", ctx.Err())
		case <-time.After(pause):
		}
		pause = min(2*pause, maxPause)
	}
}

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
	own     netip.Prefix
	ownIP   netip.Addr   // the public IP our lease names (--public-ip, or a public-ip-overwrite)
	own6    netip.Prefix // our IPv6 subnet, zero without IPv6
	ownIP6  netip.Addr   // the public IPv6 our lease names
}

func (n *node) ownSubnet() netip.Prefix {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.own
}

func (n *node) writeSubnetFile() error {
	env := subnetfile.Env{Network: n.network, Subnet: n.ownSubnet(), MTU: n.ul.link.Attrs().MTU, IPMasq: n.cfg.IPMasq}
	if own6 := n.ownSubnet6(); own6.IsValid() {
		env.IPv6Network, env.IPv6Subnet = n.network6, own6
	}
	return subnetfile.Write(n.cfg.SubnetFile, env)
}

// nodeReady tells the CNI plugins (the subnet file) and the lease's
// source that the node routes its peers.
func (n *node) nodeReady(ctx context.Context) error {
	if err := n.writeSubnetFile(); err != nil {
		return err
	}
	n.log.Info("node ready", "datapath", n.cfg.Datapath, "subnet", n.ownSubnet(), "ipv6_subnet", n.ownSubnet6(), "subnet_file", n.cfg.SubnetFile)
	if r, ok := n.reg.(registry.ReadyReporter); ok {
		if err := r.ReportReady(ctx); err != nil {
			n.log.Warn("report the node's network ready", "err", err)
		}
	}
	return nil
}

func (n *node) setLeaseExpiry(l registry.Lease) {
	if n.metrics != nil {
		n.metrics.SetLeaseExpiry(l.Expiration)
	}
}

// setOwn records our lease: its subnets and the public IPs it names
// (a Kubernetes Node's may be an operator's overwrite of ours).
func (n *node) setOwn(l registry.Lease) {
	n.mu.Lock()
	n.own, n.ownIP, n.own6, n.ownIP6 = l.Subnet, l.PublicIP, l.IPv6Subnet, l.PublicIPv6
	n.mu.Unlock()
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
	for _, s := range []struct{ was, now netip.Prefix }{{n.ownSubnet(), l.Subnet}, {n.ownSubnet6(), l.IPv6Subnet}} {
		if s.now != s.was {
			n.fatal(fmt.Errorf("this node's subnet changed from %s to %s when its lease was re-acquired (another node holds %s now): "+
				"exiting as flanneld does; pods with addresses in %s must be recreated", s.was, s.now, s.was, s.was))
			return
		}
	}
	n.log.Warn("own lease re-acquired", "subnet", l.Subnet, "ipv6_subnet", l.IPv6Subnet, "key", l.Key, "public_ip", l.PublicIP)
	n.setOwn(l)
	n.setLeaseExpiry(l)
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
	n.mu.Lock()
	own, ownIP := n.own, n.ownIP
	n.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := n.reg.Release(ctx, own, ownIP); err != nil {
		errs = append(errs, fmt.Errorf("release lease %s: %w", own, err))
	}
	if len(errs) == 0 {
		n.log.Info("cleaned up: routes, programs, pins, iptables rules and lease removed", "subnet", own)
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
