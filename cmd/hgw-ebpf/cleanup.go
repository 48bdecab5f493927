package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/spf13/cobra"

	"github.com/hgw-ebpf/hgw-ebpf/internal/agent"
	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
	"github.com/hgw-ebpf/hgw-ebpf/internal/peers"
	"github.com/hgw-ebpf/hgw-ebpf/internal/registry"
	"github.com/hgw-ebpf/hgw-ebpf/internal/registry/kube"
	"github.com/hgw-ebpf/hgw-ebpf/internal/subnetfile"
)

func newCleanupCmd() *cobra.Command {
	var (
		root, subnetFile, iface, publicIP string
		release                           bool
		etcd                              etcdFlags
		kubef                             kubeFlags
	)
	cmd := &cobra.Command{
		Use:   "cleanup",
		Short: "Remove what the agent installed: programs, pins, routes, iptables rules (and the lease)",
		Long: `Removes what the agent owns on this node: detaches both programs (tcx links and
tc filters), deletes the pinned maps under --bpffs-root, deletes the kernel
routes and nexthop objects tagged with the agent's route protocol (104; no
other route is touched), and removes flanneld's iptables chains FLANNEL-FWD (filter) and
FLANNEL-POSTRTG (nat) with the jumps to them, whether the agent or flanneld
wrote them, logging what it found. With --release-lease it also deletes this node's lease from etcd,
found as ` + "`run`" + ` finds it: the subnet from --subnet-file, the node's public IP
from --public-ip or else --iface's first IPv4 address (default: the default
route's device); a lease naming another public IP is left alone. With
--kube-subnet-mgr it removes the lease annotations from the node's Kubernetes
Node ($NODE_NAME) instead, if the Node's podCIDR and public IP are those. The other
nodes then drop their routes to this node at once. Stop the agent first.
A CNI ADD or an agent loading that works on the same pins finishes first
(cleanup waits up to 30s for it). Safe to run twice or on a node with nothing
installed.`,
		Example: `  hgw-ebpf cleanup
  hgw-ebpf cleanup --release-lease --etcd-endpoints http://10.0.0.1:2379
  NODE_NAME=worker-1 hgw-ebpf cleanup --release-lease --kube-subnet-mgr --kubeconfig-file /etc/kubernetes/kubelet.conf`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var errs []error
			if err := datapath.Cleanup(root); err != nil {
				errs = append(errs, fmt.Errorf("cleanup %s: %w", root, err))
			} else {
				slog.Info("programs detached, pins removed", "pin_root", root)
			}
			n, nhs, err := peers.RemoveKernelRoutes(nil)
			if err != nil {
				errs = append(errs, err)
			}
			slog.Info("kernel routes removed", "count", n, "nexthops", nhs, "protocol", int(peers.RouteProtocol))
			if err := removeFlannelIPTables(); err != nil {
				errs = append(errs, err)
			}
			if release {
				if err := releaseLease(cmd.Context(), etcd, kubef.options(slog.Default()), subnetFile, iface, publicIP); err != nil {
					errs = append(errs, err)
				}
			}
			return errors.Join(errs...)
		},
	}
	addPinRootFlag(cmd, &root)
	f := cmd.Flags()
	f.BoolVar(&release, "release-lease", false, "also delete this node's subnet lease from etcd")
	f.StringVar(&subnetFile, "subnet-file", "/run/flannel/subnet.env", "subnet file naming this node's subnet (with --release-lease)")
	f.StringVar(&iface, "iface", "", "underlay device whose first IPv4 is the node's public IP (default: the default route's device; with --release-lease)")
	f.StringVar(&publicIP, "public-ip", "", "this node's public IP, which the lease must name (default: from --iface; with --release-lease)")
	etcd.register(f)
	kubef.register(f)
	return cmd
}

// releaseLease releases this node's lease in etcd, or in its Node with
// kubeOpts.
func releaseLease(ctx context.Context, etcd etcdFlags, kubeOpts *kube.Options, subnetFile, iface, publicIP string) error {
	env, err := subnetfile.Read(subnetFile)
	if err != nil {
		return fmt.Errorf("--release-lease needs this node's subnet from --subnet-file: %w", err)
	}
	var given netip.Addr
	if publicIP != "" {
		if given, err = netip.ParseAddr(publicIP); err != nil || !given.Is4() {
			return fmt.Errorf("--public-ip %q is not an IPv4 address", publicIP)
		}
	}
	ip, err := agent.PublicIP(iface, given)
	if err != nil {
		return fmt.Errorf("--release-lease needs this node's public IP: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if kubeOpts != nil {
		m, err := kube.New(ctx, *kubeOpts, slog.Default())
		if err != nil {
			return err
		}
		defer m.Close()
		return m.Release(ctx, env.Subnet, ip)
	}
	opts, err := etcd.client()
	if err != nil {
		return err
	}
	cli, err := registry.Dial(ctx, opts)
	if err != nil {
		return err
	}
	defer cli.Close()
	return registry.New(cli, etcd.prefix, slog.Default()).Release(ctx, env.Subnet, ip)
}
