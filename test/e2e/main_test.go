// Package e2e runs whole clusters of `hgw-ebpf run` agents in lab network
// namespaces (internal/lab) and checks what a user of flannel host-gw would:
// pods reach each other, over the fast path, through membership changes.
package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/hgw-ebpf/hgw-ebpf/internal/lab"
	"github.com/hgw-ebpf/hgw-ebpf/internal/lab/labtest"
	"github.com/hgw-ebpf/hgw-ebpf/internal/testutil"
)

// binDir holds hgw-ebpf, hgw-cni and hgw-lab: $HGW_BIN (set by `make test`
// after `make build`), or fresh builds made by TestMain beside a link to
// bin/kube.
var binDir string

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	binDir = os.Getenv("HGW_BIN")
	if binDir == "" && os.Geteuid() == 0 {
		dir, err := os.MkdirTemp("", "hgw-e2e-bin")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		// hgw-cni too: the lab chains it after bridge on ebpf nodes; hgw-lab
		// for the tests that use the lab as a user does.
		for _, cmd := range []string{"hgw-ebpf", "hgw-cni", "hgw-lab"} {
			build := exec.Command("go", "build", "-o", filepath.Join(dir, cmd), "./cmd/"+cmd)
			build.Dir = testutil.RepoRoot()
			out, err := build.CombinedOutput()
			if err != nil {
				fmt.Fprintf(os.Stderr, "build %s for the end-to-end tests: %v\n%s", cmd, err, out)
				return 1
			}
		}
		// kube-apiserver and kubectl are not built here: `make deps` puts
		// them in bin/kube, where the kube labs look for them beside us.
		if err := os.Symlink(lab.KubeBinDir(testutil.BinDir()), lab.KubeBinDir(dir)); err != nil {
			fmt.Fprintf(os.Stderr, "link the kube binaries for the end-to-end tests: %v\n", err)
			return 1
		}
		binDir = dir
	}
	if os.Geteuid() == 0 {
		// What a crashed or killed run left: its lab process is gone.
		if err := lab.DownStale(context.Background(), stateRoot, nil); err != nil {
			fmt.Fprintf(os.Stderr, "remove labs of earlier runs: %v\n", err)
			return 1
		}
	}
	return m.Run()
}

// stateRoot holds the state of every lab the tests run, so that a later run
// finds what a crashed one left (lab.DownStale).
const stateRoot = "/run/hgw-e2e"

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// startLab brings up a lab with a fresh "hgwt<random>" prefix and removes
// it when the test ends, pass or fail, checking that nothing is left.
func startLab(t *testing.T, nodes, pods int, datapath string, agentArgs ...string) *lab.Lab {
	t.Helper()
	return startLabConfig(t, lab.Config{Nodes: nodes, PodsPerNode: pods, Datapath: datapath, AgentArgs: agentArgs})
}

// startLabFor is startLab with a context for the test's steps (see
// testContext).
func startLabFor(t *testing.T, timeout time.Duration, nodes, pods int, datapath string, agentArgs ...string) (*lab.Lab, context.Context) {
	t.Helper()
	return startLab(t, nodes, pods, datapath, agentArgs...), testContext(t, timeout)
}

// startLabConfig is startLab for a config beyond nodes, pods, datapath and
// agent flags (see labtest.Start); the state root (stateRoot) and a resync
// of 1 s are set here, and the binaries unless cfg.BinDir names a
// directory of the test's own.
func startLabConfig(t *testing.T, cfg lab.Config) *lab.Lab {
	t.Helper()
	cfg.StateRoot, cfg.ResyncInterval = stateRoot, time.Second
	if cfg.BinDir == "" {
		cfg.BinDir = binDir
	}
	return labtest.Start(t, cfg)
}

// pingAll fails the test for every pod pair that cannot talk (IPv4).
func pingAll(t *testing.T, ctx context.Context, st lab.State) {
	t.Helper()
	expectAll(t, "ipv4", st.PingAll(ctx, 16), len(st.Pods))
}

// expectAll fails the test for every failed probe of an all-pairs ping of
// pods.
func expectAll(t *testing.T, family string, results []lab.PingResult, pods int) {
	t.Helper()
	for _, r := range results {
		if !r.OK {
			t.Errorf("%s -> %s (%s): %s", r.From, r.To, family, r.Output)
		}
	}
	if len(results) != pods*(pods-1) {
		t.Errorf("%d %s probes for %d pods", len(results), family, pods)
	}
}

// pings sends count echo requests from a lab namespace to addr, interval
// apart, each answered within a second or lost, and returns ping's
// summary; the error is ping's: none if any reply came back.
func pings(ctx context.Context, st lab.State, from, addr string, count int, interval time.Duration) (string, error) {
	return st.Output(ctx, from, "ping", "-n", "-q", "-c", strconv.Itoa(count),
		"-i", strconv.FormatFloat(interval.Seconds(), 'f', -1, 64), "-W", "1", addr)
}

// waitFor polls cond every 10 ms until it holds or timeout passes, and
// returns when it first held.
func waitFor(ctx context.Context, timeout time.Duration, cond func() bool) (time.Time, bool) {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return time.Now(), true
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return time.Time{}, false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// testContext bounds a test's steps: it ends after timeout, or with the
// test.
func testContext(t *testing.T, timeout time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	t.Cleanup(cancel)
	return ctx
}
