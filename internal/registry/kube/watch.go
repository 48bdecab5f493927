package kube

import (
	"context"

	"github.com/hgw-ebpf/hgw-ebpf/internal/registry"
)

// Watch calls fn with the table of every node's lease once the Node
// informer has listed them (a Full change), and again after every change
// of a lease (a Node added, deleted, or its podCIDR or annotations
// changed) with the keys that changed; changes that arrive while fn runs
// are taken together. The informer waits while fn reads the table. While
// the API server is unreachable the informer keeps what it had and
// retries (hooks.Relist counts its fresh lists), and fn is not called.
// hooks.Event counts lease changes. Returns nil when ctx is done.
func (m *Manager) Watch(ctx context.Context, fn func(registry.Change), hooks registry.WatchHooks) error {
	if err := m.run(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	m.mu.Lock()
	m.hooks = hooks
	m.mu.Unlock()
	select { // the initial list's wake-up: the first change has it
	case <-m.leaseCh:
	default:
	}
	for full := true; ; full = false {
		m.mu.Lock()
		c := registry.Change{Full: full, Leases: m.table}
		if !full {
			for k := range m.changed {
				c.Keys = append(c.Keys, k)
			}
		}
		clear(m.changed)
		if c.Full || len(c.Keys) > 0 {
			fn(c)
		}
		m.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil
		case <-m.leaseCh:
		}
	}
}
