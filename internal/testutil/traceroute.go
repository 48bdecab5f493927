package testutil

import "strings"

// TracerouteHops reads the addresses of a `traceroute -n -q 1` run's hops,
// one per line after the header.
func TracerouteHops(out string) []string {
	var hs []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n")[1:] {
		if f := strings.Fields(line); len(f) >= 2 {
			hs = append(hs, f[1])
		}
	}
	return hs
}
