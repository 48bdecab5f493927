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
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
	"github.com/hgw-ebpf/hgw-ebpf/internal/metrics"
	"github.com/hgw-ebpf/hgw-ebpf/internal/registry"
	"github.com/hgw-ebpf/hgw-ebpf/internal/registry/kube"
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

// Run runs the agent until ctx is cancelled: it serves metrics, connects
// to the registry, acquires the node's lease, starts the datapath and
// supervises what keeps it all current. On return the routes, maps and
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

	n := &node{cfg: cfg, log: log, ul: ul, network: netCfg.Network, network6: netCfg.IPv6Network, reg: reg, probes: nodeProbes(),
		metrics: m, ready: ready, firstApply: make(chan struct{})}
	defer n.close()
	lease, acq, err := n.acquire(ctx, netCfg)
	if err != nil {
		return stopped(ctx, err, log, "stopped while waiting for the node's lease")
	}
	if err := n.start(); err != nil {
		return err
	}
	runErr := n.supervise(ctx, lease, acq)
	if cfg.CleanupOnExit {
		return errors.Join(runErr, n.cleanup())
	}
	log.Info("agent stopped; routes, maps and programs stay in place")
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
	pause := registry.NewBackoff(time.Second, 10*time.Second)
	for {
		cli, err := registry.Dial(ctx, o)
		var unreachable *registry.UnreachableError
		if err == nil || !errors.As(err, &unreachable) {
			return cli, err
		}
		log.Warn("waiting for etcd", "err", err, "retry_in", pause.Delay())
		if !pause.Sleep(ctx) {
			return nil, fmt.Errorf("waiting for etcd: %w", ctx.Err())
		}
	}
}
