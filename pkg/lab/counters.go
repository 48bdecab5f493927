package lab

import (
	"fmt"

	"github.com/hgw-ebpf/hgw-ebpf/pkg/datapath"
)

// Counters reads a node's fast-path counters from its pinned stats map
// (summed over CPUs). Maps are not tied to a namespace, so no namespace
// switch is needed.
func (n Node) Counters() ([]datapath.Counter, error) {
	maps, err := datapath.OpenPinned(n.PinRoot)
	if err != nil {
		return nil, fmt.Errorf("counters of %s: %w", n.Name, err)
	}
	defer maps.Close()
	return maps.Stats()
}

// Redirected sums the packets a program redirected: to a next hop or the
// bridge (reason "redirect") or straight into a known pod ("redirect_peer").
func Redirected(counters []datapath.Counter, program string) uint64 {
	var sum uint64
	for _, c := range counters {
		if c.Program == program && (c.Reason == "redirect" || c.Reason == "redirect_peer") {
			sum += c.Packets
		}
	}
	return sum
}

// OfFamily keeps the counters of one family: ipv4, ipv6 or other (not IP).
func OfFamily(counters []datapath.Counter, family string) []datapath.Counter {
	var out []datapath.Counter
	for _, c := range counters {
		if c.Family == family {
			out = append(out, c)
		}
	}
	return out
}
