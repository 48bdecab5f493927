package lab

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/hgw-ebpf/hgw-ebpf/internal/registry"
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
	// What a real node carries besides the agent (the lab tests that a
	// fast path skipping netfilter never skips a rule silently), all
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
