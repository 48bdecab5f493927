package lab

import (
	"fmt"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
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
