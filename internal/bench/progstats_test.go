package bench

import (
	"context"
	"math"
	"testing"
	"time"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
	"github.com/hgw-ebpf/hgw-ebpf/internal/lab"
	"github.com/hgw-ebpf/hgw-ebpf/internal/lab/labtest"
)

func TestNsPerRun(t *testing.T) {
	a := ProgRun{Runtime: 1000 * time.Nanosecond, Runs: 10}
	b := ProgRun{Runtime: 4000 * time.Nanosecond, Runs: 40}
	if ns, ok := NsPerRun(a, b); !ok || ns != 100 {
		t.Errorf("NsPerRun = %v, %v; want 100, true", ns, ok)
	}
	if _, ok := NsPerRun(b, b); ok {
		t.Error("no run in between must not give a figure")
	}
	_, _, err := progTimes(map[datapath.Program]ProgRun{datapath.FromPods: a}, map[datapath.Program]ProgRun{datapath.FromPods: b})
	if err == nil {
		t.Error("from_underlay did not run, yet no error")
	}
}

// Figures a datapath does not have get no row (host has no program time).
func TestRowsLeaveOutMissingFigures(t *testing.T) {
	r := &Result{Header: Header{Rounds: 1}, Profiles: []string{ProfileBare}, Datapaths: []string{DatapathHost, DatapathEBPF}}
	r.Samples = []Sample{
		{Profile: ProfileBare, Datapath: DatapathHost, Figure: FigCPUPerPacket.Key, Value: 10},
		{Profile: ProfileBare, Datapath: DatapathEBPF, Figure: FigCPUPerPacket.Key, Value: 12},
		{Profile: ProfileBare, Datapath: DatapathEBPF, Figure: FigFromPodsNs.Key, Value: 80},
	}
	var prog []Row
	for _, row := range r.Rows() {
		if row.Figure == FigFromPodsNs {
			prog = append(prog, row)
		}
	}
	if len(prog) != 1 || prog[0].Datapath != DatapathEBPF || prog[0].Median != 80 || !math.IsNaN(prog[0].VsHost) {
		t.Errorf("program time rows %+v: want one ebpf row, median 80, no host ratio", prog)
	}
	if dps := r.datapathsWith(FigFromPodsNs.Key); len(dps) != 1 || dps[0] != DatapathEBPF {
		t.Errorf("chart datapaths %v, want [ebpf]", dps)
	}
}

// The sampler reads the run time of the programs attached in a real ebpf
// lab while pods talk across nodes.
func TestProgSamplerMeasuresLabPrograms(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st := testLab(t, false)
	n1, n2 := st.Nodes[0], st.Nodes[1]
	client, server := st.PodsOf(n1.Name)[0], st.PodsOf(n2.Name)[0]
	p := path{Datapath: DatapathEBPF, St: st, Client: client.Name, Server: server.Name, ServerIP: server.IP,
		Nodes: []string{n1.Name, n2.Name}}

	s := startProgSampler(p)
	if out, err := st.Output(ctx, client.Name, "ping", "-n", "-c", "20", "-i", "0.01", "-W", "1", server.IP); err != nil {
		t.Fatalf("ping: %v\n%s", err, out)
	}
	fromPods, fromUnderlay, err := s.stop()
	if err != nil {
		t.Fatal(err)
	}
	// A run of either program is some tens to some thousands of ns.
	for name, ns := range map[string]float64{"from_pods": fromPods, "from_underlay": fromUnderlay} {
		if !(ns > 0 && ns < 1e6) {
			t.Errorf("%s: %v ns per run", name, ns)
		}
	}
}

// testLab is an ebpf lab of 2 nodes with a pod each (dual-stack if asked),
// removed when the test ends.
func testLab(t *testing.T, dualStack bool) lab.State {
	t.Helper()
	return labtest.Start(t, lab.Config{Nodes: 2, PodsPerNode: 1, Datapath: lab.DatapathEBPF, DualStack: dualStack}).State()
}
