package main

import (
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/hgw-ebpf/hgw-ebpf/internal/agent"
	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
)

func newRunCmd() *cobra.Command {
	var r runFlags
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the node agent (in place of flanneld with the host-gw backend)",
		Long:  runHelp,
		Example: `  hgw-ebpf run --etcd-endpoints http://10.0.0.1:2379 --iface eth0
  HGW_ETCD_ENDPOINTS=https://etcd:2379 HGW_ETCD_CAFILE=/etc/ssl/ca.pem hgw-ebpf run
  NODE_NAME=worker-1 hgw-ebpf run --kube-subnet-mgr --kubeconfig-file /etc/kubernetes/kubelet.conf`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, log, err := r.config()
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return agent.Run(ctx, cfg, log)
		},
	}
	r.register(cmd.Flags())
	return cmd
}

const runHelp = `Runs the node agent. Like flanneld with the host-gw backend it reads the
network config from etcd (<etcd-prefix>/config), leases this node a pod subnet
(<etcd-prefix>/subnets/<subnet>, reusing the node's earlier lease), writes
the subnet file for the CNI plugins, and routes every other node's subnet
via that node's public IP. With --datapath ebpf (the default) it also
attaches the fast-path programs to --bridge and --iface.

On a dual-stack network (EnableIPv6 and IPv6Network in the network config,
as flanneld's) the lease holds an IPv6 subnet too, the subnet file its
FLANNEL_IPV6_NETWORK and FLANNEL_IPV6_SUBNET lines, and every other node's
IPv6 subnet is routed via its PublicIPv6, in the kernel and in the routes6
map. The node's own public IPv6 is --public-ipv6, else --iface's global
IPv6 address: never a temporary (privacy) one, which the kernel retires
within hours, nor a deprecated one; the log says which it chose and why
not the others. Leases of nodes without IPv6 are routed in IPv4 only.

With --kube-subnet-mgr, as flanneld --kube-subnet-mgr, the leases are
Kubernetes Nodes instead: the network config is --net-config-path (the same
JSON), the node's subnet is its Node's spec.podCIDR (waited for, and logged,
until kube-controller-manager sets it), published with the node's public IP
in the Node's annotations (<kube-annotation-prefix>/kube-subnet-manager,
backend-type, backend-data, public-ip, and on a dual-stack network
public-ipv6 and backend-v6-data; an operator's public-ip-overwrite and
public-ipv6-overwrite annotations are published instead), and the peers are
every Node carrying them. The Node is $NODE_NAME, else the node of the pod
$POD_NAMESPACE/$POD_NAME; the API server is --kubeconfig-file,
--kube-api-url or the in-cluster config. deploy/kube-hgw-ebpf.yaml runs it
as a DaemonSet.

Like flanneld it keeps a filter FORWARD -> FLANNEL-FWD chain accepting the
cluster network (so a FORWARD policy of DROP does not stop pod traffic), and
with --ip-masq the nat POSTROUTING -> FLANNEL-POSTRTG masquerade chain, with
flanneld's names, comments and rule order: a node moved over from flanneld
keeps one copy of each. Both are checked every --resync-interval and
written again if changed.

The fast path stands aside (every packet takes the kernel path, nothing is
dropped) while a NetworkPolicy engine is present on the node, whose rules it
would skip: the nftables table inet kube-network-policies, kube-router's
KUBE-ROUTER-* or Calico's cali-* iptables chains. --allow-policy-bypass
keeps it on anyway. It redirects nothing until the conntrack lookup is
usable (nf_conntrack is loaded if missing, and looked for again every
resync), unless --unsafe-ignore-conntrack. /readyz, 'hgw-ebpf status' and
the metrics say which applies.

With --datapath routes it also removes what an earlier ebpf run left
attached or pinned.

On SIGTERM or SIGINT it stops and leaves routes, maps and programs in place,
so traffic keeps flowing while it restarts; --cleanup-on-exit removes them,
flanneld's iptables rules too, and releases the lease instead. If the node's
lease is lost and re-acquired with another subnet, it exits as flanneld does
(pods must be recreated). Every flag can also be set by the
environment variable named in its help.`

// runFlags are `run`'s flags: the agent's config, and what is parsed
// into it.
type runFlags struct {
	cfg       agent.Config
	etcd      etcdFlags
	kube      kubeFlags
	publicIP  string
	publicIP6 string
	mode      string
	logFormat string
	logLevel  string
}

