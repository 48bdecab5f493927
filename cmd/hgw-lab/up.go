package main

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/hgw-ebpf/hgw-ebpf/internal/lab"
	"github.com/hgw-ebpf/hgw-ebpf/internal/logtail"
)

// detachedEnv marks the background copy of `up --detach`: its parent has
// already removed leftovers and opened the log in the state directory.
const detachedEnv = "HGW_LAB_DETACHED"

// labConfig holds the flags shared by `up` and `demo`.
type labConfig struct {
	nodes, pods int
	datapath    string
	registry    string
	cniPath     string
	resync      time.Duration
	agentArgs   []string
	plainBridge bool
	// A real node's state around the agent.
	kubeProxy, fromFlanneld, ipMasq, forwardDrop, internet bool
	dualStack                                              bool
	kubeServices                                           int
	flanneldNodes                                          []int
	flannelCNI                                             bool
}

func (c *labConfig) addFlags(cmd *cobra.Command, nodes, pods int) {
	f := cmd.Flags()
	f.IntVar(&c.nodes, "nodes", nodes, fmt.Sprintf("number of nodes (1..%d)", lab.MaxNodes))
	f.IntVar(&c.pods, "pods", pods, "pods per node")
	f.StringVar(&c.datapath, "datapath", lab.DatapathEBPF,
		"ebpf (agents with the fast path), routes (agents, kernel routes only: plain host-gw) or static (no agents: the lab adds the routes)")
	f.StringVar(&c.registry, "registry", lab.RegistryEtcd,
		"where the agents keep their leases: etcd (flannel's schema) or kube (Nodes of a real kube-apiserver on the underlay, "+
			"agents with --kube-subnet-mgr; needs <bin>/kube from `make deps`)")
	f.StringVar(&c.cniPath, "cni-path", os.Getenv("CNI_PATH"), "directory of the CNI bridge and host-local plugins (default <bin>/cni)")
	f.DurationVar(&c.resync, "resync-interval", 2*time.Second, "the agents' --resync-interval")
	f.StringArrayVar(&c.agentArgs, "agent-arg", nil, "extra flag for every 'hgw-ebpf run' (repeatable)")
	f.BoolVar(&c.plainBridge, "plain-bridge-cni", false,
		"attach pods without hgw-cni chained after the bridge (or flannel) plugin: the agents learn the pods from the kernel")
	f.BoolVar(&c.kubeProxy, "kube-proxy", false,
		"load kube-proxy's iptables rules into every node: ClusterIP "+lab.ServiceIP.String()+" and NodePorts 30080/30201 (externalTrafficPolicy Cluster), "+
			lab.ServiceLocalIP.String()+" and 30081/30202 (Local), backed by the last node's first pod, and KUBE-FORWARD's INVALID drop")
	f.IntVar(&c.kubeServices, "kube-services", 0, "with --kube-proxy, that many more (synthetic) services in the rules")
	f.BoolVar(&c.fromFlanneld, "from-flanneld", false,
		"start every node as flanneld leaves it: its subnet file and flanneld's iptables rules in place before the agent starts")
	f.BoolVar(&c.ipMasq, "ip-masq", false, "run every agent (hgw-ebpf and flanneld) with --ip-masq")
	f.BoolVar(&c.forwardDrop, "forward-drop", false, "set every node's FORWARD policy to DROP, as Docker does")
	f.BoolVar(&c.internet, "internet", false,
		"add namespace <prefix>-inet ("+lab.InternetIP.String()+" on the underlay) standing for the world outside the cluster; it routes no pod subnet")
	f.IntSliceVar(&c.flanneldNodes, "flanneld-nodes", nil,
		"nodes (numbers, 1-based) that run the real flanneld instead of hgw-ebpf; found in $"+lab.FlanneldEnv+" or ../shared/tools beside the project")
	f.BoolVar(&c.dualStack, "dual-stack", false,
		"IPv6 too, as a dual-stack flannel network: the underlay gets fd00:198:18::/64 (node k fd00:198:18::(10+k)), the network config "+
			"EnableIPv6 with IPv6Network fd00:10:244::/56, every node an IPv6 /64 besides its IPv4 /24, and the pods an address of each family")
	f.BoolVar(&c.flannelCNI, "flannel-cni", false,
		"attach pods through the real flannel CNI plugin (delegating to bridge), as kube-flannel does; found in $"+lab.FlannelCNIEnv+" or ../shared/tools beside the project")
}

func (c *labConfig) config(g *globals) (lab.Config, error) {
	cfg := lab.Config{
		Prefix: g.prefix, StateRoot: g.stateRoot, BinDir: g.binDir, CNIPath: c.cniPath,
		Nodes: c.nodes, PodsPerNode: c.pods, Datapath: c.datapath, Registry: c.registry,
		ResyncInterval: c.resync, AgentArgs: c.agentArgs, PlainBridgeCNI: c.plainBridge, Log: g.logger(),
		KubeProxy: c.kubeProxy, KubeServices: c.kubeServices, FromFlanneld: c.fromFlanneld, IPMasq: c.ipMasq,
		ForwardDrop: c.forwardDrop, Internet: c.internet, FlanneldNodes: c.flanneldNodes, DualStack: c.dualStack,
	}
	if len(c.flanneldNodes) == 0 && !c.flannelCNI {
		return cfg, nil
	}
	// bin/ sits in the project root.
	flanneld, cniDir, err := lab.FlannelTools(filepath.Dir(g.binDir))
	if err != nil {
		return cfg, fmt.Errorf("--flanneld-nodes and --flannel-cni need the real flannel binaries: %w", err)
	}
	cfg.Flanneld = flanneld
	if c.flannelCNI {
		cfg.FlannelCNI = cniDir
	}
	return cfg, nil
}

