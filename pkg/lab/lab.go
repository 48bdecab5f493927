// Package lab builds flannel host-gw clusters out of network namespaces on
// one machine: an underlay bridge, nodes running `hgw-ebpf run`, pods
// attached by the real CNI plugins, and an embedded etcd. Nothing it does
// touches the root network namespace (DESIGN.md, "Lab").
package lab

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"

	"github.com/hgw-ebpf/hgw-ebpf/pkg/kubeapi"
	"github.com/hgw-ebpf/hgw-ebpf/pkg/registry"
)

// Config describes a lab to bring up.
type Config struct {
	Prefix      string // names every namespace, pin directory and state directory; DefaultPrefix if empty
	StateRoot   string // DefaultStateRoot if empty
	Nodes       int
	PodsPerNode int
	Datapath    string // DatapathEBPF (default), DatapathRoutes or DatapathStatic
	BinDir      string // holds hgw-ebpf (and cni/ unless CNIPath is set)
	CNIPath     string // holds the bridge and host-local plugins; BinDir/cni if empty
	// PlainBridgeCNI attaches pods through bridge + host-local alone. By
	// default ebpf nodes chain hgw-cni after bridge (found in CNIPath or
	// BinDir), which puts every pod on the endpoint fast path at once.
	PlainBridgeCNI bool
	// Bandwidth chains the CNI bandwidth plugin (from CNIPath) after
	// bridge, so that AddPodWithLimits can shape a pod's traffic.
	Bandwidth bool
	// AttachMode is the agents' and hgw-cni's attach mode (auto, tcx or
	// tc); their default (auto) if empty.
	AttachMode string
	EtcdPrefix string // registry.DefaultPrefix if empty
	// Registry is where the agents keep their leases: RegistryEtcd
	// (default) or RegistryKube, Nodes of a real kube-apiserver that the
	// lab runs on the underlay (kube-apiserver and kubectl from
	// <BinDir>/kube), with a Node per lab node carrying its podCIDR.
	Registry string
	// ResyncInterval is the agents' --resync-interval (default 2s: a lab
	// should show repairs quickly).
	ResyncInterval time.Duration
	AgentArgs      []string      // extra flags for every `hgw-ebpf run`
	ReadyTimeout   time.Duration // for agents' subnet files and routes (default 30s)
	// What a real node carries besides the agent (DESIGN.md "Lab"), all
	// inside the node namespaces. KubeProxy loads kube-proxy's iptables
	// rules into every node once the pods are up: the lab's services (see
	// ServiceIP) and KubeServices synthetic ones.
	KubeProxy    bool
	KubeServices int
	// FromFlanneld starts every node as flanneld leaves one that moves to
	// another agent: node k's subnet file for 10.244.k.0/24 and flanneld's
	// iptables rules for it (see FlannelRules) are in place before its
	// agent starts.
	FromFlanneld bool
	// IPMasq runs every agent with --ip-masq, as the standard kube-flannel
	// manifest runs flanneld; with FromFlanneld, flanneld's masquerade chain
	// is among its leftovers.
	IPMasq bool
	// ForwardDrop sets every node's FORWARD policy to DROP before its agent
	// starts, as Docker does.
	ForwardDrop bool
	// Internet adds a namespace on the underlay (InternetIP) that stands for
	// the world outside the cluster: it routes no pod subnet, so only
	// masqueraded pod traffic can get an answer from it.
	Internet bool
	// Flanneld is the real flanneld binary; the nodes numbered in
	// FlanneldNodes (1-based) run it (etcd mode, host-gw backend) instead
	// of hgw-ebpf. MoveAgent switches a node between the two.
	Flanneld      string
	FlanneldNodes []int
	// FlannelCNI is the directory holding the flannel CNI plugin: pods are
	// attached through it, as kube-flannel does (it delegates to bridge and
	// host-local, reading the node's subnet file), with hgw-cni chained
	// after it on hgw-ebpf nodes unless PlainBridgeCNI.
	FlannelCNI string
	// DualStack gives the lab IPv6 besides IPv4 (see underlayNet6): the
	// underlay, a network config enabling IPv6 as flannel's does, every
	// node's lease, subnet file and routes, and pods with both families
	// from the CNI plugins.
	DualStack bool
	// LeftoversRemoved skips the initial Down: the caller (a detaching
	// parent that already opened the log in the state dir) has run it.
	LeftoversRemoved bool
	Log              *slog.Logger
}

