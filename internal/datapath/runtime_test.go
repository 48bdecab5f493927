package datapath_test

import (
	"fmt"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
)

// BenchmarkProgramRunTime measures what each forwarding decision costs in
// the kernel, per run of the program alone (the kernel's BPF run-time
// statistics, as `hgw-lab bench` reads them from live traffic; the syscall
// and skb set-up of BPF_PROG_TEST_RUN are not counted), with the conntrack
// check on and off — the price of the bpf_skb_ct_lookup:
//
//	go test -run '^$' -bench ProgramRunTime ./internal/datapath
//
// The packet is run once per call: repeated runs on one skb would see the
// TTL the previous run decremented and soon leave by another path.
func BenchmarkProgramRunTime(b *testing.B) {
	stats, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
	if err != nil {
		b.Fatalf("enable BPF run-time statistics: %v", err)
	}
	defer stats.Close()
	for _, ct := range []bool{true, false} {
		e := newRunEnv(b, true)
		cfg := e.cfg
		cfg.Conntrack, cfg.IgnoreConntrack = ct, !ct
		if err := e.dp.SetConfig(cfg); err != nil {
			b.Fatal(err)
		}
		ep := e.addEndpoint(b, "vethpod1", localPod, macPod)
		atVeth := udpFrame(localPod, peerPod)
		copy(atVeth[0:6], macGateway[:])
		for _, c := range []struct {
			name string
			prog datapath.Program
			data []byte
			ctx  any
		}{
			{"from_pods@veth/redirect_neigh", datapath.FromPods, atVeth, &skbContext{Ifindex: ep.Ifindex}},
			{"from_pods@cni0/redirect_neigh", datapath.FromPods, udpFrame(localPod, peerPod), &skbContext{Ifindex: uint32(e.cni0)}},
			{"from_underlay/redirect_peer", datapath.FromUnderlay, udpFrame(peerPod, localPod), &skbContext{Ifindex: uint32(e.eth0)}},
		} {
			b.Run(fmt.Sprintf("%s/conntrack=%v", c.name, ct), func(b *testing.B) {
				prog, err := e.dp.Program(c.prog)
				if err != nil {
					b.Fatal(err)
				}
				before, err := prog.Stats()
				if err != nil {
					b.Fatal(err)
				}
				e.ns.do(b, func() {
					for b.Loop() {
						verdict, err := prog.Run(&ebpf.RunOptions{Data: c.data, Context: c.ctx})
						if err != nil || verdict != tcActRedirect {
							b.Fatalf("%s: verdict %d, %v; want a redirect", c.name, verdict, err)
						}
					}
				})
				after, err := prog.Stats()
				if err != nil {
					b.Fatal(err)
				}
				if runs := after.RunCount - before.RunCount; runs > 0 {
					b.ReportMetric(float64(after.Runtime-before.Runtime)/float64(runs), "ns/run")
				}
			})
		}
	}
}
