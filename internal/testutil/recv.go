package testutil

import (
	"testing"
	"time"
)

// Recv returns the next value from ch, failing the test if none comes
// within d; what names the awaited value in that failure.
func Recv[T any](t testing.TB, ch <-chan T, d time.Duration, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(d):
		t.Fatalf("no %s within %s", what, d)
		panic("unreachable") // Fatalf does not return
	}
}
