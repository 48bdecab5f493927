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

// LastLines is the last n lines of s: the end of a long log or output is
// where a failure shows.
func LastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
