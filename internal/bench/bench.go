// Package bench measures the lab's datapaths side by side: host, routes,
// ebpf and vxlan, on bare nodes and on nodes carrying kube-proxy's
// netfilter state, interleaved round by round, and reports medians and
// spreads as ratios to host and to routes. Absolute figures on a shared
// machine are noise; ratios measured in one run are the result.
package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/hgw-ebpf/hgw-ebpf/internal/lab"
)

// DefaultPrefix is the base of the labs' prefixes: hgwbr, hgwbe, hgwbx.
const DefaultPrefix = "hgwb"

// LabOptions are what both benchmarks take to bring up their labs.
type LabOptions struct {
	Prefix    string // the labs' (base) prefix; each benchmark has a default
	StateRoot string // lab state root (lab.DefaultStateRoot if empty)
	BinDir    string // hgw-ebpf and cni/
	CNIPath   string // <BinDir>/cni if empty
	Log       *slog.Logger
	Progress  io.Writer // one line per step; os.Stderr if nil
}

func (o *LabOptions) setDefaults(prefix string) {
	if o.Prefix == "" {
		o.Prefix = prefix
	}
	if o.Log == nil {
		o.Log = discard()
	}
	if o.Progress == nil {
		o.Progress = os.Stderr
	}
}

// progressSince returns the printer of progress lines, each stamped with
// the seconds since began.
func (o *LabOptions) progressSince(began time.Time) func(format string, args ...any) {
	return func(format string, args ...any) {
		fmt.Fprintf(o.Progress, "[%6.1fs] %s\n", time.Since(began).Seconds(), fmt.Sprintf(format, args...))
	}
}

// Options configure a run.
type Options struct {
	LabOptions
	Rounds    int      // interleaved rounds (default 5)
	Profiles  []string // AllProfiles if empty
	Datapaths []string // AllDatapaths if empty
	Services  int      // services of the kube profile (default 1000)
	// Duration of each throughput and fixed-load run (default 3s);
	// latency and connection-rate runs last LatencyDuration (default 2s).
	Duration        time.Duration
	LatencyDuration time.Duration
	PPS             int // offered UDP packet rate of the CPU figure (default 50000)
	OutDir          string
}

func (o *Options) setDefaults() error {
	o.LabOptions.setDefaults(DefaultPrefix)
	for _, r := range allLabs {
		if err := lab.ValidatePrefix(o.Prefix + r.suffix); err != nil {
			return fmt.Errorf("bench prefix: %w", err)
		}
	}
	if o.Rounds == 0 {
		o.Rounds = 5
	}
	if o.Rounds < 1 || o.Rounds > 100 {
		return fmt.Errorf("rounds %d: want 1..100", o.Rounds)
	}
	if len(o.Profiles) == 0 {
		o.Profiles = AllProfiles
	}
	for _, p := range o.Profiles {
		if !slices.Contains(AllProfiles, p) {
			return fmt.Errorf("profile %q: want %s", p, strings.Join(AllProfiles, ", "))
		}
	}
	// bare before kube, whatever order was asked for: see AllProfiles.
	var ordered []string
	for _, p := range AllProfiles {
		if slices.Contains(o.Profiles, p) {
			ordered = append(ordered, p)
		}
	}
	o.Profiles = ordered
	if len(o.Datapaths) == 0 {
		o.Datapaths = AllDatapaths
	}
	var dps []string
	for _, d := range AllDatapaths {
		if slices.Contains(o.Datapaths, d) {
			dps = append(dps, d)
		}
	}
	for _, d := range o.Datapaths {
		if !slices.Contains(AllDatapaths, d) {
			return fmt.Errorf("datapath %q: want %s", d, strings.Join(AllDatapaths, ", "))
		}
	}
	o.Datapaths = dps
	if o.Services == 0 {
		o.Services = 1000
	}
	if o.Duration == 0 {
		o.Duration = 3 * time.Second
	}
	if o.LatencyDuration == 0 {
		o.LatencyDuration = 2 * time.Second
	}
	if o.Duration < time.Second || o.Duration > 60*time.Second || o.LatencyDuration < time.Second || o.LatencyDuration > 60*time.Second {
		return fmt.Errorf("durations %s/%s: want 1s..60s", o.Duration, o.LatencyDuration)
	}
	if o.PPS == 0 {
		o.PPS = 50000
	}
	if o.OutDir == "" {
		o.OutDir = "bench-out"
	}
	return nil
}

