package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Readiness tracks the conditions /readyz waits for; each starts not met.
// Notes are lines /readyz adds whatever the answer: what the agent wants
// an operator to know without being a reason to take the node out.
type Readiness struct {
	mu        sync.Mutex
	pending   map[string]bool // condition -> met
	order     []string
	notes     map[string]string
	noteOrder []string
}

// NewReadiness starts with the named conditions unmet.
func NewReadiness(conditions ...string) *Readiness {
	r := &Readiness{pending: map[string]bool{}}
	for _, c := range conditions {
		r.pending[c] = false
		r.order = append(r.order, c)
	}
	return r
}

// Set marks a condition met or unmet.
func (r *Readiness) Set(condition string, met bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.pending[condition]; !ok {
		r.order = append(r.order, condition)
	}
	r.pending[condition] = met
}

// SetNote sets the note under key ("" removes it); notes keep the order
// in which their keys were first set.
func (r *Readiness) SetNote(key, text string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.notes == nil {
		r.notes = map[string]string{}
	}
	if _, ok := r.notes[key]; !ok && text != "" {
		r.noteOrder = append(r.noteOrder, key)
	}
	if text == "" {
		delete(r.notes, key)
		r.noteOrder = slices.DeleteFunc(r.noteOrder, func(k string) bool { return k == key })
		return
	}
	r.notes[key] = text
}

// Notes returns the notes in order.
func (r *Readiness) Notes() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, 0, len(r.noteOrder))
	for _, k := range r.noteOrder {
		out = append(out, r.notes[k])
	}
	return out
}

// Met tells whether a condition is met (false if it is not one).
func (r *Readiness) Met(condition string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.pending[condition]
}

// Ready returns "" when every condition is met, else what is missing.
func (r *Readiness) Ready() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var missing []string
	for _, c := range r.order {
		if !r.pending[c] {
			missing = append(missing, c)
		}
	}
	if len(missing) == 0 {
		return ""
	}
	return fmt.Sprintf("not ready: waiting for %v", missing)
}

// Listen opens the metrics address; a bad or taken address fails here,
// before the agent does anything else.
func Listen(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics listener on %s: %w", addr, err)
	}
	return ln, nil
}

// Serve serves /metrics, /healthz and /readyz on ln until ctx is done.
func Serve(ctx context.Context, ln net.Listener, m *Metrics, ready *Readiness, log *slog.Logger) error {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		// The first line is the verdict; notes follow, one per line.
		body := "ready"
		if why := ready.Ready(); why != "" {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.WriteHeader(http.StatusServiceUnavailable)
			body = why
		}
		fmt.Fprintln(w, strings.Join(append([]string{body}, ready.Notes()...), "\n"))
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	log.Info("serving metrics", "addr", ln.Addr().String())
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("metrics server: %w", err)
	}
	return nil
}
