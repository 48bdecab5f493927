package lab_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hgw-ebpf/hgw-ebpf/internal/lab"
	"github.com/hgw-ebpf/hgw-ebpf/internal/lab/labtest"
	"github.com/hgw-ebpf/hgw-ebpf/internal/namedns"
	"github.com/hgw-ebpf/hgw-ebpf/internal/testutil"
)

// staticConfig is a 2-node lab with a pod each whose agent the lab
// stands in for (DatapathStatic): the topology on its own.
func staticConfig() lab.Config {
	return lab.Config{Nodes: 2, PodsPerNode: 1, Datapath: lab.DatapathStatic}
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
		if p, err := netip.ParsePrefix(a.String()); err == nil && (lab.UnderlayNet.Contains(p.Addr()) || lab.ClusterNetwork.Contains(p.Addr())) {
			t.Errorf("root namespace has lab address %s", p)
		}
	}
}

func TestStaticLabConnectsPodsAndDownRemovesAll(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cfg := staticConfig()
	cfg.Internet = true
	l := labtest.Start(t, cfg)
	prefix, root := l.State().Prefix, filepath.Dir(l.State().Dir)
	// A lab whose process runs is not stale: DownStale leaves it alone (the
	// rest of the test shows it still works).
	if err := lab.DownStale(ctx, root, nil); err != nil {
		t.Fatal(err)
	}

	st, err := lab.LoadState(root, prefix)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Ready || len(st.Nodes) != 2 || len(st.Pods) != 2 {
		t.Fatalf("state: ready=%v nodes=%d pods=%d", st.Ready, len(st.Nodes), len(st.Pods))
	}
	for _, n := range st.Nodes {
		if v, err := lab.ReadSysctl(n.Name, "net/ipv4/ip_forward"); err != nil || strings.TrimSpace(v) != "1" {
			t.Errorf("%s ip_forward = %q, %v", n.Name, v, err)
		}
	}
	a, b := st.Pods[0], st.Pods[1]
	if a.Node == b.Node {
		t.Fatalf("pods %s and %s on one node", a.Name, b.Name)
	}
	for _, pair := range [][2]lab.Pod{{a, b}, {b, a}} {
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
	err = st.Do(st.Nodes[0].Name, func() error {
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
	if _, err := st.Ping(ctx, st.Nodes[0].Name, lab.InternetIP.String()); err != nil {
		t.Errorf("node -> internet: %v", err)
	}
	if _, err := st.Ping(ctx, a.Name, lab.InternetIP.String()); err == nil {
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
	labtest.AssertNothingLeft(t, *st)
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
	cfg := staticConfig()
	cfg.Prefix, cfg.StateRoot, cfg.Internet = prefix, root, true
	st := labtest.Start(t, cfg).State()
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
	start, _ := lab.ProcStart(pid)
	fmt.Printf("ORPHAN %d %d\n", pid, start)
	select {} // until SIGKILL
}

func TestDownAfterCrash(t *testing.T) {
	testutil.RequireRoot(t)
	for _, keepState := range []bool{true, false} {
		t.Run(fmt.Sprintf("state_file_kept=%v", keepState), func(t *testing.T) {
			prefix, root := labtest.Prefix(t), t.TempDir()
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
			defer lab.Down(context.Background(), lab.DownOptions{Prefix: prefix, StateRoot: root})
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
			if !lab.Running(pid, start) {
				t.Fatalf("orphan %d died with the lab: the test proves nothing", pid)
			}
			st, err := lab.LoadState(root, prefix)
			if err != nil {
				t.Fatal(err)
			}
			if !keepState {
				if err := os.Remove(filepath.Join(lab.StateDir(root, prefix), lab.StateFileName)); err != nil {
					t.Fatal(err)
				}
			}
			// With its state file the dead lab is found by DownStale, as the
			// end-to-end tests' next run finds it; without, by its prefix.
			down := func() error { return lab.Down(ctx, lab.DownOptions{Prefix: prefix, StateRoot: root}) }
			if keepState {
				down = func() error { return lab.DownStale(ctx, root, nil) }
			}
			if err := down(); err != nil {
				t.Errorf("down: %v", err)
			}
			labtest.AssertNothingLeft(t, *st)
			if lab.Running(pid, start) {
				t.Errorf("process %d still running", pid)
			}
		})
	}
}

func TestStaticNodeJoinAndLeave(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l := labtest.Start(t, staticConfig())
	prefix := l.State().Prefix

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
		routes, err := lab.NodeRoutes(n.Name)
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
