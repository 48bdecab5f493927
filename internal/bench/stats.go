package bench

import (
	"math"
	"slices"
)

// Summary is the spread of one figure's samples: the table reports the
// median (robust to one noisy round) and the whole range, not a mean.
type Summary struct {
	N      int     `json:"n"`
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
}

// Summarize computes the summary of samples; NaN samples (a failed
// measurement) are left out. An empty input gives N = 0 and NaN values.
func Summarize(samples []float64) Summary {
	v := sortedFinite(samples)
	if len(v) == 0 {
		return Summary{Median: math.NaN(), Min: math.NaN(), Max: math.NaN()}
	}
	n := len(v)
	med := v[n/2]
	if n%2 == 0 {
		med = (v[n/2-1] + v[n/2]) / 2
	}
	return Summary{N: n, Median: med, Min: v[0], Max: v[n-1]}
}

// sortedFinite is samples without the NaNs (failed measurements), sorted.
func sortedFinite(samples []float64) []float64 {
	var v []float64
	for _, s := range samples {
		if !math.IsNaN(s) {
			v = append(v, s)
		}
	}
	slices.Sort(v)
	return v
}

// Ratio is a / b, NaN when either is missing or b is zero.
func Ratio(a, b float64) float64 {
	if math.IsNaN(a) || math.IsNaN(b) || b == 0 {
		return math.NaN()
	}
	return a / b
}
