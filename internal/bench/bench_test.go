package bench

import (
	"bytes"
	"encoding/json"
	"math"
	"strings"
	"testing"
	"time"
)

func TestSummarize(t *testing.T) {
	nan := math.NaN()
	cases := []struct {
		in            []float64
		n             int
		med, min, max float64
	}{
		{[]float64{3, 1, 2}, 3, 2, 1, 3},
		{[]float64{4, 1, 3, 2}, 4, 2.5, 1, 4},
		{[]float64{5, nan, 1}, 2, 3, 1, 5}, // a failed sample is left out
		{[]float64{7}, 1, 7, 7, 7},
	}
	for _, c := range cases {
		s := Summarize(c.in)
		if s.N != c.n || s.Median != c.med || s.Min != c.min || s.Max != c.max {
			t.Errorf("Summarize(%v) = %+v, want n=%d median=%v min=%v max=%v", c.in, s, c.n, c.med, c.min, c.max)
		}
	}
	if s := Summarize([]float64{nan}); s.N != 0 || !math.IsNaN(s.Median) {
		t.Errorf("Summarize(NaN) = %+v, want N=0 and NaN median", s)
	}
}

func TestRatio(t *testing.T) {
	if r := Ratio(3, 2); r != 1.5 {
		t.Errorf("Ratio(3, 2) = %v", r)
	}
	for _, c := range [][2]float64{{1, 0}, {math.NaN(), 1}, {1, math.NaN()}} {
		if r := Ratio(c[0], c[1]); !math.IsNaN(r) {
			t.Errorf("Ratio(%v, %v) = %v, want NaN", c[0], c[1], r)
		}
	}
}

// A sockperf 3.7 ping-pong report, colour codes included.
const sockperfOut = "sockperf: \x1b[2;35m== version #3.7-no.git == \x1b[0m\n" +
	"sockperf: [Total Run] RunTime=1.001 sec; Warm up time=400 msec; SentMessages=55229; ReceivedMessages=55228\n" +
	"sockperf: \x1b[2;35m====> avg-rtt=18.224 (std-dev=11.475)\x1b[0m\n" +
	"sockperf: ---> <MAX> observation = 1210.366\n" +
	"sockperf: ---> percentile 99.999 = 1210.366\n" +
	"sockperf: ---> percentile 99.990 =  370.142\n" +
	"sockperf: ---> percentile 99.900 =  100.701\n" +
	"sockperf: ---> percentile 99.000 =   58.200\n" +
	"sockperf: ---> percentile 90.000 =   18.234\n" +
	"sockperf: ---> percentile 50.000 =   16.691\n" +
	"sockperf: ---> <MIN> observation =   15.689\n"

func TestParseSockperf(t *testing.T) {
	lat, err := ParseSockperf(sockperfOut)
	if err != nil {
		t.Fatal(err)
	}
	if lat.P50 != 16.691 || lat.P99 != 58.2 {
		t.Errorf("got p50=%v p99=%v, want 16.691 and 58.2", lat.P50, lat.P99)
	}
	if _, err := ParseSockperf("sockperf: ERROR: connection refused\n"); err == nil {
		t.Error("a report without percentiles parsed")
	}
	noP99 := strings.ReplaceAll(sockperfOut, "percentile 99.000", "percentile 98.000")
	if _, err := ParseSockperf(noP99); err == nil {
		t.Error("a report without p99 parsed")
	}
}

func TestParseIperf3(t *testing.T) {
	tcp := `{"start":{},"end":{"sum_sent":{"seconds":3.0,"bytes":4500000000,"bits_per_second":1.2e10},
	  "sum_received":{"seconds":3.0,"bytes":4499000000,"bits_per_second":11997333333.3}}}`
	s, err := ParseIperf3([]byte(tcp))
	if err != nil {
		t.Fatal(err)
	}
	if s.BitsPerSecond != 11997333333.3 || s.Seconds != 3 {
		t.Errorf("TCP: got %+v", s)
	}
	udp := `{"end":{"sum":{"packets":49992},"sum_sent":{"seconds":1.0,"packets":50000,"bits_per_second":25600000},
	  "sum_received":{"seconds":1.0,"packets":50000,"lost_packets":8,"bits_per_second":25590000}}}`
	s, err = ParseIperf3([]byte(udp))
	if err != nil {
		t.Fatal(err)
	}
	if s.Sent != 50000 || s.Delivered != 49992 {
		t.Errorf("UDP: sent %d delivered %d, want 50000 and 49992", s.Sent, s.Delivered)
	}
	if _, err := ParseIperf3([]byte(`{"error":"unable to connect to server: Connection refused"}`)); err == nil ||
		!strings.Contains(err.Error(), "Connection refused") {
		t.Errorf("iperf3's own error not reported: %v", err)
	}
	if _, err := ParseIperf3([]byte(`{"end":{}}`)); err == nil {
		t.Error("a report without a receiver summary parsed")
	}
	if _, err := ParseIperf3([]byte(`iperf3: error`)); err == nil {
		t.Error("text parsed as JSON")
	}
}

