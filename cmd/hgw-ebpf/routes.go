package main

import (
	"fmt"
	"io"
	"net/netip"
	"sort"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
	"github.com/hgw-ebpf/hgw-ebpf/internal/peers"
)

// routeRow is one peer subnet as the kernel and the map see it.
type routeRow struct {
	Subnet  netip.Prefix `json:"subnet"`
	NextHop string       `json:"nexthop"`
	Dev     string       `json:"dev"`
	Kernel  bool         `json:"kernel"` // a kernel route of ours exists
	Map     bool         `json:"map"`    // a routes-map entry exists
	Agree   bool         `json:"agree"`  // both exist with the same next hop and device
}

func newRoutesCmd() *cobra.Command {
	var root string
	var out output
	cmd := &cobra.Command{
		Use:   "routes",
		Short: "List peer subnets: kernel route, map entry, and whether they agree",
		Long: `Lists every peer subnet the agent routes, from the kernel's routing table
(routes tagged with protocol 104, plain or through nexthop objects) and from
the pinned routes maps (routes for IPv4, routes6 for IPv6), and says whether
both exist and agree on next hop and device. In --datapath routes mode
there is no map: only the kernel column is filled.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			kernel, err := peers.KernelRoutes(nil)
			if err != nil {
				return err
			}
			var entries []datapath.Route
			if maps, err := datapath.OpenPinned(root); err == nil {
				entries, err = listRoutes(maps)
				maps.Close()
				if err != nil {
					return err
				}
			}
			rows := joinRoutes(kernel, entries)
			return out.print(cmd.OutOrStdout(), rows, func(w io.Writer) error { return printRoutes(w, rows) })
		},
	}
	addPinRootFlag(cmd, &root)
	out.addFlag(cmd)
	return cmd
}

func printRoutes(w io.Writer, rows []routeRow) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "SUBNET\tNEXT HOP\tDEVICE\tKERNEL\tMAP\tAGREE\n")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%v\t%v\t%v\n", r.Subnet, r.NextHop, r.Dev, yes(r.Kernel), yes(r.Map), yes(r.Agree))
	}
	return tw.Flush()
}

func yes(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func joinRoutes(kernel, entries []datapath.Route) []routeRow {
	byKernel := map[netip.Prefix]datapath.Route{}
	byMap := map[netip.Prefix]datapath.Route{}
	for _, r := range kernel {
		byKernel[r.Subnet] = r
	}
	for _, r := range entries {
		byMap[r.Subnet] = r
	}
	var rows []routeRow
	add := func(p netip.Prefix) {
		k, kok := byKernel[p]
		m, mok := byMap[p]
		show := k
		if !kok {
			show = m
		}
		rows = append(rows, routeRow{Subnet: p, NextHop: show.NextHop.String(), Dev: devName(show.Ifindex),
			Kernel: kok, Map: mok, Agree: kok && mok && k == m})
	}
	for p := range byKernel {
		add(p)
	}
	for p := range byMap {
		if _, ok := byKernel[p]; !ok {
			add(p)
		}
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].Subnet.Addr().Less(rows[j].Subnet.Addr()) })
	return rows
}