// Sample is one measurement.
type Sample struct {
	Profile  string    `json:"profile"`
	Round    int       `json:"round"`
	Datapath string    `json:"datapath"`
	Figure   string    `json:"figure"`
	Value    Float     `json:"value"` // NaN (null in JSON) when Error is set
	Unit     string    `json:"unit"`
	At       time.Time `json:"at"`
	Error    string    `json:"error,omitempty"`
	// Delivered is the share of offered UDP packets received (CPU figure).
	Delivered float64 `json:"delivered,omitempty"`
	// BusyNs is the CPU figure with user time included (ns per packet).
	BusyNs float64 `json:"busy_ns_per_packet,omitempty"`
}

// Machine describes where the run happened.
type Machine struct {
	CPUs    int    `json:"cpus"`
	CPU     string `json:"cpu_model"`
	Kernel  string `json:"kernel"`
	Iperf3  string `json:"iperf3"`
	Sockprf string `json:"sockperf"`
	// Load averages at the start and the end: other work on the machine
	// shows up in every figure, most in CPU per packet.
	LoadStart string `json:"loadavg_start"`
	LoadEnd   string `json:"loadavg_end"`
}

// Header is when and where a benchmark ran and how many rounds it took:
// the head of both benchmarks' results.
type Header struct {
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
	Machine  Machine   `json:"machine"`
	Rounds   int       `json:"rounds"`
}

// startHeader records the start of a run of rounds.
func startHeader(ctx context.Context, rounds int) Header {
	return Header{Started: time.Now(), Machine: describeMachine(ctx), Rounds: rounds}
}

// finish records the end of the run.
func (h *Header) finish() {
	h.Finished = time.Now()
	h.Machine.LoadEnd = loadAvg()
}

// Result is everything a run measured; it is written as results.json.
type Result struct {
	Header
	Profiles   []string          `json:"profiles"`
	Datapaths  []string          `json:"datapaths"`
	Services   int               `json:"services"`
	Duration   string            `json:"duration"`
	LatencyDur string            `json:"latency_duration"`
	PPS        int               `json:"udp_pps"`
	LatencyCPU int               `json:"latency_cpu"`
	Setup      map[string]string `json:"setup"` // per datapath: client -> server
	Notes      []string          `json:"notes"`
	Samples    []Sample          `json:"samples"`
}

