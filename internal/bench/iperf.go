package bench

import (
	"encoding/json"
	"fmt"
)

// iperfReport is the part of `iperf3 --json` the harness reads.
type iperfReport struct {
	Error string `json:"error"`
	End   struct {
		SumReceived struct {
			Seconds       float64 `json:"seconds"`
			Bytes         float64 `json:"bytes"`
			BitsPerSecond float64 `json:"bits_per_second"`
			Packets       int64   `json:"packets"`
			LostPackets   int64   `json:"lost_packets"`
		} `json:"sum_received"`
		SumSent struct {
			Packets int64 `json:"packets"`
		} `json:"sum_sent"`
	} `json:"end"`
}

// Stream is what one iperf3 run delivered, as the receiver counted it.
type Stream struct {
	BitsPerSecond float64
	Seconds       float64
	Sent          int64 // UDP datagrams the client sent
	Delivered     int64 // UDP datagrams the server received
}

// ParseIperf3 reads an `iperf3 --json` client report, TCP or UDP.
func ParseIperf3(b []byte) (Stream, error) {
	var r iperfReport
	if err := json.Unmarshal(b, &r); err != nil {
		return Stream{}, fmt.Errorf("parse iperf3 JSON: %w", err)
	}
	if r.Error != "" {
		return Stream{}, fmt.Errorf("iperf3: %s", r.Error)
	}
	s := r.End.SumReceived
	if s.Seconds <= 0 {
		return Stream{}, fmt.Errorf("iperf3 JSON has no receiver summary")
	}
	return Stream{
		BitsPerSecond: s.BitsPerSecond,
		Seconds:       s.Seconds,
		Sent:          r.End.SumSent.Packets,
		Delivered:     s.Packets - s.LostPackets,
	}, nil
}
