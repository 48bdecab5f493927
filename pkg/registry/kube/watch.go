package kube

import (
	"context"

	"github.com/hgw-ebpf/hgw-ebpf/pkg/registry"
)

// Watch calls fn with every node's lease once the Node informer has
// listed them, and again after every change of a lease (a Node added,
// deleted, or its podCIDR or annotations changed); changes that arrive
// while fn runs are taken together. While the API server is unreachable
// the informer keeps what it had and retries (hooks.Relist counts its
// fresh lists), and fn is not called. hooks.Event counts lease changes.
// Returns nil when ctx is done.
func (m *Manager) Watch(ctx context.Context, fn func(registry.Snapshot), hooks registry.WatchHooks) error {
	if err := m.run(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	m.mu.Lock()
	m.hooks = hooks
	m.mu.Unlock()
	select { // the initial list's wake-up: the first snapshot has it
	case <-m.leaseCh:
	default:
	}
	for {
		fn(m.snapshot())
		select {
		case <-ctx.Done():
			return nil
		case <-m.leaseCh:
		}
	}
}