// Run brings up the labs, measures every profile round by round, writes
// the results into o.OutDir and returns them. Whatever happens, and on
// ctx's end, every lab is removed before it returns.
func Run(ctx context.Context, o Options) (res *Result, err error) {
	if err := o.setDefaults(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(o.OutDir, 0o755); err != nil {
		return nil, fmt.Errorf("output dir: %w", err)
	}
	progress := o.progressSince(time.Now())
	res = &Result{
		Header: startHeader(ctx, o.Rounds), Profiles: o.Profiles,
		Datapaths: o.Datapaths, Services: o.Services, Duration: o.Duration.String(),
		LatencyDur: o.LatencyDuration.String(), PPS: o.PPS, LatencyCPU: runtime.NumCPU() - 1,
		Setup: map[string]string{},
	}

	progress("removing leftovers of earlier runs (prefix %s*)", o.Prefix)
	if err := o.removeLeftovers(ctx); err != nil {
		return nil, err
	}
	tb := newTestbed()
	defer func() {
		progress("removing the labs")
		if cerr := tb.close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}()
	if err := setUp(ctx, &o, tb, progress); err != nil {
		return nil, err
	}
	for _, p := range tb.paths {
		res.Setup[p.Datapath] = fmt.Sprintf("%s -> %s (%s)", p.Client, p.Server, p.ServerIP)
	}
	if slices.Contains(o.Datapaths, DatapathVXLAN) {
		res.Notes = append(res.Notes, fmt.Sprintf("vxlan: lab %s%s has no agent; %s (VNI %d, dstport %d, MTU %d, nolearning) with on-link routes, permanent neighbour and FDB entries as flanneld's vxlan backend programs them; pods' MTU %d",
			o.Prefix, vxlanLab.suffix, vxlanDev, vxlanVNI, vxlanPort, vxlanMTU, vxlanMTU))
	}

	res.Notes = append(res.Notes, ipv6Notes(o.Datapaths, o.Profiles)...)
	total := 0
	for _, profile := range o.Profiles {
		total += o.Rounds * len(pathsOf(tb.paths, profile))
	}
	step := 0
	for _, profile := range o.Profiles {
		if err := runProfile(ctx, &o, tb, res, profile, progress, &step, total); err != nil {
			return res, err
		}
	}
	res.finish()
	if err := ctx.Err(); err != nil {
		return res, err
	}
	return res, nil
}

// runProfile measures every path of one profile, o.Rounds times round by
// round, adding the samples and the profile's notes to res; step counts
// the measurements done, of total, for the progress lines.
func runProfile(ctx context.Context, o *Options, tb *testbed, res *Result, profile string, progress func(string, ...any), step *int, total int) error {
	if profile == ProfileKube {
		progress("profile kube: loading %d services of kube-proxy rules into every node", o.Services)
		notes, err := applyKube(ctx, tb.states(), o.Services)
		if err != nil {
			return err
		}
		res.Notes = append(res.Notes, notes...)
		if err := restartWithIPMasq(ctx, tb, progress); err != nil {
			return err
		}
	}
	for _, st := range tb.states() {
		res.Notes = append(res.Notes, fmt.Sprintf("%s: bridge-nf-call-iptables=%s in %s", profile,
			readBridgeNF(st, st.Nodes[0].Name), st.Nodes[0].Name))
	}
	for round := 1; round <= o.Rounds; round++ {
		for _, p := range pathsOf(tb.paths, profile) {
			*step++
			if err := ctx.Err(); err != nil {
				return err
			}
			samples := measure(ctx, o, p, profile, round)
			res.Samples = append(res.Samples, samples...)
			progress("%d/%d %s round %d/%d %-6s %s", *step, total, profile, round, o.Rounds, p.Datapath, brief(samples))
		}
	}
	if profile == ProfileKube {
		res.Notes = append(res.Notes, kubeAfterNotes(ctx, tb)...)
	}
	return nil
}

// kubeAfterNotes say, for every lab's second node after the kube rounds,
// how many conntrack entries it holds and how many packets walked its nat
// table.
func kubeAfterNotes(ctx context.Context, tb *testbed) []string {
	var notes []string
	for _, st := range tb.states() {
		n := st.Nodes[1].Name
		if out, err := st.Output(ctx, n, "iptables", "-t", "nat", "-S", "FLANNEL-POSTRTG"); err == nil {
			notes = append(notes, fmt.Sprintf("kube: %d masquerade rules (FLANNEL-POSTRTG) in %s (datapath %s) after the rounds",
				strings.Count(out, "-A FLANNEL-POSTRTG"), n, st.Datapath))
		}
		notes = append(notes, fmt.Sprintf("kube: %d conntrack entries in %s (datapath %s) after the rounds",
			conntrackCount(st, n), n, st.Datapath))
		if pkts, err := natPrerouting(ctx, st, n); err == nil {
			notes = append(notes, fmt.Sprintf("kube: %d packets walked the nat table (PREROUTING -> KUBE-SERVICES) in %s (datapath %s)",
				pkts, n, st.Datapath))
		}
	}
	return notes
}

// pathsOf is the paths measured in a profile: the kube profile's rules
// are kube-proxy's and flanneld's iptables (IPv4) rules, which IPv6
// packets never meet, so its IPv6 rows would be the bare profile's under
// another name; they are left out.
func pathsOf(paths []path, profile string) []path {
	if profile != ProfileKube {
		return paths
	}
	var out []path
	for _, p := range paths {
		if _, v6 := family(p.Datapath); !v6 {
			out = append(out, p)
		}
	}
	return out
}

// ipv6Notes say how the IPv6 rows are measured and read, when there are.
func ipv6Notes(datapaths, profiles []string) []string {
	var v6 []string
	for _, dp := range datapaths {
		if _, ok := family(dp); ok {
			v6 = append(v6, dp)
		}
	}
	if len(v6) == 0 {
		return nil
	}
	notes := []string{fmt.Sprintf("IPv6 rows (%s): over IPv6 in the same labs, made dual-stack; their x host and x routes are to host6 and routes6; "+
		"their RTTs by the bench's own ping-pong (64-byte messages, one blocking send and receive per side, both threads on one CPU, 400 ms warm-up: "+
		"sockperf's method; Debian 12's sockperf 3.7 has no IPv6)", strings.Join(v6, ", "))}
	if slices.Contains(profiles, ProfileKube) {
		notes = append(notes, "kube: no IPv6 rows (the profile's rules are iptables rules for IPv4, which IPv6 packets never meet)")
	}
	return notes
}

// states are the labs' states in prefix order (stable notes).
func (tb *testbed) states() []lab.State {
	var out []lab.State
	for _, prefix := range slices.Sorted(maps.Keys(tb.labs)) {
		out = append(out, tb.labs[prefix].State())
	}
	return out
}

// measure takes one sample of every figure on one path.
func measure(ctx context.Context, o *Options, p path, profile string, round int) []Sample {
	var out []Sample
	add := func(f Figure, v float64, err error) *Sample {
		s := Sample{Profile: profile, Round: round, Datapath: p.Datapath, Figure: f.Key, Value: Float(v), Unit: f.Unit, At: time.Now()}
		if err != nil {
			s.Value, s.Error = Float(math.NaN()), err.Error()
			o.Log.Warn("sample failed", "datapath", p.Datapath, "figure", f.Key, "err", err)
		}
		out = append(out, s)
		return &out[len(out)-1]
	}
	gbps, err := tcpThroughput(ctx, p, o.Duration)
	add(FigTCPThroughput, gbps, err)
	cpu := runtime.NumCPU() - 1
	for _, proto := range []string{"tcp", "udp"} {
		lat, err := latency(ctx, p, proto, o.LatencyDuration, cpu)
		f50, f99 := FigTCPRTT50, FigTCPRTT99
		if proto == "udp" {
			f50, f99 = FigUDPRTT50, FigUDPRTT99
		}
		add(f50, lat.P50, err)
		add(f99, lat.P99, err)
	}
	rate, err := connRate(ctx, p, o.LatencyDuration)
	add(FigConnRate, rate, err)
	var progs *progSampler
	if hasPrograms(p.Datapath) {
		progs = startProgSampler(p)
	}
	ns, busy, delivered, err := cpuPerPacket(ctx, p, o.Duration, udpLoad{PPS: o.PPS, Payload: 64})
	if err == nil && delivered < 0.99 {
		err = fmt.Errorf("only %.1f%% of the offered %d pps delivered: the load is above this path's limit", delivered*100, o.PPS)
	}
	s := add(FigCPUPerPacket, ns, err)
	s.Delivered, s.BusyNs = delivered, busy
	if progs != nil {
		fromPods, fromUnderlay, err := progs.stop()
		add(FigFromPodsNs, fromPods, err)
		add(FigFromUnderlayNs, fromUnderlay, err)
	}
	return out
}

// briefFormats are the figures the progress line shows, and how.
var briefFormats = map[string]string{
	FigTCPThroughput.Key:  "tcp %.2f Gbit/s",
	FigTCPRTT50.Key:       "tcp rtt %.1fµs",
	FigUDPRTT50.Key:       "udp rtt %.1fµs",
	FigConnRate.Key:       "%.0f conn/s",
	FigCPUPerPacket.Key:   "%.0f ns/pkt",
	FigFromPodsNs.Key:     "from_pods %.0f ns",
	FigFromUnderlayNs.Key: "from_underlay %.0f ns",
}

// brief is the progress line's summary of one path's samples.
func brief(samples []Sample) string {
	var parts []string
	for _, s := range samples {
		if s.Error != "" {
			parts = append(parts, s.Figure+"=ERR")
			continue
		}
		if format, ok := briefFormats[s.Figure]; ok {
			parts = append(parts, fmt.Sprintf(format, s.Value))
		}
	}
	return strings.Join(parts, "  ")
}

// restartWithIPMasq restarts the agents of the labs that run one with
// --ip-masq, as kube-flannel's manifest runs flanneld: an agent without it
// would take the masquerade rules the kube profile loaded out again. The
// bare profile's agents run without it (no nat table at all there).
func restartWithIPMasq(ctx context.Context, tb *testbed, progress func(string, ...any)) error {
	for prefix, l := range tb.labs {
		if l.State().Datapath == lab.DatapathStatic {
			continue
		}
		progress("lab %s: agents restarted with --ip-masq", prefix)
		if err := l.RestartAgents(ctx, func(c *lab.Config) { c.IPMasq = true }, time.Minute); err != nil {
			return fmt.Errorf("lab %s: %w", prefix, err)
		}
	}
	return nil
}
