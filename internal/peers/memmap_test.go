package peers_test

import (
	"fmt"
	"net/netip"
	"strings"
	"sync"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
)

// memMap is an in-memory routes map that records every write, can fail
// the Put of one subnet, and calls afterWrite after each successful write
// (to check invariants at every step, not only at the end).
type memMap struct {
	mu         sync.Mutex
	entries    map[netip.Prefix]datapath.Route
	ops        []string
	failPut    netip.Prefix
	failList   bool
	lists      int
	afterWrite func(op string)
	// beforeBatch, if set, is called by batchMap.PutBatch before writing;
	// onList by List.
	beforeBatch func(rts []datapath.Route)
	onList      func()
}

func newMemMap() *memMap { return &memMap{entries: map[netip.Prefix]datapath.Route{}} }

func (m *memMap) List() ([]datapath.Route, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.lists++
	if m.failList {
		return nil, fmt.Errorf("list: injected failure")
	}
	if m.onList != nil {
		m.mu.Unlock()
		m.onList()
		m.mu.Lock()
	}
	out := make([]datapath.Route, 0, len(m.entries))
	for _, r := range m.entries {
		out = append(out, r)
	}
	return out, nil
}

func (m *memMap) Put(r datapath.Route) error {
	op := "put " + r.Subnet.String()
	m.mu.Lock()
	m.ops = append(m.ops, op)
	if r.Subnet == m.failPut {
		m.mu.Unlock()
		return fmt.Errorf("put %s: injected failure", r.Subnet)
	}
	r.Subnet = r.Subnet.Masked() // as the LPM key holds it
	m.entries[r.Subnet] = r
	hook := m.afterWrite
	m.mu.Unlock()
	if hook != nil {
		hook(op)
	}
	return nil
}

func (m *memMap) Delete(p netip.Prefix) error {
	op := "delete " + p.String()
	m.mu.Lock()
	m.ops = append(m.ops, op)
	delete(m.entries, p.Masked())
	hook := m.afterWrite
	m.mu.Unlock()
	if hook != nil {
		hook(op)
	}
	return nil
}

// set writes an entry directly, as drift from outside (not recorded);
// the addresses are in the IPv4 plan (env.tr gives the IPv6 one).
func (m *memMap) set(subnet, via string, ifindex int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p := netip.MustParsePrefix(subnet)
	m.entries[p] = datapath.Route{Subnet: p, NextHop: netip.MustParseAddr(via), Ifindex: uint32(ifindex)}
}

func (m *memMap) snapshot() map[netip.Prefix]datapath.Route {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[netip.Prefix]datapath.Route, len(m.entries))
	for k, v := range m.entries {
		out[k] = v
	}
	return out
}

// take returns the writes recorded since the last take.
func (m *memMap) take() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	ops := m.ops
	m.ops = nil
	return ops
}

func count(ops []string, verb string) int {
	n := 0
	for _, op := range ops {
		if strings.HasPrefix(op, verb+" ") {
			n++
		}
	}
	return n
}

// listed is how many times the map was listed.
func (m *memMap) listed() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.lists
}

// batchMap is a memMap that also writes in batches, as the kernel's map
// does: writes in order, stops at the first failure.
type batchMap struct{ *memMap }

func (b batchMap) PutBatch(rts []datapath.Route) (int, error) {
	b.mu.Lock()
	hook := b.beforeBatch
	b.ops = append(b.ops, fmt.Sprintf("batch %d", len(rts)))
	b.mu.Unlock()
	if hook != nil {
		hook(rts)
	}
	for i, r := range rts {
		if err := b.Put(r); err != nil {
			return i, err
		}
	}
	return len(rts), nil
}
