package testutil

import (
	"log/slog"
	"strings"
	"testing"
)

// Logger is a logger whose records go to t.Log, so they show beside the
// test that made them, when it fails or runs with -v.
func Logger(t testing.TB) *slog.Logger { return slog.New(slog.NewTextHandler(logWriter{t}, nil)) }

type logWriter struct{ t testing.TB }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}
