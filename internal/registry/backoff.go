package registry

import (
	"context"
	"time"
)

// Backoff doubles a wait up to a ceiling; Reset after success. The
// registries' loops, the agent's wait for etcd and the lab's agent
// restarts retry with it.
type Backoff struct {
	cur, min, max time.Duration
}

// NewBackoff starts at min.
func NewBackoff(min, max time.Duration) *Backoff { return &Backoff{cur: min, min: min, max: max} }

// Reset goes back to the shortest wait.
func (b *Backoff) Reset() { b.cur = b.min }

// Delay is what the next Sleep waits.
func (b *Backoff) Delay() time.Duration { return b.cur }

// Sleep waits the current delay; false if ctx ended first.
func (b *Backoff) Sleep(ctx context.Context) bool {
	t := time.NewTimer(b.cur)
	defer t.Stop()
	b.cur = min(2*b.cur, b.max)
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