func TestCPUPerPacket(t *testing.T) {
	before, err := ParseProcStat("cpu  100 5 50 1000 10 1 4 0 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n")
	if err != nil {
		t.Fatal(err)
	}
	if before.Kernel != 55 || before.Busy != 160 || before.All != 1170 {
		t.Errorf("kernel %d busy %d all %d, want 55, 160 and 1170", before.Kernel, before.Busy, before.All)
	}
	after, err := ParseProcStat("cpu  150 5 70 1400 10 1 14 0 0 0\n")
	if err != nil {
		t.Fatal(err)
	}
	// Kernel: 20 system + 10 softirq jiffies of 10 ms = 0.3 s over 100000
	// packets = 3000 ns each; busy adds 50 user jiffies: 8000 ns.
	kernel, busy, err := PerPacket(before, after, 100000)
	if err != nil || kernel != 3000 || busy != 8000 {
		t.Errorf("PerPacket = %v, %v, %v; want 3000, 8000", kernel, busy, err)
	}
	if _, _, err := PerPacket(before, after, 0); err == nil {
		t.Error("zero packets gave a figure")
	}
	if _, err := ParseProcStat("intr 1 2 3\n"); err == nil {
		t.Error("no cpu line parsed")
	}
}

func TestParseChainPackets(t *testing.T) {
	listing := `Chain PREROUTING (policy ACCEPT 12 packets, 720 bytes)
    pkts      bytes target     prot opt in     out     source               destination
  150012  9600768 KUBE-SERVICES  0    --  *      *       0.0.0.0/0            0.0.0.0/0            /* kubernetes service portals */
       3      180 FLANNEL-X  0    --  *      *       0.0.0.0/0            0.0.0.0/0
`
	n, err := ParseChainPackets(listing)
	if err != nil || n != 150015 {
		t.Errorf("ParseChainPackets = %d, %v; want 150015", n, err)
	}
	if _, err := ParseChainPackets("Chain PREROUTING (policy ACCEPT)\n    pkts bytes target\n"); err == nil {
		t.Error("an empty chain gave a count")
	}
}

func TestRowsRatiosAndJSON(t *testing.T) {
	r := &Result{Header: Header{Rounds: 2}, Profiles: []string{ProfileBare}, Datapaths: []string{DatapathHost, DatapathRoutes, DatapathEBPF}}
	add := func(dp string, v float64, errMsg string) {
		r.Samples = append(r.Samples, Sample{Profile: ProfileBare, Datapath: dp, Figure: FigTCPThroughput.Key,
			Value: Float(v), Error: errMsg, At: time.Unix(0, 0)})
	}
	add(DatapathHost, 10, "")
	add(DatapathHost, 12, "")
	add(DatapathRoutes, 5, "")
	add(DatapathRoutes, math.NaN(), "iperf3: timed out")
	add(DatapathEBPF, 9, "")
	add(DatapathEBPF, 11, "")
	var got []Row
	for _, row := range r.Rows() {
		if row.Figure == FigTCPThroughput {
			got = append(got, row)
		}
	}
	if len(got) != 3 {
		t.Fatalf("%d throughput rows, want 3", len(got))
	}
	ebpf := got[2]
	if ebpf.Datapath != DatapathEBPF || ebpf.Median != 10 || ebpf.VsHost != 10.0/11 || ebpf.VsRoutes != 2 {
		t.Errorf("ebpf row %+v: want median 10, x host 10/11, x routes 2", ebpf)
	}
	if routes := got[1]; routes.N != 1 || routes.Errors != 1 {
		t.Errorf("routes row %+v: want 1 value and 1 error", routes)
	}
	var table bytes.Buffer
	if err := r.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(table.String(), "0.91x") || !strings.Contains(table.String(), "2.00x") {
		t.Errorf("table lacks the ratios:\n%s", table.String())
	}
	// A failed sample's NaN is null in JSON, and reads back as NaN.
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b, []byte(`"value":null`)) {
		t.Errorf("NaN sample not written as null: %s", b)
	}
	var back Result
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if v := back.Samples[3].Value; !math.IsNaN(float64(v)) {
		t.Errorf("null read back as %v", v)
	}
}

