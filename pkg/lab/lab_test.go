package lab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hgw-ebpf/hgw-ebpf/pkg/namedns"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 && os.Getenv("CI") == "" {
		t.Skip("needs root (network namespaces)")
	}
}

// testPrefix is a fresh "hgwt<random>" prefix: tests never collide with each
// other or with a lab someone runs by hand.
func testPrefix(t *testing.T) string {
	t.Helper()
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return "hgwt" + hex.EncodeToString(b)
}

// binDir is where `make build`/`make deps` put hgw-ebpf and the CNI plugins.
func binDir(t *testing.T) string {
	t.Helper()
	if d := os.Getenv("HGW_BIN"); d != "" {
		return d
	}
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for ; dir != "/"; dir = filepath.Dir(dir) {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(dir, "bin")
		}
	}
	t.Fatal("no go.mod above the test directory")
	return ""
}

func testConfig(t *testing.T, prefix, stateRoot string) Config {
	return Config{
		Prefix: prefix, StateRoot: stateRoot, Nodes: 2, PodsPerNode: 1,
		Datapath: DatapathStatic, BinDir: binDir(t), CNIPath: os.Getenv("CNI_PATH"),
		Log: slog.New(slog.NewTextHandler(testWriter{t}, nil)),
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// assertNoTrace fails if anything of the lab is left: namespace, pin
// directory, state directory, or one of the given processes.
func assertNoTrace(t *testing.T, prefix, stateRoot string, pids map[int]uint64) {
	t.Helper()
	if names, err := namedns.List(prefix + "-"); err != nil || len(names) > 0 {
		t.Errorf("namespaces left: %v (err %v)", names, err)
	}
	for _, path := range []string{StateDir(stateRoot, prefix), pinRoot(prefix)} {
		if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left behind (stat err %v)", path, err)
		}
	}
	for pid, start := range pids {
		if sameProcess(pid, start) && !isZombie(pid) {
			t.Errorf("process %d still running", pid)
		}
	}
}

// assertRootUntouched checks that no lab address leaked into the root
// namespace.
func assertRootUntouched(t *testing.T) {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil && (underlayNet.Contains(p.Addr()) || clusterNetwork.Contains(p.Addr())) {
			t.Errorf("root namespace has lab address %s", p)
		}
	}
}

func TestStaticLabConnectsPodsAndDownRemovesAll(t *testing.T) {
	requireRoot(t)
	prefix, root := testPrefix(t), t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cfg := testConfig(t, prefix, root)
	cfg.Internet = true
	l, err := Up(ctx, cfg)
	if err != nil {
		t.Fatalf("up: %v", err)
	}
	defer l.Close() // on a failed assertion below; a second Close is a no-op
	// A lab whose process runs is not stale: DownStale leaves it alone (the
	// rest of the test shows it still works).
	if err := DownStale(ctx, root, nil); err != nil {
		t.Fatal(err)
	}

	st, err := LoadState(root, prefix)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Ready || len(st.Nodes) != 2 || len(st.Pods) != 2 {
		t.Fatalf("state: ready=%v nodes=%d pods=%d", st.Ready, len(st.Nodes), len(st.Pods))
	}
	for _, n := range st.Nodes {
		if v, err := readSysctl(n.Name, "net/ipv4/ip_forward"); err != nil || strings.TrimSpace(v) != "1" {
			t.Errorf("%s ip_forward = %q, %v", n.Name, v, err)
		}
	}
	a, b := st.Pods[0], st.Pods[1]
	if a.Node == b.Node {
		t.Fatalf("pods %s and %s on one node", a.Name, b.Name)
	}
	for _, pair := range [][2]Pod{{a, b}, {b, a}} {
		if _, err := st.Ping(ctx, pair[0].Name, pair[1].IP); err != nil {
			t.Errorf("ping %s -> %s: %v", pair[0].Name, pair[1].Name, err)
		}
	}
	// A pod's address comes from its node's subnet, through host-local.
	for _, p := range st.Pods {
		n, _ := st.Node(p.Node)
		if !netip.MustParsePrefix(n.Subnet).Contains(netip.MustParseAddr(p.IP)) {
			t.Errorf("pod %s address %s outside its node's subnet %s", p.Name, p.IP, n.Subnet)
		}
	}
	// etcd listens on the underlay: a node reaches it over its eth0.
	err = namedns.Do(st.Nodes[0].Name, func() error {
		c, err := net.DialTimeout("tcp", "198.18.0.1:2379", time.Second)
		if err == nil {
			c.Close()
		}
		return err
	})
	if err != nil {
		t.Errorf("etcd not reachable from a node: %v", err)
	}
	// The internet answers the nodes, but not the pods: nothing there
	// routes a pod subnet, and this lab masquerades nothing.
	if _, err := st.Ping(ctx, st.Nodes[0].Name, InternetIP.String()); err != nil {
		t.Errorf("node -> internet: %v", err)
	}
	if _, err := st.Ping(ctx, a.Name, InternetIP.String()); err == nil {
		t.Errorf("pod %s got an answer from the internet without masquerade", a.Name)
	}
	if _, err := st.Ping(ctx, "inet", b.IP); err == nil {
		t.Errorf("the internet reached pod %s: it must not route pod subnets", b.Name)
	}
	leases, err := l.Leases(ctx)
	if err != nil || len(leases) != 2 {
		t.Errorf("leases: %v, %v", leases, err)
	}
	assertRootUntouched(t)

	if err := l.Close(); err != nil {
		t.Errorf("down: %v", err)
	}
	assertNoTrace(t, prefix, root, nil)
}

