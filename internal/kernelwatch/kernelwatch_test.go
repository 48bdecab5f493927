package kernelwatch

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hgw-ebpf/hgw-ebpf/internal/testutil"
)

type fakeSub struct {
	fire   chan struct{}
	closed atomic.Bool
}

func (f *fakeSub) Events() <-chan struct{} { return f.fire }
func (f *fakeSub) Close()                  { f.closed.Store(true) }

// harness counts a loop's runs and Missed calls and hands out the
// subscriptions the test made.
type harness struct {
	runs, missed atomic.Int32
	mu           sync.Mutex
	subs         []*fakeSub
	refuse       atomic.Int32 // Subscribe fails this many more times
	ran          chan struct{}
}

func newHarness() *harness { return &harness{ran: make(chan struct{}, 100)} }

func (h *harness) loop(t *testing.T, triggers chan struct{}, resync, settle time.Duration) Loop {
	return Loop{
		What: "test events",
		Subscribe: func() (Subscription, error) {
			if h.refuse.Load() > 0 {
				h.refuse.Add(-1)
				return nil, errors.New("refused")
			}
			s := &fakeSub{fire: make(chan struct{}, 1)}
			h.mu.Lock()
			h.subs = append(h.subs, s)
			h.mu.Unlock()
			return s, nil
		},
		Triggers: triggers,
		Resync:   resync,
		Settle:   settle,
		Missed:   func() { h.missed.Add(1) },
		Run: func(context.Context) {
			h.runs.Add(1)
			h.ran <- struct{}{}
		},
		Log: testutil.Logger(t),
	}
}

func (h *harness) sub(t *testing.T, i int) *fakeSub {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		h.mu.Lock()
		n := len(h.subs)
		h.mu.Unlock()
		if n > i {
			h.mu.Lock()
			defer h.mu.Unlock()
			return h.subs[i]
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("subscription %d never made", i)
	return nil
}

func (h *harness) waitRun(t *testing.T) {
	t.Helper()
	testutil.Recv(t, h.ran, 5*time.Second, "run")
}

func serve(t *testing.T, l Loop) (stop func()) { return testutil.Run(t, "Serve", l.Serve) }

func TestABurstOfEventsIsOneRun(t *testing.T) {
	h := newHarness()
	stop := serve(t, h.loop(t, nil, time.Hour, 100*time.Millisecond))
	s := h.sub(t, 0)
	for range 5 { // within the settle time: one run
		select {
		case s.fire <- struct{}{}:
		default:
		}
		time.Sleep(5 * time.Millisecond)
	}
	h.waitRun(t)
	time.Sleep(300 * time.Millisecond)
	stop()
	if n := h.runs.Load(); n != 1 {
		t.Errorf("%d runs for a burst of events, want 1", n)
	}
	if h.missed.Load() != 0 {
		t.Errorf("Missed called %d times without a resync or a failed subscription", h.missed.Load())
	}
	if !s.closed.Load() {
		t.Error("the subscription was not closed when Serve returned")
	}
}

func TestTriggersRunAtOnce(t *testing.T) {
	h := newHarness()
	triggers := make(chan struct{}, 1)
	stop := serve(t, h.loop(t, triggers, time.Hour, 0))
	defer stop()
	h.sub(t, 0)
	triggers <- struct{}{}
	h.waitRun(t)
	triggers <- struct{}{}
	h.waitRun(t)
}

func TestAFailedSubscriptionIsMadeAgainAndRunsForWhatItMissed(t *testing.T) {
	h := newHarness()
	stop := serve(t, h.loop(t, nil, time.Hour, 0))
	defer stop()
	first := h.sub(t, 0)
	h.refuse.Store(1) // the first try again fails too: backoff, then a second try
	close(first.fire)
	second := h.sub(t, 1)
	h.waitRun(t)
	if !first.closed.Load() {
		t.Error("the failed subscription was not closed")
	}
	if h.missed.Load() != 1 {
		t.Errorf("Missed called %d times after resubscribing, want 1", h.missed.Load())
	}
	second.fire <- struct{}{} // the new one is listened to
	h.waitRun(t)
}

func TestWithoutASubscriptionTheTimerRuns(t *testing.T) {
	h := newHarness()
	h.refuse.Store(1 << 20) // never
	stop := serve(t, h.loop(t, nil, 20*time.Millisecond, 0))
	h.waitRun(t)
	h.waitRun(t)
	stop()
	if h.missed.Load() < 2 {
		t.Errorf("Missed called %d times for 2 resync runs", h.missed.Load())
	}
}

// A loop without Subscribe (the agent's periodic checks) runs on the
// timer, and does not warn about a watch it never meant to make.
func TestWithoutSubscribeTheTimerRuns(t *testing.T) {
	h := newHarness()
	l := h.loop(t, nil, 20*time.Millisecond, 0)
	l.Subscribe = nil
	var logged bytes.Buffer
	l.Log = slog.New(slog.NewTextHandler(&logged, nil))
	stop := serve(t, l)
	h.waitRun(t)
	h.waitRun(t)
	stop()
	if logged.Len() != 0 {
		t.Errorf("logged:\n%s", logged.String())
	}
}
