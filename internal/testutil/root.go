// Package testutil holds the few helpers tests share: a root check,
// throw-away network namespaces, random names, a logger to t.Log, and
// where the project's binaries are.
package testutil

import (
	"os"
	"testing"
)

// RequireRoot skips t when not root, unless CI is set: there a missing
// privilege must fail loudly instead of silently skipping the test.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "" {
		t.Skip("needs root (network namespaces, BPF); skipping because CI is unset")
	}
	t.Fatal("needs root, and CI is set: refusing to skip")
}
