package main

import (
	"fmt"
	"io"
	"net"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/hgw-ebpf/hgw-ebpf/internal/agent"
	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
	"github.com/hgw-ebpf/hgw-ebpf/internal/netfilter"
)

// statusReport is what `hgw-ebpf status` prints; its JSON field names are
// documented in docs/operations.md and stable.
type statusReport struct {
	PinRoot     string                `json:"pin_root"`
	Config      *datapath.NodeConfig  `json:"config"`
	FastPath    *fastPathReport       `json:"fast_path"`
	Attachments []datapath.Attachment `json:"attachments"`
	Routes      []datapath.Route      `json:"routes"`
	Endpoints   []datapath.Endpoint   `json:"endpoints"`
	Counters    []datapath.Counter    `json:"counters"`
}

// fastPathReport is what the programs may do, from the config the agent
// wrote and the NetworkPolicy engines found now.
type fastPathReport struct {
	State         string             `json:"state"` // active, step_aside, closed_no_conntrack
	Summary       string             `json:"summary"`
	Checks        string             `json:"checks"`
	PolicyEngines []netfilter.Engine `json:"policy_engines"`
}

func newStatusCmd() *cobra.Command {
	var root string
	var out output
	var all bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the pinned datapath state: attachments, routes, counters",
		Long: `Reads the state the agent pinned under --bpffs-root, with or without an agent
running: which programs are attached to which devices, the node config the
programs use, the peer subnets in the routes map, the local pods in the
endpoints map (delivered with bpf_redirect_peer), and the packet counters by
family, program and reason (summed over CPUs). Both families: the IPv6 pod
subnet (dual stack), the routes6 map's peers and pods' IPv6 addresses too. It also says whether the fast path is
active, stepping aside for a NetworkPolicy engine (named, as found on the
node now) or closed because the conntrack lookup is unavailable, and which
checks guard it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rep, err := readStatus(root)
			if err != nil {
				return err
			}
			return out.print(cmd.OutOrStdout(), rep, func(w io.Writer) error { return printStatus(w, rep, all) })
		},
	}
	addPinRootFlag(cmd, &root)
	out.addFlag(cmd)
	cmd.Flags().BoolVar(&all, "all", false, "list counters that are still zero too")
	return cmd
}

func readStatus(root string) (*statusReport, error) {
	maps, err := datapath.OpenPinned(root)
	if err != nil {
		return nil, fmt.Errorf("no datapath state under %s (is the agent running with this --bpffs-root?): %w", root, err)
	}
	defer maps.Close()
	rep := &statusReport{PinRoot: root}
	if cfg, ok, err := maps.Config(); err != nil {
		return nil, err
	} else if ok {
		rep.Config = &cfg
		engines := netfilter.Detector{}.Present()
		f := agent.FastPathOf(cfg, engines)
		rep.FastPath = &fastPathReport{State: f.State(), Summary: f.Describe(), Checks: f.Checks(), PolicyEngines: engines}
		if rep.FastPath.PolicyEngines == nil {
			rep.FastPath.PolicyEngines = []netfilter.Engine{}
		}
	}
	if rep.Attachments, err = datapath.Attachments(root); err != nil {
		return nil, err
	}
	if rep.Routes, err = listRoutes(maps); err != nil {
		return nil, err
	}
	if rep.Endpoints, err = maps.Endpoints().List(); err != nil {
		return nil, err
	}
	if rep.Counters, err = maps.Stats(); err != nil {
		return nil, err
	}
	return rep, nil
}

// listRoutes lists the peer subnets of both families: the routes map's,
// then the routes6 map's.
func listRoutes(maps *datapath.Maps) ([]datapath.Route, error) {
	v4, err := maps.Routes().List()
	if err != nil {
		return nil, err
	}
	v6, err := maps.Routes6().List()
	if err != nil {
		return nil, err
	}
	return append(v4, v6...), nil
}

func devName(ifindex uint32) string {
	if ifi, err := net.InterfaceByIndex(int(ifindex)); err == nil {
		return ifi.Name
	}
	return fmt.Sprintf("ifindex %d", ifindex)
}

func printStatus(w io.Writer, rep *statusReport, all bool) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	printNode(tw, rep)
	printAttachments(tw, rep.Attachments)
	printRouteMap(tw, rep.Routes)
	printEndpoints(tw, rep.Endpoints)
	fmt.Fprintf(tw, "\nCounters:\n")
	printCounterTotals(tw, "  ", rep.Counters, all)
	return tw.Flush()
}

// printNode prints where the state is, the node config the programs use,
// and what the fast path may do.
func printNode(tw io.Writer, rep *statusReport) {
	fmt.Fprintf(tw, "Pinned state:\t%s\n", rep.PinRoot)
	if c := rep.Config; c != nil {
		fmt.Fprintf(tw, "Pod subnet:\t%s (gateway %s)\n", c.PodSubnet, c.Gateway)
		if c.PodSubnet6.IsValid() {
			fmt.Fprintf(tw, "IPv6 pod subnet:\t%s (gateway %s)\n", c.PodSubnet6, c.Gateway6)
		} else {
			fmt.Fprintf(tw, "IPv6 pod subnet:\tnot configured (IPv6 passes to the kernel)\n")
		}
		fmt.Fprintf(tw, "Devices:\tbridge %s, underlay %s\n", devName(c.BridgeIfindex), devName(c.UnderlayIfindex))
	} else {
		fmt.Fprintf(tw, "Pod subnet:\tnot configured (programs pass everything to the kernel)\n")
	}
	if f := rep.FastPath; f != nil {
		fmt.Fprintf(tw, "Fast path:\t%s\n", strings.TrimPrefix(f.Summary, "fast path: "))
		fmt.Fprintf(tw, "Checks:\t%s\n", f.Checks)
		engines := netfilter.EngineList(f.PolicyEngines)
		if engines == "" {
			engines = "none found"
		}
		fmt.Fprintf(tw, "Policy engines:\t%s\n", engines)
	}
}

func printAttachments(tw io.Writer, atts []datapath.Attachment) {
	fmt.Fprintf(tw, "\nAttachments:\n")
	if len(atts) == 0 {
		fmt.Fprintf(tw, "  none: traffic takes the kernel routes\n")
		return
	}
	fmt.Fprintf(tw, "  DEVICE\tHOOK\tPROGRAM\tMODE\tPROG ID\n")
	for _, a := range atts {
		dev := a.Dev
		if a.Ifindex == 0 {
			dev += " (gone)"
		}
		fmt.Fprintf(tw, "  %s\tingress\t%s\t%s\t%d\n", dev, a.Program, a.Mode, a.ProgramID)
	}
}

func printRouteMap(tw io.Writer, routes []datapath.Route) {
	fmt.Fprintf(tw, "\nRoutes map (%d peers):\n", len(routes))
	if len(routes) > 0 {
		fmt.Fprintf(tw, "  SUBNET\tNEXT HOP\tDEVICE\n")
		for _, r := range routes {
			fmt.Fprintf(tw, "  %s\t%s\t%s\n", r.Subnet, r.NextHop, devName(r.Ifindex))
		}
	}
}

func printEndpoints(tw io.Writer, eps []datapath.Endpoint) {
	fmt.Fprintf(tw, "\nEndpoints map (%d local pods):\n", len(eps))
	if len(eps) > 0 {
		fmt.Fprintf(tw, "  POD IP\tHOST VETH\tPOD MAC\tGATEWAY MAC\n")
		for _, e := range eps {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", e.IP, devName(e.Ifindex), e.PodMAC, e.GatewayMAC)
		}
	}
}

// printCounterTotals prints the counters that moved (all of them with
// all), each row led by indent: status and stats print the same table.
func printCounterTotals(tw io.Writer, indent string, counters []datapath.Counter, all bool) {
	fmt.Fprintf(tw, "%sFAMILY\tPROGRAM\tREASON\tPACKETS\tBYTES\t\n", indent)
	shown := 0
	for _, c := range counters {
		if c.Packets == 0 && !all {
			continue
		}
		shown++
		fmt.Fprintf(tw, "%s%s\t%s\t%s\t%d\t%d\t\n", indent, c.Family, c.Program, c.Reason, c.Packets, c.Bytes)
	}
	if shown == 0 {
		fmt.Fprintf(tw, "%s(all zero)\n", indent)
	}
}
