package bench

// Figure is one measured quantity.
type Figure struct {
	Key          string `json:"key"`
	Title        string `json:"title"`
	Unit         string `json:"unit"`
	HigherBetter bool   `json:"higher_better"`
}

// Figures in table order.
var (
	FigTCPThroughput = Figure{"tcp_throughput", "TCP throughput", "Gbit/s", true}
	FigTCPRTT50      = Figure{"tcp_rtt_p50", "TCP RTT p50", "µs", false}
	FigTCPRTT99      = Figure{"tcp_rtt_p99", "TCP RTT p99", "µs", false}
	FigUDPRTT50      = Figure{"udp_rtt_p50", "UDP RTT p50", "µs", false}
	FigUDPRTT99      = Figure{"udp_rtt_p99", "UDP RTT p99", "µs", false}
	FigConnRate      = Figure{"conn_rate", "TCP connections", "conn/s", true}
	FigCPUPerPacket  = Figure{"cpu_per_packet", "Kernel CPU per packet", "ns/pkt", false}

	// Run time of our programs per run during the fixed UDP load (BPF
	// run-time statistics): only the datapaths that run them have it.
	FigFromPodsNs     = Figure{"from_pods_ns", "from_pods time per run", "ns", false}
	FigFromUnderlayNs = Figure{"from_underlay_ns", "from_underlay time per run", "ns", false}

	AllFigures = []Figure{FigTCPThroughput, FigTCPRTT50, FigTCPRTT99, FigUDPRTT50, FigUDPRTT99, FigConnRate, FigCPUPerPacket,
		FigFromPodsNs, FigFromUnderlayNs}
)
