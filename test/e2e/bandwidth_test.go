package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os/exec"
	"testing"
	"time"

	"github.com/hgw-ebpf/hgw-ebpf/pkg/lab"
)

// A pod's egress limit set by the CNI bandwidth plugin (a u32 filter on the
// pod's host-side veth hands its frames to a shaping ifb device) holds
// across nodes whatever our programs do on that veth: under tcx they step
// aside while the plugin's filter is there, under tc ours is the last
// filter. The limited pod's traffic still takes the fast path at cni0 once
// shaped. An unlimited pod on the same node shows what the path can carry.
func TestEgressLimitHolds(t *testing.T) {
	const limit = 10_000_000 // bit/s
	for _, mode := range []string{"tcx", "tc"} {
		for _, plain := range []bool{false, true} {
			name := mode + "/hgw-cni"
			if plain {
				name = mode + "/plain-bridge"
			}
			t.Run(name, func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				defer cancel()
				l := startLabConfig(t, lab.Config{Nodes: 2, Datapath: lab.DatapathEBPF, Bandwidth: true,
					PlainBridgeCNI: plain, AttachMode: mode})
				st := l.State()
				client, server := st.Nodes[0], st.Nodes[1]
				limited, err := l.AddPodWithEgressLimit(ctx, client.Name, limit)
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
				st = l.State() // with the pods
				iperf := exec.Command("iperf3", "-s", "-p", "5201")
				if err := st.Start(srv.Name, iperf); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { iperf.Process.Kill(); iperf.Wait() })
				time.Sleep(300 * time.Millisecond)

				before := counterOf(t, client, "from_pods", "redirect")
				slow := sendRate(t, ctx, st, limited, srv)
				fast := sendRate(t, ctx, st, unlimited, srv)
				t.Logf("egress limited to %d bit/s: %.0f bit/s; unlimited: %.0f bit/s (%.0fx)", limit, slow, fast, fast/slow)
				// Near the limit: without the shaping it is the unlimited
				// rate, hundreds of times more here.
				if slow > 2*limit || slow < limit/4 {
					t.Errorf("limited pod sent %.0f bit/s, want near %d", slow, limit)
				}
				if fast < 10*slow {
					t.Errorf("unlimited pod sent %.0f bit/s, want far more than the limited pod's %.0f", fast, slow)
				}
				// Both pods' traffic took the fast path, the limited pod's
				// at cni0 after the shaping.
				if d := counterOf(t, client, "from_pods", "redirect") - before; d < 100 {
					t.Errorf("from_pods redirect on %s moved by %d during the transfers, want >= 100", client.Name, d)
				}
				if mode == "tcx" && !plain {
					if n := counterOf(t, client, "from_pods", "tc_filters"); n < 100 {
						t.Errorf("from_pods tc_filters on %s = %d: the limited pod's veth program did not step aside", client.Name, n)
					}
				}
			})
		}
	}
}

// sendRate runs a 3-second iperf3 TCP transfer from pod from to the iperf3
// server in pod to and returns what the receiver got, in bit/s.
func sendRate(t *testing.T, ctx context.Context, st lab.State, from, to lab.Pod) float64 {
	t.Helper()
	var out bytes.Buffer
	cli := exec.CommandContext(ctx, "iperf3", "-c", to.IP, "-p", "5201", "-t", "3", "-J")
	cli.Stdout, cli.Stderr = &out, &out
	if err := st.Start(from.Name, cli); err != nil {
		t.Fatal(err)
	}
	if err := cli.Wait(); err != nil {
		t.Fatalf("iperf3 %s -> %s: %v\n%s", from.Name, to.Name, err, out.String())
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
		t.Fatalf("iperf3 %s -> %s: %v %s\n%s", from.Name, to.Name, err, res.Error, out.String())
	}
	if res.End.SumReceived.BitsPerSecond <= 0 {
		t.Fatalf("iperf3 %s -> %s received nothing", from.Name, to.Name)
	}
	return res.End.SumReceived.BitsPerSecond
}
