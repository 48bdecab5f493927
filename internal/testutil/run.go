package testutil

import (
	"context"
	"sync"
	"testing"
	"time"
)

// Run runs fn in a goroutine until the returned stop (also called at the
// test's end) cancels its context, then waits up to 10 s for it to
// return nil, as a long-running loop must once its context is done.
func Run(t testing.TB, what string, fn func(context.Context) error) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fn(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("%s returned %v after cancel, want nil", what, err)
				}
			case <-time.After(10 * time.Second):
				t.Errorf("%s did not return within 10s of cancel", what)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}