func newUpCmd(g *globals) *cobra.Command {
	var (
		lc     labConfig
		detach bool
	)
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Build the cluster and keep it running",
		Long: `Removes whatever an earlier lab with the same prefix left behind, then builds
the cluster: the underlay, etcd (seeded with flannel's network config), the
nodes with one 'hgw-ebpf run' each, and the pods. It returns when every pod
has an address and every node routes to every other node.

With --registry kube the agents run with --kube-subnet-mgr instead: a real
kube-apiserver serves on the underlay (198.18.0.1:6443, backed by the lab's
etcd), deploy/kube-hgw-ebpf.yaml is applied to it (its ClusterRole is what
the agents may do), and each node gets a Node object with its podCIDR
(10.244.<n>.0/24), as kube-controller-manager would give it.

Without --detach it stays in the foreground, serving etcd and restarting any
agent that dies, until Ctrl-C (or SIGTERM), then removes everything. With
--detach it does the same in the background and returns once the lab is
ready; 'hgw-lab down' stops it.`,
		Example: `  hgw-lab up --nodes 3 --pods 2
  hgw-lab up --nodes 5 --pods 4 --detach
  hgw-lab up --datapath routes --detach    # plain flannel host-gw, for comparison
  hgw-lab up --dual-stack --detach         # IPv4 and IPv6
  hgw-lab up --registry kube --detach      # flanneld's --kube-subnet-mgr mode`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := lc.config(g)
			if err != nil {
				return err
			}
			if detach {
				return startDetached(cmd, g)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			if os.Getenv(detachedEnv) != "" {
				cfg.LeftoversRemoved = true
			}
			l, err := lab.Up(ctx, cfg)
			if err != nil {
				return err
			}
			printReady(cmd.OutOrStdout(), l.State(), g, false)
			<-ctx.Done()
			fmt.Fprintln(cmd.OutOrStdout(), "stopping the lab...")
			if err := l.Close(); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), "lab removed")
			return nil
		},
	}
	lc.addFlags(cmd, 3, 2)
	cmd.Flags().BoolVarP(&detach, "detach", "d", false, "run the lab in the background and return once it is ready")
	return cmd
}

// startDetached re-executes this command without --detach in a new session
// (so closing the terminal does not stop it), logging to lab.log in the
// state directory, and waits until the child reports the lab ready.
func startDetached(cmd *cobra.Command, g *globals) error {
	ctx := cmd.Context()
	if err := lab.Down(ctx, lab.DownOptions{Prefix: g.prefix, StateRoot: g.stateRoot, BinDir: g.binDir, Log: g.logger()}); err != nil {
		return fmt.Errorf("remove leftovers of an earlier lab: %w", err)
	}
	dir := lab.StateDir(g.stateRoot, g.prefix)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create state dir: %w", err)
	}
	logPath := filepath.Join(dir, "lab.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("open lab log: %w", err)
	}
	defer logf.Close()
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own executable: %w", err)
	}
	var args []string
	for _, a := range os.Args[1:] {
		if a != "--detach" && a != "-d" && a != "--detach=true" {
			args = append(args, a)
		}
	}
	args = append(args, "--verbose")
	child := exec.Command(exe, args...)
	child.Env = append(os.Environ(), detachedEnv+"=1")
	child.Stdout, child.Stderr = logf, logf
	child.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := child.Start(); err != nil {
		return fmt.Errorf("start background lab: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- child.Wait() }()

	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	timeout := time.After(5 * time.Minute)
	for {
		select {
		case err := <-exited:
			return fmt.Errorf("background lab exited (%v); its log %s says:\n%s", err, logPath, logtail.File(logPath, 20))
		case <-timeout:
			return fmt.Errorf("background lab not ready after 5 minutes; see %s, stop it with `hgw-lab down`", logPath)
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
			st, err := lab.LoadState(g.stateRoot, g.prefix)
			if err == nil && st.Ready && st.PID == child.Process.Pid {
				printReady(cmd.OutOrStdout(), *st, g, true)
				return nil
			}
		}
	}
}

func printReady(w io.Writer, st lab.State, g *globals, detached bool) {
	stack := ""
	if st.DualStack {
		stack = ", dual stack"
	}
	fmt.Fprintf(w, "lab %q is up: %d nodes, %d pods, datapath %s%s (etcd %s)\n",
		st.Prefix, len(st.Nodes), len(st.Pods), st.Datapath, stack, st.Etcd)
	if st.KubeAPI != "" {
		fmt.Fprintf(w, "  Kubernetes API %s; kubectl inside the underlay:\n    ip netns exec %s %s --kubeconfig %s get nodes\n",
			st.KubeAPI, st.Underlay, filepath.Join(lab.KubeBinDir(st.BinDir), "kubectl"), st.Kubeconfig)
	}
	flags := ""
	if g.prefix != lab.DefaultPrefix {
		flags = " --prefix " + g.prefix
	}
	if g.stateRoot != lab.DefaultStateRoot {
		flags += " --state-dir " + g.stateRoot
	}
	fmt.Fprintf(w, "  hgw-lab%s status                   nodes, pods, leases, counters\n", flags)
	fmt.Fprintf(w, "  hgw-lab%s ping                     every pod to every other pod\n", flags)
	fmt.Fprintf(w, "  hgw-lab%s exec n1-p1 -- ip addr    a command inside a pod or node\n", flags)
	if detached {
		fmt.Fprintf(w, "  hgw-lab%s down                     stop and remove everything (log: %s)\n",
			flags, filepath.Join(st.Dir, "lab.log"))
	} else {
		fmt.Fprintln(w, "Ctrl-C stops and removes everything.")
	}
}
