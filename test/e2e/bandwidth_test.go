package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os/exec"
	"testing"
	"time"

	"github.com/hgw-ebpf/hgw-ebpf/internal/lab"
)

// Bandwidth limits set by the CNI bandwidth plugin hold across nodes
// whatever our programs do, under tcx and tc, with hgw-cni chained and
// without, while an unlimited pod on the same node shows what the path can
// carry (hundreds of times more here):
//   - egress: a u32 filter on the pod's host-side veth hands its frames to a
//     shaping ifb device. Under tcx our veth program steps aside while that
//     filter is there; under tc ours is the last filter. The shaped traffic
//     still takes the fast path at cni0.
//   - ingress: a tbf root qdisc on the host-side veth. bpf_redirect_peer
//     would skip it, so from_underlay delivers such a pod's packets through
//     the bridge and the veth.
func TestBandwidthLimitsHold(t *testing.T) {
	const limit = 10_000_000 // bit/s
	for _, mode := range []string{"tcx", "tc"} {
		for _, plain := range []bool{false, true} {
			name := mode + "/hgw-cni"
			if plain {
				name = mode + "/plain-bridge"
			}
			t.Run(name, func(t *testing.T) {
				ctx := testContext(t, 2*time.Minute)
				l := startLabConfig(t, lab.Config{Nodes: 2, Datapath: lab.DatapathEBPF, Bandwidth: true,
					PlainBridgeCNI: plain, AttachMode: mode})
				client, server := l.State().Nodes[0], l.State().Nodes[1]
				egress, err := l.AddPodWithLimits(ctx, client.Name, lab.Limits{Egress: limit})
				if err != nil {
					t.Fatal(err)
				}
				ingress, err := l.AddPodWithLimits(ctx, client.Name, lab.Limits{Ingress: limit})
				if err != nil {
					t.Fatal(err)
				}
				unlimited, err := l.AddPod(ctx, client.Name)
				if err != nil {
					t.Fatal(err)
				}
				srv, err := l.AddPod(ctx, server.Name)
				if err != nil {
					t.Fatal(err)
				}
				st := l.State()
				// One one-off server per transfer: a server that has just
				// served one may still refuse the next ("busy").
				for _, port := range []string{"5201", "5202", "5203"} {
					iperf := exec.Command("iperf3", "-s", "-1", "-p", port)
					if err := st.Start(srv.Name, iperf); err != nil {
						t.Fatal(err)
					}
					t.Cleanup(func() { iperf.Process.Kill(); iperf.Wait() })
				}
				time.Sleep(300 * time.Millisecond)

				before := counterOf(t, client, "from_pods", "redirect")
				sent := transferRate(t, ctx, st, egress, srv, "5201", false)
				received := transferRate(t, ctx, st, ingress, srv, "5202", true)
				fast := transferRate(t, ctx, st, unlimited, srv, "5203", false)
				t.Logf("limit %d bit/s: egress-limited pod sent %.0f, ingress-limited pod received %.0f; unlimited pod sent %.0f bit/s",
					limit, sent, received, fast)
				// Near the limit: without the shaping each is the
				// unlimited rate.
				for what, rate := range map[string]float64{"egress-limited pod sent": sent, "ingress-limited pod received": received} {
					if rate > 2*limit || rate < limit/4 {
						t.Errorf("%s %.0f bit/s, want near %d", what, rate, limit)
					}
				}
				if fast < 10*sent {
					t.Errorf("unlimited pod sent %.0f bit/s, want far more than the limited pod's %.0f", fast, sent)
				}
				// The pods' traffic took the fast path, the egress-limited
				// pod's at cni0 once shaped.
				if d := counterOf(t, client, "from_pods", "redirect") - before; d < 100 {
					t.Errorf("from_pods redirect on %s moved by %d during the transfers, want >= 100", client.Name, d)
				}
				if mode == "tcx" && !plain {
					if n := counterOf(t, client, "from_pods", "tc_filters"); n < 100 {
						t.Errorf("from_pods tc_filters on %s = %d: the egress-limited pod's veth program did not step aside", client.Name, n)
					}
				}
			})
		}
	}
}

// transferRate runs a 3-second iperf3 TCP transfer between pod from and the
// iperf3 server on port in pod to, from -> to (or to -> from with reverse),
// and returns what the receiver got, in bit/s.
func transferRate(t *testing.T, ctx context.Context, st lab.State, from, to lab.Pod, port string, reverse bool) float64 {
	t.Helper()
	args := []string{"-c", to.IP, "-p", port, "-t", "3", "-J"}
	if reverse {
		args = append(args, "-R")
	}
	var out bytes.Buffer
	cli := exec.CommandContext(ctx, "iperf3", args...)
	cli.Stdout, cli.Stderr = &out, &out
	if err := st.Start(from.Name, cli); err != nil {
		t.Fatal(err)
	}
	if err := cli.Wait(); err != nil {
		t.Fatalf("iperf3 %v in %s: %v\n%s", args, from.Name, err, out.String())
	}
	var res struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal(out.Bytes(), &res); err != nil || res.Error != "" {
		t.Fatalf("iperf3 %v in %s: %v %s\n%s", args, from.Name, err, res.Error, out.String())
	}
	if res.End.SumReceived.BitsPerSecond <= 0 {
		t.Fatalf("iperf3 %v in %s: nothing received", args, from.Name)
	}
	return res.End.SumReceived.BitsPerSecond
}
