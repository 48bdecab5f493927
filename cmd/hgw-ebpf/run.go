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

	"github.com/hgw-ebpf/hgw-ebpf/pkg/agent"
	"github.com/hgw-ebpf/hgw-ebpf/pkg/datapath"
)

func newRunCmd() *cobra.Command {
	var (
		cfg       agent.Config
		etcd      etcdFlags
		publicIP  string
		mode      string
		logFormat string
		logLevel  string
	)
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the node agent (in place of flanneld with the host-gw backend)",
		Long: `Runs the node agent. Like flanneld with the host-gw backend it reads the
network config from etcd (<etcd-prefix>/config), leases this node a pod subnet
(<etcd-prefix>/subnets/<subnet>, reusing the node's earlier lease), writes
the subnet file for the CNI plugins, and routes every other node's subnet
via that node's public IP. With --datapath ebpf (the default) it also
attaches the fast-path programs to --bridge and --iface.

On SIGTERM or SIGINT it stops and leaves routes, maps and programs in place,
so traffic keeps flowing while it restarts; --cleanup-on-exit removes them
and releases the lease instead. Every flag can also be set by the
environment variable named in its help.`,
		Example: `  hgw-ebpf run --etcd-endpoints http://10.0.0.1:2379 --iface eth0
  HGW_ETCD_ENDPOINTS=https://etcd:2379 HGW_ETCD_CAFILE=/etc/ssl/ca.pem hgw-ebpf run`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(logFormat, logLevel)
			if err != nil {
				return err
			}
			if cfg.Etcd, err = etcd.client(); err != nil {
				return err
			}
			cfg.Prefix = etcd.prefix
			if publicIP != "" {
				ip, err := netip.ParseAddr(publicIP)
				if err != nil || !ip.Is4() {
					return fmt.Errorf("--public-ip %q is not an IPv4 address", publicIP)
				}
				cfg.PublicIP = ip
			}
			cfg.AttachMode = datapath.Mode(mode)
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return agent.Run(ctx, cfg, log)
		},
	}
	f := cmd.Flags()
	etcd.register(f)
	f.StringVar(&cfg.Iface, "iface", "", "underlay device towards the other nodes (default: the default route's device)")
	f.StringVar(&publicIP, "public-ip", "", "IP other nodes route this node's pods via (default: --iface's first IPv4)")
	f.StringVar(&cfg.SubnetFile, "subnet-file", "/run/flannel/subnet.env", "subnet file for the CNI plugins, in flanneld's format")
	f.DurationVar(&cfg.LeaseTTL, "subnet-lease-ttl", 24*time.Hour, "TTL of the subnet lease in etcd (kept alive while running)")
	f.StringVar(&cfg.Bridge, "bridge", "cni0", "pod bridge (created if missing)")
	f.StringVar(&cfg.Datapath, "datapath", agent.DatapathEBPF, "ebpf (routes + fast path) or routes (plain host-gw, no programs)")
	f.StringVar(&mode, "attach-mode", string(datapath.ModeAuto), "how to attach programs: auto (tcx, else tc), tcx or tc")
	f.DurationVar(&cfg.ResyncInterval, "resync-interval", 10*time.Second, "full reconcile of routes, map and attachments this often")
	f.StringVar(&cfg.PinRoot, "bpffs-root", datapath.DefaultPinRoot, "bpffs directory for the pinned maps and links")
	f.BoolVar(&cfg.UnsafeIgnoreConntrack, "unsafe-ignore-conntrack", false,
		"forward flows conntrack tracks on the fast path too (breaks kube-proxy NAT; only for clusters without it)")
	f.BoolVar(&cfg.CleanupOnExit, "cleanup-on-exit", false, "on exit remove routes, programs and pins, and release the lease")
	f.StringVar(&cfg.MetricsAddr, "metrics-addr", "127.0.0.1:9742", "address of /metrics, /healthz and /readyz (empty: off)")
	f.StringVar(&logFormat, "log-format", "text", "log format: text or json")
	f.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn or error")
	return cmd
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