// helperEnv makes the test binary act as a lab process that crashes.
const helperEnv = "HGW_LAB_TEST_CRASH_PREFIX"

// TestCrashHelper is not a test: run as a child by the crash test, it
// brings up a lab, starts a process in a node (an agent stand-in the state
// file does not know), and waits to be killed.
func TestCrashHelper(t *testing.T) {
	prefix := os.Getenv(helperEnv)
	if prefix == "" {
		t.Skip("helper process for TestDownAfterCrash")
	}
	root := os.Getenv(helperEnv + "_ROOT")
	cfg := testConfig(t, prefix, root)
	cfg.Internet = true
	l, err := Up(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	st := l.State()
	// A grandchild escapes the parent-death signal the lab gives its
	// children, as a daemonizing helper would: only Down can find it.
	out, err := st.Output(context.Background(), st.Nodes[0].Name, "sh", "-c", "sleep 300 >/dev/null 2>&1 & echo $!")
	if err != nil {
		t.Fatal(err)
	}
	var pid int
	if _, err := fmt.Sscan(out, &pid); err != nil {
		t.Fatalf("pid of the escaped process: %q: %v", out, err)
	}
	start, _ := procStart(pid)
	fmt.Printf("ORPHAN %d %d\n", pid, start)
	select {} // until SIGKILL
}

func TestDownAfterCrash(t *testing.T) {
	requireRoot(t)
	for _, keepState := range []bool{true, false} {
		t.Run(fmt.Sprintf("state_file_kept=%v", keepState), func(t *testing.T) {
			prefix, root := testPrefix(t), t.TempDir()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestCrashHelper$", "-test.v")
			cmd.Env = append(os.Environ(), helperEnv+"="+prefix, helperEnv+"_ROOT="+root)
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			// Whatever happens, leave nothing behind.
			defer Down(context.Background(), DownOptions{Prefix: prefix, StateRoot: root})
			defer cmd.Process.Kill()

			var pid int
			var start uint64
			buf := make([]byte, 64<<10)
			var seen strings.Builder
			for pid == 0 {
				n, err := out.Read(buf)
				seen.Write(buf[:n])
				for _, line := range strings.Split(seen.String(), "\n") {
					fmt.Sscanf(line, "ORPHAN %d %d", &pid, &start)
				}
				if err != nil && pid == 0 {
					t.Fatalf("helper ended before the lab was up: %v\n%s", err, seen.String())
				}
			}
			if err := cmd.Process.Signal(os.Kill); err != nil {
				t.Fatal(err)
			}
			_ = cmd.Wait()
			if names, _ := namedns.List(prefix + "-"); len(names) != 6 { // underlay, internet, 2 nodes, 2 pods
				t.Fatalf("namespaces after crash: %v, want 6", names)
			}
			if !sameProcess(pid, start) {
				t.Fatalf("orphan %d died with the lab: the test proves nothing", pid)
			}
			if !keepState {
				if err := os.Remove(filepath.Join(StateDir(root, prefix), stateFileName)); err != nil {
					t.Fatal(err)
				}
			}
			// With its state file the dead lab is found by DownStale, as the
			// end-to-end tests' next run finds it; without, by its prefix.
			down := func() error { return Down(ctx, DownOptions{Prefix: prefix, StateRoot: root}) }
			if keepState {
				down = func() error { return DownStale(ctx, root, nil) }
			}
			if err := down(); err != nil {
				t.Errorf("down: %v", err)
			}
			assertNoTrace(t, prefix, root, map[int]uint64{pid: start})
		})
	}
}

func TestParseName(t *testing.T) {
	for _, tc := range []struct {
		name      string
		node, pod int
		ok        bool
	}{
		{"hgwx-ul", -1, -1, true},
		{"hgwx-inet", -1, -1, true},
		{"hgwx-n3", 3, -1, true},
		{"hgwx-n3-p12", 3, 12, true},
		{"hgwx-n3-q1", 0, 0, false},
		{"hgwx-nope", 0, 0, false},
		{"hgwxy-n1", 0, 0, false},
	} {
		node, pod, ok := parseName("hgwx", tc.name)
		if ok != tc.ok || (ok && (node != tc.node || pod != tc.pod)) {
			t.Errorf("parseName(%q) = %d, %d, %v; want %d, %d, %v", tc.name, node, pod, ok, tc.node, tc.pod, tc.ok)
		}
	}
	if err := ValidatePrefix("hgwlab"); err != nil {
		t.Error(err)
	}
	for _, bad := range []string{"", "lab", "hgw-x", "hgwLAB", "hgw/../x", "hgw" + strings.Repeat("a", 18)} {
		if ValidatePrefix(bad) == nil {
			t.Errorf("ValidatePrefix(%q) accepted", bad)
		}
	}
}

func TestStaticNodeJoinAndLeave(t *testing.T) {
	requireRoot(t)
	prefix, root := testPrefix(t), t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l, err := Up(ctx, testConfig(t, prefix, root))
	if err != nil {
		t.Fatalf("up: %v", err)
	}
	defer func() {
		if err := l.Close(); err != nil {
			t.Errorf("down: %v", err)
		}
		assertNoTrace(t, prefix, root, nil)
	}()

	n3, err := l.AddNode(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.AddPod(ctx, n3.Name); err != nil {
		t.Fatal(err)
	}
	if err := l.WaitRoutes(ctx, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	st := l.State()
	for _, r := range st.PingAll(ctx, 8) {
		if !r.OK {
			t.Errorf("%s -> %s: %s", r.From, r.To, r.Output)
		}
	}

	if err := l.RemoveNode(ctx, n3.Name); err != nil {
		t.Fatal(err)
	}
	gone := netip.MustParsePrefix(n3.Subnet)
	for _, n := range l.State().Nodes {
		routes, err := NodeRoutes(n.Name)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := routes[gone]; ok {
			t.Errorf("%s still routes %s after %s left", n.Name, gone, n3.Name)
		}
	}
	names, _ := namedns.List(prefix + "-")
	for _, name := range names {
		if strings.HasPrefix(name, n3.Name) {
			t.Errorf("namespace %s of the removed node left", name)
		}
	}
	if leases, err := l.Leases(ctx); err != nil || len(leases) != 2 {
		t.Errorf("leases after leave: %v, %v", leases, err)
	}
}