func (c *Config) setDefaults() error {
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	if err := ValidatePrefix(c.Prefix); err != nil {
		return err
	}
	if c.Datapath == "" {
		c.Datapath = DatapathEBPF
	}
	switch c.Datapath {
	case DatapathEBPF, DatapathRoutes, DatapathStatic:
	default:
		return fmt.Errorf("datapath %q: want %s, %s or %s", c.Datapath, DatapathEBPF, DatapathRoutes, DatapathStatic)
	}
	if c.Nodes < 1 || c.Nodes > MaxNodes {
		return fmt.Errorf("nodes %d: want 1..%d", c.Nodes, MaxNodes)
	}
	if c.PodsPerNode < 0 || c.PodsPerNode > MaxPodsPerNode {
		return fmt.Errorf("pods per node %d: want 0..%d", c.PodsPerNode, MaxPodsPerNode)
	}
	if c.EtcdPrefix == "" {
		c.EtcdPrefix = registry.DefaultPrefix
	}
	if c.Registry == "" {
		c.Registry = RegistryEtcd
	}
	if c.ResyncInterval == 0 {
		c.ResyncInterval = 2 * time.Second
	}
	if c.ReadyTimeout == 0 {
		c.ReadyTimeout = 30 * time.Second
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	var err error
	if c.BinDir, err = filepath.Abs(c.BinDir); err != nil {
		return fmt.Errorf("bin dir: %w", err)
	}
	if c.CNIPath == "" {
		c.CNIPath = filepath.Join(c.BinDir, "cni")
	}
	if c.CNIPath, err = filepath.Abs(c.CNIPath); err != nil {
		return fmt.Errorf("CNI path: %w", err)
	}
	plugins := []string{"bridge", "host-local"}
	if c.Bandwidth {
		plugins = append(plugins, bandwidthPlugin)
	}
	for _, p := range plugins {
		if err := checkExecutable(filepath.Join(c.CNIPath, p)); err != nil {
			return fmt.Errorf("CNI plugin %s (run `make deps`): %w", p, err)
		}
	}
	return errors.Join(c.checkFlannel(), c.checkKube())
}

// checkFlannel validates the options that run the real flannel binaries.
func (c *Config) checkFlannel() error {
	if len(c.FlanneldNodes) > 0 && c.Flanneld == "" {
		return fmt.Errorf("flanneld nodes %v: no flanneld binary given", c.FlanneldNodes)
	}
	if c.Flanneld != "" {
		if c.Datapath == DatapathStatic {
			return fmt.Errorf("flanneld: a %s lab runs no agents", DatapathStatic)
		}
		var err error
		if c.Flanneld, err = filepath.Abs(c.Flanneld); err != nil {
			return fmt.Errorf("flanneld binary: %w", err)
		}
		if err := checkExecutable(c.Flanneld); err != nil {
			return fmt.Errorf("flanneld binary: %w", err)
		}
	}
	for _, k := range c.FlanneldNodes {
		if k < 1 || k > c.Nodes {
			return fmt.Errorf("flanneld node %d: want 1..%d", k, c.Nodes)
		}
	}
	if c.FlannelCNI != "" {
		var err error
		if c.FlannelCNI, err = filepath.Abs(c.FlannelCNI); err != nil {
			return fmt.Errorf("flannel CNI dir: %w", err)
		}
		if err := checkExecutable(filepath.Join(c.FlannelCNI, flannelCNIPlugin)); err != nil {
			return fmt.Errorf("flannel CNI plugin: %w", err)
		}
	}
	return nil
}

// agentOf is the agent node k starts with.
func (c *Config) agentOf(k int) string {
	if c.Datapath == DatapathStatic {
		return ""
	}
	if slices.Contains(c.FlanneldNodes, k) {
		return AgentFlanneld
	}
	return AgentHgw
}

func checkExecutable(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if fi.IsDir() || fi.Mode()&0o111 == 0 {
		return fmt.Errorf("%s is not executable", path)
	}
	return nil
}

// Lab is a running lab owned by this process: it serves etcd and
// supervises the agents until Close.
type Lab struct {
	cfg      Config
	log      *slog.Logger
	agentBin string
	ctx      context.Context // ends at Close: stops supervisors
	cancel   context.CancelFunc

	mu        sync.Mutex // guards state, agents, etcd, cni
	state     State
	agents    map[string]*agentProc
	etcd      *embed.Etcd
	cni       map[string]*cniNetwork // by node
	hgwCNIDir string                 // holds hgw-cni when the conflist chains it
	client    *clientv3.Client
	kube      *kubeapi.Server            // RegistryKube's API server
	nodes     corev1client.NodeInterface // its Nodes, as its admin
	closed    bool
}

// Up removes what an earlier lab with the same prefix left behind, then
// builds the cluster and returns once every pod has its address and every
// node routes to every other node's subnet. On error everything created so
// far is removed.
func Up(ctx context.Context, cfg Config) (*Lab, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	l := &Lab{cfg: cfg, log: cfg.Log, agents: map[string]*agentProc{}, cni: map[string]*cniNetwork{}}
	l.agentBin = filepath.Join(cfg.BinDir, "hgw-ebpf")
	if cfg.chainsHgwCNI() {
		dir, err := cfg.hgwCNIDir()
		if err != nil {
			return nil, err
		}
		l.hgwCNIDir = dir
	}
	if err := checkExecutable(l.agentBin); err != nil && cfg.Datapath != DatapathStatic {
		return nil, fmt.Errorf("agent binary (run `make build`): %w", err)
	}
	if !cfg.LeftoversRemoved {
		if err := Down(ctx, DownOptions{Prefix: cfg.Prefix, StateRoot: cfg.StateRoot, BinDir: cfg.BinDir, Log: cfg.Log}); err != nil {
			return nil, fmt.Errorf("remove leftovers of an earlier lab: %w", err)
		}
	}
	l.ctx, l.cancel = context.WithCancel(context.Background())
	if err := l.build(ctx); err != nil {
		return nil, errors.Join(err, l.Close())
	}
	return l, nil
}

func (l *Lab) build(ctx context.Context) error {
	dir := StateDir(l.cfg.StateRoot, l.cfg.Prefix)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create state dir: %w", err)
	}
	start, err := procStart(os.Getpid())
	if err != nil {
		return fmt.Errorf("own start time: %w", err)
	}
	l.state = State{
		Prefix: l.cfg.Prefix, Dir: dir, PID: os.Getpid(), PIDStart: start, Started: time.Now(),
		Datapath: l.cfg.Datapath, BinDir: l.cfg.BinDir, PinRoot: pinRoot(l.cfg.Prefix),
		Underlay: underlayNS(l.cfg.Prefix), Etcd: EtcdEndpoint(), EtcdKeys: l.cfg.EtcdPrefix, NextIndex: 1,
		DualStack: l.cfg.DualStack, Registry: l.cfg.Registry,
	}
	if err := l.saveState(); err != nil {
		return err
	}

	l.log.Info("creating underlay", "netns", l.state.Underlay, "bridge", underlayBridge, "addr", underlayGateway)
	if err := createUnderlay(l.state.Underlay, l.cfg.DualStack); err != nil {
		return err
	}
	if l.cfg.Internet {
		name := internetNS(l.cfg.Prefix)
		l.log.Info("creating internet", "netns", name, "addr", InternetIP)
		if err := createInternet(l.state.Underlay, name); err != nil {
			return err
		}
		l.mu.Lock()
		l.state.Internet = name
		l.mu.Unlock()
	}
	if err := l.StartEtcd(ctx); err != nil {
		return err
	}
	cli, err := newEtcdClient(l.state.Underlay)
	if err != nil {
		return err
	}
	l.client = cli
	if l.cfg.Registry == RegistryKube {
		if err := l.startKube(ctx); err != nil {
			return err
		}
	} else if err := seedNetworkConfig(ctx, cli, l.cfg.EtcdPrefix, l.cfg.DualStack); err != nil {
		return err
	}
	nodes := make([]Node, 0, l.cfg.Nodes)
	for range l.cfg.Nodes {
		n, err := l.addNode(ctx, netip.Prefix{}, false)
		if err != nil {
			return err
		}
		nodes = append(nodes, n)
	}
	for _, n := range nodes {
		for range l.cfg.PodsPerNode {
			if _, err := l.AddPod(ctx, n.Name); err != nil {
				return err
			}
		}
	}
	if err := l.WaitRoutes(ctx, l.cfg.ReadyTimeout); err != nil {
		return err
	}
	if l.cfg.KubeProxy {
		if err := l.loadKubeProxy(); err != nil {
			return err
		}
	}
	l.mu.Lock()
	l.state.Ready = true
	l.mu.Unlock()
	return l.saveState()
}

