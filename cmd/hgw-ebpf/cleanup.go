package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/spf13/cobra"
	"github.com/vishvananda/netlink"

	"github.com/hgw-ebpf/hgw-ebpf/pkg/datapath"
	"github.com/hgw-ebpf/hgw-ebpf/pkg/reconcile"
	"github.com/hgw-ebpf/hgw-ebpf/pkg/registry"
	"github.com/hgw-ebpf/hgw-ebpf/pkg/subnetfile"
)

func newCleanupCmd() *cobra.Command {
	var (
		root, subnetFile, publicIP string
		release                    bool
		etcd                       etcdFlags
	)
	cmd := &cobra.Command{
		Use:   "cleanup",
		Short: "Remove what the agent installed: programs, pins, routes (and the lease)",
		Long: `Removes what the agent owns on this node: detaches both programs (tcx links and
tc filters), deletes the pinned maps under --bpffs-root, and deletes the kernel
routes tagged with the agent's route protocol (104; no other route is
touched). With --release-lease it also deletes this node's lease from etcd
(the subnet comes from --subnet-file, the owner check uses --public-ip), so the
other nodes drop their routes to it at once. Stop the agent first. Safe to
run twice or on a node with nothing installed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var errs []error
			if err := datapath.Cleanup(root); err != nil {
				errs = append(errs, fmt.Errorf("cleanup %s: %w", root, err))
			} else {
				slog.Info("programs detached, pins removed", "pin_root", root)
			}
			h, err := netlink.NewHandle()
			if err != nil {
				return errors.Join(append(errs, fmt.Errorf("netlink: %w", err))...)
			}
			defer h.Close()
			n, err := reconcile.RemoveKernelRoutes(h)
			if err != nil {
				errs = append(errs, err)
			}
			slog.Info("kernel routes removed", "count", n, "protocol", int(reconcile.RouteProtocol))
			if release {
				if err := releaseLease(cmd.Context(), etcd, subnetFile, publicIP); err != nil {
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
	f.StringVar(&publicIP, "public-ip", "", "this node's public IP, which the lease must name (with --release-lease)")
	etcd.register(f)
	return cmd
}

func releaseLease(ctx context.Context, etcd etcdFlags, subnetFile, publicIP string) error {
	env, err := subnetfile.Read(subnetFile)
	if err != nil {
		return fmt.Errorf("--release-lease needs this node's subnet: %w", err)
	}
	ip, err := netip.ParseAddr(publicIP)
	if err != nil || !ip.Is4() {
		return fmt.Errorf("--release-lease needs --public-ip (the IPv4 the lease names), got %q", publicIP)
	}
	opts, err := etcd.client()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	cli, err := registry.Dial(ctx, opts)
	if err != nil {
		return err
	}
	defer cli.Close()
	return registry.New(cli, etcd.prefix, slog.Default()).Release(ctx, env.Subnet, ip)
}
