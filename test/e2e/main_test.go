// Package e2e runs whole clusters of `hgw-ebpf run` agents in lab network
// namespaces (pkg/lab) and checks what a user of flannel host-gw would:
// pods reach each other, over the fast path, through membership changes.
package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hgw-ebpf/hgw-ebpf/pkg/lab"
)

// binDir holds hgw-ebpf and hgw-cni: $HGW_BIN (set by `make test` after
// `make build`), or fresh builds of ./cmd/hgw-ebpf and ./cmd/hgw-cni made by
// TestMain.
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
			build.Dir = repoRoot()
			out, err := build.CombinedOutput()
			if err != nil {
				fmt.Fprintf(os.Stderr, "build %s for the end-to-end tests: %v\n%s", cmd, err, out)
				return 1
			}
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

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 && os.Getenv("CI") == "" {
		t.Skip("needs root (network namespaces, BPF)")
	}
}

// cniPath is where `make deps` installs the CNI plugins.
func cniPath(t *testing.T) string {
	if p := os.Getenv("CNI_PATH"); p != "" {
		return p
	}
	return filepath.Join(repoRoot(), "bin", "cni")
}

// repoRoot is the module root above the test's directory (`go test` runs a
// test binary in its package directory).
func repoRoot() string {
	dir, _ := os.Getwd()
	for d := dir; d != "/"; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d
		}
	}
	return filepath.Join(dir, "..", "..")
}

// startLab brings up a lab with a fresh "hgwt<random>" prefix and removes
// it when the test ends, pass or fail, checking that nothing is left.
func startLab(t *testing.T, nodes, pods int, datapath string, agentArgs ...string) *lab.Lab {
	t.Helper()
	return startLabConfig(t, lab.Config{Nodes: nodes, PodsPerNode: pods, Datapath: datapath, AgentArgs: agentArgs})
}

// startLabConfig is startLab for a config beyond nodes, pods, datapath and
// agent flags; prefix, state root, CNI path, resync and log are set here,
// and the binaries unless cfg.BinDir names a directory of the test's own.
func startLabConfig(t *testing.T, cfg lab.Config) *lab.Lab {
	t.Helper()
	requireRoot(t)
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	prefix, root := "hgwt"+hex.EncodeToString(b), stateRoot
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cfg.Prefix, cfg.StateRoot, cfg.CNIPath = prefix, root, cniPath(t)
	if cfg.BinDir == "" {
		cfg.BinDir = binDir
	}
	cfg.ResyncInterval, cfg.Log = time.Second, slog.New(slog.NewTextHandler(testLog{t}, nil))
	l, err := lab.Up(ctx, cfg)
	if err != nil {
		t.Fatalf("lab up: %v", err)
	}
	t.Cleanup(func() {
		st := l.State()
		if t.Failed() {
			for _, n := range st.Nodes {
				if b, err := os.ReadFile(n.AgentLog); err == nil {
					t.Logf("agent log of %s:\n%s", n.Name, lastLines(string(b), 30))
				}
			}
		}
		if err := l.Close(); err != nil {
			t.Errorf("lab down: %v", err)
		}
		assertNothingLeft(t, st)
	})
	return l
}

// assertNothingLeft checks the lab left no namespace, pin, state or agent.
func assertNothingLeft(t *testing.T, st lab.State) {
	t.Helper()
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), st.Prefix+"-") {
			t.Errorf("namespace %s left behind", e.Name())
		}
	}
	for _, path := range []string{st.PinRoot, st.Dir} {
		if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left behind", path)
		}
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		if b, err := os.ReadFile(p); err == nil && strings.Contains(string(b), st.PinRoot) {
			t.Errorf("process left behind: %s", strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
}

type testLog struct{ t *testing.T }

func (w testLog) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
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