func (r *runFlags) register(f *pflag.FlagSet) {
	r.etcd.register(f)
	r.kube.register(f)
	f.StringVar(&r.cfg.Iface, "iface", "", "underlay device towards the other nodes (default: the default route's device)")
	f.StringVar(&r.publicIP, "public-ip", "", "IP other nodes route this node's pods via (default: --iface's first IPv4)")
	f.StringVar(&r.publicIP6, "public-ipv6", "",
		"IPv6 other nodes route this node's IPv6 pods via, on a dual-stack network (default: --iface's global IPv6 address, "+
			"never a temporary or deprecated one, configured before dynamic)")
	f.StringVar(&r.cfg.SubnetFile, "subnet-file", "/run/flannel/subnet.env", "subnet file for the CNI plugins, in flanneld's format")
	f.DurationVar(&r.cfg.LeaseTTL, "subnet-lease-ttl", 24*time.Hour, "TTL of the subnet lease in etcd (kept alive while running; none with --kube-subnet-mgr)")
	f.StringVar(&r.cfg.Bridge, "bridge", "cni0", "pod bridge (created if missing)")
	f.StringVar(&r.cfg.Datapath, "datapath", agent.DatapathEBPF, "ebpf (routes + fast path) or routes (plain host-gw, no programs)")
	f.StringVar(&r.mode, "attach-mode", string(datapath.ModeAuto), "how to attach programs: auto (tcx, else tc), tcx or tc")
	f.DurationVar(&r.cfg.ResyncInterval, "resync-interval", 10*time.Second, "full reconcile of routes, map and attachments this often")
	f.StringVar(&r.cfg.PinRoot, "bpffs-root", datapath.DefaultPinRoot, "bpffs directory for the pinned maps and links")
	f.BoolVar(&r.cfg.UnsafeIgnoreConntrack, "unsafe-ignore-conntrack", false,
		"forward flows conntrack tracks on the fast path too (breaks kube-proxy NAT; only for clusters without it)")
	f.BoolVar(&r.cfg.IPMasq, "ip-masq", false,
		"as flanneld --ip-masq: masquerade pod traffic leaving the cluster network (nat chain FLANNEL-POSTRTG) and write FLANNEL_IPMASQ=true; "+
			"when off, a FLANNEL-POSTRTG left by an earlier run is removed")
	f.BoolVar(&r.cfg.AllowPolicyBypass, "allow-policy-bypass", false,
		"keep the fast path on while a NetworkPolicy engine (kube-network-policies, kube-router, Calico) is present: redirected packets then skip its rules")
	f.BoolVar(&r.cfg.PlainRoutes, "plain-routes", false,
		"install plain gateway routes even where the kernel has nexthop objects (routes then cost more to program: see docs/benchmarks.md)")
	f.BoolVar(&r.cfg.CleanupOnExit, "cleanup-on-exit", false, "on exit remove routes, programs and pins, and release the lease")
	f.StringVar(&r.cfg.MetricsAddr, "metrics-addr", "127.0.0.1:9742", "address of /metrics, /healthz and /readyz (empty: off)")
	f.StringVar(&r.logFormat, "log-format", "text", "log format: text or json")
	f.StringVar(&r.logLevel, "log-level", "info", "log level: debug, info, warn or error")
}

// config is the agent's config and logger from the flags, or what is
// wrong with them.
func (r *runFlags) config() (agent.Config, *slog.Logger, error) {
	cfg := r.cfg
	log, err := newLogger(r.logFormat, r.logLevel)
	if err != nil {
		return cfg, nil, err
	}
	if cfg.Etcd, err = r.etcd.client(); err != nil {
		return cfg, nil, err
	}
	cfg.Prefix = r.etcd.prefix
	cfg.Kube = r.kube.options(log)
	if r.publicIP != "" {
		ip, err := netip.ParseAddr(r.publicIP)
		if err != nil || !ip.Is4() {
			return cfg, nil, fmt.Errorf("--public-ip %q is not an IPv4 address", r.publicIP)
		}
		cfg.PublicIP = ip
	}
	if r.publicIP6 != "" {
		ip, err := netip.ParseAddr(r.publicIP6)
		if err != nil || !ip.Is6() || ip.Is4In6() || ip.Zone() != "" || !ip.IsGlobalUnicast() {
			return cfg, nil, fmt.Errorf("--public-ipv6 %q is not a global IPv6 address", r.publicIP6)
		}
		cfg.PublicIPv6 = ip
	}
	cfg.AttachMode = datapath.Mode(r.mode)
	return cfg, log, nil
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func newLogger(format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: %w", level, err)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
}