func TestOptionsDefaultsAndOrder(t *testing.T) {
	o := Options{Profiles: []string{ProfileKube, ProfileBare}, Datapaths: []string{DatapathEBPF, DatapathHost}}
	if err := o.setDefaults(); err != nil {
		t.Fatal(err)
	}
	if strings.Join(o.Profiles, ",") != "bare,kube" || strings.Join(o.Datapaths, ",") != "host,ebpf" {
		t.Errorf("order: profiles %v datapaths %v", o.Profiles, o.Datapaths)
	}
	if o.Rounds != 5 || o.Services != 1000 || o.Duration != 3*time.Second || o.PPS != 50000 {
		t.Errorf("defaults: %+v", o)
	}
	for _, bad := range []Options{
		{Datapaths: []string{"geneve"}},
		{Profiles: []string{"empty"}},
		{LabOptions: LabOptions{Prefix: "notours"}},
		{Rounds: -1},
	} {
		if err := bad.setDefaults(); err == nil {
			t.Errorf("options %+v accepted", bad)
		}
	}
}

// The progress line shows the figures it knows, in sample order, and
// names failed ones.
func TestBrief(t *testing.T) {
	got := brief([]Sample{
		{Figure: FigTCPThroughput.Key, Value: 9.5},
		{Figure: FigTCPRTT99.Key, Value: 80},
		{Figure: FigUDPRTT50.Key, Error: "timed out"},
		{Figure: FigFromPodsNs.Key, Value: 181.2},
	})
	if want := "tcp 9.50 Gbit/s  udp_rtt_p50=ERR  from_pods 181 ns"; got != want {
		t.Errorf("brief = %q, want %q", got, want)
	}
}

// The IPv6 rows are measured against IPv6's host and routes, in labs made
// dual-stack for them, on bare nodes only.
func TestIPv6Rows(t *testing.T) {
	dps := []string{DatapathHost, DatapathRoutes, DatapathEBPF, DatapathHost6, DatapathRoutes6, DatapathEBPF6}
	r := &Result{Header: Header{Rounds: 1}, Profiles: []string{ProfileBare}, Datapaths: dps}
	for i, dp := range dps {
		r.Samples = append(r.Samples, Sample{Profile: ProfileBare, Datapath: dp, Figure: FigTCPThroughput.Key, Value: Float(10 + i)})
	}
	rows := map[string]Row{}
	for _, row := range r.Rows() {
		if row.Figure == FigTCPThroughput {
			rows[row.Datapath] = row
		}
	}
	if ebpf6 := rows[DatapathEBPF6]; ebpf6.VsHost != 15.0/13 || ebpf6.VsRoutes != 15.0/14 {
		t.Errorf("ebpf6 row %+v: want x host6 15/13 and x routes6 15/14", ebpf6)
	}
	if ebpf := rows[DatapathEBPF]; ebpf.VsHost != 12.0/10 || ebpf.VsRoutes != 12.0/11 {
		t.Errorf("ebpf row %+v: want x host 12/10 and x routes 12/11", ebpf)
	}

	o := Options{Datapaths: []string{DatapathHost, DatapathEBPF, DatapathEBPF6}}
	if err := o.setDefaults(); err != nil {
		t.Fatal(err)
	}
	if !o.labConfig(ebpfLab).DualStack || o.labConfig(routesLab).DualStack {
		t.Error("want the ebpf lab dual-stack (ebpf6 is measured there) and the routes lab not (no IPv6 row there)")
	}
	paths := []path{{Datapath: DatapathEBPF}, {Datapath: DatapathEBPF6}}
	if got := pathsOf(paths, ProfileKube); len(got) != 1 || got[0].Datapath != DatapathEBPF {
		t.Errorf("kube profile paths %v: want ebpf only", got)
	}
	if got := pathsOf(paths, ProfileBare); len(got) != 2 {
		t.Errorf("bare profile paths %v: want both", got)
	}
	if notes := ipv6Notes(o.Datapaths, AllProfiles); len(notes) != 2 || !strings.Contains(notes[0], "host6") {
		t.Errorf("notes %q: want how IPv6 rows are read, and why the kube profile has none", notes)
	}
	if ipv6Notes([]string{DatapathHost}, AllProfiles) != nil {
		t.Error("notes about IPv6 rows without any")
	}
}
