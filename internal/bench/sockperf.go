package bench

import (
	"fmt"
	"regexp"
	"strconv"
)

// Latency is one sockperf ping-pong result: full round-trip times in µs.
type Latency struct {
	P50 float64
	P99 float64
}

var (
	ansiRE       = regexp.MustCompile("\x1b\\[[0-9;]*m")
	percentileRE = regexp.MustCompile(`percentile\s+([0-9.]+)\s*=\s*([0-9.]+)`)
)

// ParseSockperf reads the p50 and p99 lines of a sockperf ping-pong
// report ("---> percentile 50.000 =   16.691"), ignoring its colour codes.
func ParseSockperf(out string) (Latency, error) {
	clean := ansiRE.ReplaceAllString(out, "")
	var lat Latency
	var have50, have99 bool
	for _, m := range percentileRE.FindAllStringSubmatch(clean, -1) {
		v, err := strconv.ParseFloat(m[2], 64)
		if err != nil {
			return Latency{}, fmt.Errorf("sockperf percentile %s: %w", m[1], err)
		}
		switch m[1] {
		case "50.000":
			lat.P50, have50 = v, true
		case "99.000":
			lat.P99, have99 = v, true
		}
	}
	if !have50 || !have99 {
		return Latency{}, fmt.Errorf("sockperf output has no p50/p99 lines")
	}
	return lat, nil
}
