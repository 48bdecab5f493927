package registry

import (
	"context"
	"testing"
	"time"
)

// The wait doubles up to the ceiling, Reset goes back to the floor, and a
// cancelled context ends Sleep at once.
func TestBackoff(t *testing.T) {
	b := NewBackoff(time.Millisecond, 4*time.Millisecond)
	var got []time.Duration
	for range 4 {
		got = append(got, b.Delay())
		if !b.Sleep(context.Background()) {
			t.Fatal("Sleep ended without a cancelled context")
		}
	}
	want := []time.Duration{time.Millisecond, 2 * time.Millisecond, 4 * time.Millisecond, 4 * time.Millisecond}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("delays %v, want %v", got, want)
		}
	}
	b.Reset()
	if b.Delay() != time.Millisecond {
		t.Errorf("after Reset: %s, want 1ms", b.Delay())
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if NewBackoff(time.Hour, time.Hour).Sleep(ctx) { // an hour's wait would time the test out
		t.Error("Sleep on a cancelled context returned true")
	}
}
