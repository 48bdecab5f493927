// Package lab builds flannel host-gw clusters out of network namespaces on
// one machine: an underlay bridge, nodes running `hgw-ebpf run`, pods
// attached by the real CNI plugins, and an embedded etcd. Nothing it does
// touches the root network namespace: no link, route, address or sysctl
// there, so no lab packet can leave the machine.
package lab

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"

	"github.com/hgw-ebpf/hgw-ebpf/internal/kubeapi"
)

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
