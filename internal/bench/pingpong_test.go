package bench

import (
	"context"
	"runtime"
	"testing"
	"time"
)

// The ping-pong of the IPv6 rows measures TCP and UDP round trips between
// pods of a dual-stack lab in both families; over IPv4 sockperf's figure
// for the same path is logged beside it (a timing is no assertion).
func TestPingPong(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st := testLab(t, true)
	client, server := st.PodsOf(st.Nodes[0].Name)[0], st.PodsOf(st.Nodes[1].Name)[0]
	cpu := runtime.NumCPU() - 1
	for _, dp := range []string{DatapathEBPF, DatapathEBPF6} {
		_, v6 := family(dp)
		p := path{Datapath: dp, St: st, Client: client.Name, Server: server.Name, ServerIP: pick(v6, server.IP, server.IP6)}
		for _, proto := range []string{"tcp", "udp"} {
			lat, err := pingPong(ctx, p, proto, time.Second, cpu)
			if err != nil {
				t.Fatalf("%s %s: %v", dp, proto, err)
			}
			if !(lat.P50 > 0 && lat.P99 >= lat.P50 && lat.P99 < 1e6) {
				t.Errorf("%s %s: p50 %v µs, p99 %v µs", dp, proto, lat.P50, lat.P99)
			}
			msg := ""
			if !v6 {
				if s, err := latency(ctx, p, proto, time.Second, cpu); err == nil {
					msg = ", sockperf's p50 " + num(s.P50)
				}
			}
			t.Logf("%s %s: p50 %.2f µs, p99 %.2f µs%s", dp, proto, lat.P50, lat.P99, msg)
		}
	}
}
