// Package labtest starts lab clusters (internal/lab) for tests: a fresh prefix,
// the test's log, the binaries `make build` and `make deps` left, and a
// removal, checked, when the test ends.
package labtest

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
	"github.com/hgw-ebpf/hgw-ebpf/internal/lab"
	"github.com/hgw-ebpf/hgw-ebpf/internal/logtail"
	"github.com/hgw-ebpf/hgw-ebpf/internal/namedns"
	"github.com/hgw-ebpf/hgw-ebpf/internal/testutil"
)

// Prefix is a fresh lab prefix, "hgwt" and 6 random hex digits: tests
// never collide with each other or with a lab someone runs by hand.
func Prefix(t testing.TB) string { return "hgwt" + testutil.RandHex(t, 3) }

// Start brings up a lab for t (root required: testutil.RequireRoot) and
// removes it when t ends, pass or fail, checking that nothing is left
// (AssertNothingLeft); if t failed, the end of every agent's log is
// logged first. Fields cfg leaves empty get a fresh Prefix, a state root
// in t.TempDir(), testutil.BinDir and testutil.CNIPath, and a logger to
// t.Log. Bringing the lab up may take 2 minutes at most.
func Start(t testing.TB, cfg lab.Config) *lab.Lab {
	t.Helper()
	testutil.RequireRoot(t)
	if cfg.Prefix == "" {
		cfg.Prefix = Prefix(t)
	}
	if cfg.StateRoot == "" {
		cfg.StateRoot = t.TempDir()
	}
	if cfg.BinDir == "" {
		cfg.BinDir = testutil.BinDir()
	}
	if cfg.CNIPath == "" {
		cfg.CNIPath = testutil.CNIPath()
	}
	if cfg.Log == nil {
		cfg.Log = testutil.Logger(t)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l, err := lab.Up(ctx, cfg)
	if err != nil {
		t.Fatalf("lab up: %v", err)
	}
	t.Cleanup(func() {
		st := l.State()
		if t.Failed() {
			for _, n := range st.Nodes {
				if b, err := os.ReadFile(n.AgentLog); err == nil {
					t.Logf("agent log of %s:\n%s", n.Name, logtail.Lines(string(b), 30))
				}
			}
		}
		if err := l.Close(); err != nil {
			t.Errorf("lab down: %v", err)
		}
		AssertNothingLeft(t, st)
	})
	return l
}

// AssertNothingLeft fails t for anything left of the lab st describes: a
// namespace with its prefix, its pin root or state directory, or a
// process whose command line names its pin root.
func AssertNothingLeft(t testing.TB, st lab.State) {
	t.Helper()
	if names, err := namedns.List(st.Prefix + "-"); err != nil || len(names) > 0 {
		t.Errorf("namespaces left behind: %v (err %v)", names, err)
	}
	for _, path := range []string{st.PinRoot, st.Dir} {
		if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left behind (stat: %v)", path, err)
		}
	}
	if st.PinRoot == "" {
		return
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		if b, err := os.ReadFile(p); err == nil && strings.Contains(string(b), st.PinRoot) {
			t.Errorf("process left behind: %s", strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
}

// Counters reads a node's fast-path counters, failing t if it cannot.
func Counters(t testing.TB, n lab.Node) []datapath.Counter {
	t.Helper()
	cs, err := n.Counters()
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// AllCounters reads every node's counters, by node name.
func AllCounters(t testing.TB, st lab.State) map[string][]datapath.Counter {
	t.Helper()
	out := map[string][]datapath.Counter{}
	for _, n := range st.Nodes {
		out[n.Name] = Counters(t, n)
	}
	return out
}
