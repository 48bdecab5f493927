package main

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
)

func newStatsCmd() *cobra.Command {
	var (
		root  string
		out   = output{lines: true}
		watch time.Duration
		all   bool
	)
	cmd := &cobra.Command{
		Use:   "stats",
		Short: "Show the fast-path counters by family, program and reason",
		Long: `Prints the per-CPU counters of the pinned stats map, summed over CPUs: for
each family (ipv4, ipv6; "other" for frames that are not IP, such as ARP)
and program (from_pods on the pods' veths and the bridge, from_underlay on
the underlay device) how many packets and bytes took the fast path (reasons
"redirect" and "redirect_peer", the delivery straight into a known pod) and
why the others were left to the kernel. With --watch it prints per-second rates at
that interval until interrupted.

Each packet is counted once, under the first check that kept it off the fast
path. The reasons:
` + reasonHelp(),
		Example: "  hgw-ebpf stats\n  hgw-ebpf stats --watch 1s\n  hgw-ebpf stats -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := out.check(); err != nil {
				return err
			}
			maps, err := datapath.OpenPinned(root)
			if err != nil {
				return fmt.Errorf("no datapath state under %s: %w", root, err)
			}
			defer maps.Close()
			prev, err := maps.Stats()
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if watch <= 0 {
				return out.print(w, prev, func(w io.Writer) error { return printCounters(w, prev, nil, 0, all) })
			}
			t := time.NewTicker(watch)
			defer t.Stop()
			for {
				select {
				case <-cmd.Context().Done():
					return nil
				case <-t.C:
				}
				cur, err := maps.Stats()
				if err != nil {
					return err
				}
				text := func(w io.Writer) error { return printCounters(w, cur, prev, watch, all) }
				if err := out.print(w, rates(cur, prev, watch), text); err != nil {
					return err
				}
				prev = cur
			}
		},
	}
	addPinRootFlag(cmd, &root)
	out.addFlag(cmd)
	cmd.Flags().DurationVar(&watch, "watch", 0, "print per-second rates at this interval (e.g. 1s) until interrupted")
	cmd.Flags().BoolVar(&all, "all", false, "list counters that are zero too")
	return cmd
}

// reasonHelp is the reason list for --help, or why it is missing.
func reasonHelp() string {
	h, err := datapath.ReasonHelp()
	if err != nil {
		return fmt.Sprintf("  (cannot list them: %v)\n", err)
	}
	return h
}

// rate is one counter's per-second rate over an interval.
type rate struct {
	Family        string  `json:"family"`
	Program       string  `json:"program"`
	Reason        string  `json:"reason"`
	PacketsPerSec float64 `json:"packets_per_sec"`
	BytesPerSec   float64 `json:"bytes_per_sec"`
	PacketsTotal  uint64  `json:"packets_total"`
}

func rates(cur, prev []datapath.Counter, d time.Duration) []rate {
	out := make([]rate, 0, len(cur))
	for i, c := range cur {
		r := rate{Family: c.Family, Program: c.Program, Reason: c.Reason, PacketsTotal: c.Packets}
		if i < len(prev) {
			r.PacketsPerSec = float64(c.Packets-prev[i].Packets) / d.Seconds()
			r.BytesPerSec = float64(c.Bytes-prev[i].Bytes) / d.Seconds()
		}
		out = append(out, r)
	}
	return out
}

func printCounters(w io.Writer, cur, prev []datapath.Counter, d time.Duration, all bool) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	if prev == nil {
		printCounterTotals(tw, "", cur, all)
		return tw.Flush()
	}
	fmt.Fprintf(tw, "%s\t\t\t\t\t\nFAMILY\tPROGRAM\tREASON\tPKT/S\tBIT/S\t\n", time.Now().Format(time.TimeOnly))
	for _, r := range rates(cur, prev, d) {
		if r.PacketsPerSec > 0 || all {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%.0f\t%.0f\t\n", r.Family, r.Program, r.Reason, r.PacketsPerSec, 8*r.BytesPerSec)
		}
	}
	return tw.Flush()
}
