package lab

import (
	"context"
	"fmt"
	"io"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"
)

// PingResult is one pod-to-pod probe.
type PingResult struct {
	From, To string
	OK       bool
	RTT      time.Duration // when OK
	Output   string        // ping's output when not OK
}

var rttRE = regexp.MustCompile(`time=([0-9.]+) ms`)

// Ping sends one echo request from pod `from` to address `to`, waiting at
// most one second for the reply.
func (s State) Ping(ctx context.Context, from, to string) (time.Duration, error) {
	ns, err := s.Resolve(from)
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	out, err := runIn(ns, exec.CommandContext(ctx, "ping", "-n", "-c", "1", "-W", "1", to))
	if err != nil {
		return 0, fmt.Errorf("ping %s from %s: %w: %s", to, from, err, strings.TrimSpace(string(out)))
	}
	if m := rttRE.FindSubmatch(out); m != nil {
		ms, _ := strconv.ParseFloat(string(m[1]), 64)
		return time.Duration(ms * float64(time.Millisecond)), nil
	}
	return 0, nil
}

// PingAll pings every pod from every other pod over IPv4, `parallel`
// probes at a time. A failed probe is tried once more, so that a first
// packet waiting for neighbour resolution does not count as a lost path.
func (s State) PingAll(ctx context.Context, parallel int) []PingResult {
	return s.pingAll(ctx, parallel, func(p Pod) string { return p.IP })
}

// PingAll6 is PingAll over IPv6, to every pod's IPv6 address (a
// dual-stack lab's pods have one).
func (s State) PingAll6(ctx context.Context, parallel int) []PingResult {
	return s.pingAll(ctx, parallel, func(p Pod) string { return p.IP6 })
}

func (s State) pingAll(ctx context.Context, parallel int, addr func(Pod) string) []PingResult {
	if parallel < 1 {
		parallel = 1
	}
	var pairs []PingResult
	for _, a := range s.Pods {
		for _, b := range s.Pods {
			if a.Name != b.Name {
				pairs = append(pairs, PingResult{From: a.Name, To: b.Name})
			}
		}
	}
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	for i := range pairs {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			to, _ := s.Pod(pairs[i].To)
			if addr(to) == "" {
				pairs[i].Output = "no address of this family"
				return
			}
			var err error
			for range 2 {
				if pairs[i].RTT, err = s.Ping(ctx, pairs[i].From, addr(to)); err == nil {
					pairs[i].OK = true
					return
				}
			}
			pairs[i].Output = err.Error()
		})
	}
	wg.Wait()
	return pairs
}

// WriteMatrix prints ping results as a matrix: rows are sources, columns
// destinations, cells the round-trip time or FAIL.
func (s State) WriteMatrix(w io.Writer, results []PingResult) (failed int) {
	cell := map[[2]string]PingResult{}
	for _, r := range results {
		cell[[2]string{r.From, r.To}] = r
	}
	short := func(name string) string { return strings.TrimPrefix(name, s.Prefix+"-") }
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprint(tw, "from \\ to\t")
	for _, p := range s.Pods {
		fmt.Fprintf(tw, "%s\t", short(p.Name))
	}
	fmt.Fprintln(tw)
	for _, a := range s.Pods {
		fmt.Fprintf(tw, "%s\t", short(a.Name))
		for _, b := range s.Pods {
			r, ok := cell[[2]string{a.Name, b.Name}]
			switch {
			case a.Name == b.Name:
				fmt.Fprint(tw, "-\t")
			case !ok:
				fmt.Fprint(tw, "?\t")
			case r.OK:
				fmt.Fprintf(tw, "%.3fms\t", float64(r.RTT.Microseconds())/1000)
			default:
				failed++
				fmt.Fprint(tw, "FAIL\t")
			}
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
	return failed
}