// pinRoot is the bpffs directory holding every node's pin directory.
func pinRoot(prefix string) string { return filepath.Join("/sys/fs/bpf", prefix) }

// State is a copy of the lab's current state.
func (l *Lab) State() State {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.state.clone()
}

// Etcd is a client of the lab's etcd (usable from any goroutine).
func (l *Lab) Etcd() *clientv3.Client { return l.client }

// AgentBin is the hgw-ebpf binary the lab runs.
func (l *Lab) AgentBin() string { return l.agentBin }

func (l *Lab) saveState() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.state.save()
}

func (l *Lab) updateNode(name string, f func(*Node)) {
	l.mu.Lock()
	for i := range l.state.Nodes {
		if l.state.Nodes[i].Name == name {
			f(&l.state.Nodes[i])
		}
	}
	err := l.state.save()
	l.mu.Unlock()
	if err != nil {
		l.log.Warn("save lab state", "err", err)
	}
}

// StartEtcd starts the embedded etcd (again, after StopEtcd) on the same
// data directory.
func (l *Lab) StartEtcd(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.etcd != nil {
		return nil
	}
	e, err := startEtcd(ctx, l.state.Underlay, filepath.Join(l.state.Dir, "etcd", "data"))
	if err != nil {
		return err
	}
	l.etcd = e
	if l.client != nil {
		// After an outage gRPC may wait out a long backoff before it
		// redials; the server is back now, so redial at once.
		l.client.ActiveConnection().ResetConnectBackoff()
	}
	return nil
}

// StopEtcd stops the embedded etcd; the agents keep their routes and
// retry. Leases are kept in the data directory.
func (l *Lab) StopEtcd() {
	l.mu.Lock()
	e := l.etcd
	l.etcd = nil
	l.mu.Unlock()
	if e != nil {
		e.Close()
	}
}

// Close stops the agents and etcd and removes every namespace, pin and
// file of the lab. It is safe to call twice.
func (l *Lab) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	names := make([]string, 0, len(l.agents))
	for name := range l.agents {
		names = append(names, name)
	}
	l.mu.Unlock()

	if l.cancel != nil {
		l.cancel()
	}
	var wg sync.WaitGroup
	for _, name := range names {
		wg.Go(func() { l.stopAgent(name, 5*time.Second) })
	}
	wg.Wait()
	if l.client != nil {
		l.client.Close()
	}
	if srv := l.KubeAPI(); srv != nil {
		srv.Stop()
	}
	l.StopEtcd()
	return Down(context.Background(), DownOptions{
		Prefix: l.cfg.Prefix, StateRoot: l.cfg.StateRoot, BinDir: l.cfg.BinDir, Log: l.log, self: true,
	})
}
