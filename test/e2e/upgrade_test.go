package e2e

// Hitless upgrade and restart: a new hgw-ebpf binary, started
// over the pins of the old one, loads its programs and swaps them into the
// pinned tcx links (link update), keeping the links and the maps, while
// pods keep talking.

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
	"github.com/hgw-ebpf/hgw-ebpf/internal/lab"
	"github.com/hgw-ebpf/hgw-ebpf/internal/testutil"
)

// pinnedLinks are the IDs of the tcx links pinned under a node's pin root
// and the programs they run, by pin name (program@device).
func pinnedLinks(t *testing.T, n lab.Node) map[string][2]uint32 {
	t.Helper()
	dir := filepath.Join(n.PinRoot, "links")
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("link pins of %s: %v", n.Name, err)
	}
	out := map[string][2]uint32{}
	for _, e := range entries {
		l, err := link.LoadPinnedLink(filepath.Join(dir, e.Name()), nil)
		if err != nil {
			t.Fatalf("open link pin %s: %v", e.Name(), err)
		}
		info, err := l.Info()
		l.Close()
		if err != nil {
			t.Fatalf("link info %s: %v", e.Name(), err)
		}
		out[e.Name()] = [2]uint32{uint32(info.ID), uint32(info.Program)}
	}
	return out
}

// pinnedMapIDs are the IDs of the maps pinned in a node's pin root, by pin
// name.
func pinnedMapIDs(t *testing.T, n lab.Node) map[string]ebpf.MapID {
	t.Helper()
	entries, err := os.ReadDir(n.PinRoot)
	if err != nil {
		t.Fatalf("pins of %s: %v", n.Name, err)
	}
	out := map[string]ebpf.MapID{}
	for _, e := range entries {
		if e.IsDir() {
			continue // links/
		}
		m, err := ebpf.LoadPinnedMap(filepath.Join(n.PinRoot, e.Name()), nil)
		if err != nil {
			t.Fatalf("open map pin %s of %s: %v", e.Name(), n.Name, err)
		}
		info, err := m.Info()
		m.Close()
		if err != nil {
			t.Fatalf("map info %s of %s: %v", e.Name(), n.Name, err)
		}
		id, ok := info.ID()
		if !ok {
			t.Fatalf("map %s of %s: the kernel reports no ID", e.Name(), n.Name)
		}
		out[e.Name()] = id
	}
	return out
}

// copyExecutable copies the executable src to dst.
func copyExecutable(t *testing.T, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		t.Fatalf("copy %s to %s: %v", src, dst, err)
	}
	if err := out.Close(); err != nil {
		t.Fatalf("copy %s to %s: %v", src, dst, err)
	}
}

// agentVersion is what the binary a node's agent runs says of itself
// (`hgw-ebpf version` of /proc/<pid>/exe, which stays the running image
// after its file is replaced).
func agentVersion(t *testing.T, st lab.State, node string) string {
	t.Helper()
	pid := mustNode(t, st, node).AgentPID
	if pid == 0 {
		t.Fatalf("%s: no agent running", node)
	}
	out, err := exec.Command(fmt.Sprintf("/proc/%d/exe", pid), "version").CombinedOutput()
	if err != nil {
		t.Fatalf("%s: version of agent %d: %v\n%s", node, pid, err, out)
	}
	return strings.TrimSpace(string(out))
}

// restartAgent stops node's agent as `systemctl stop` does (SIGTERM),
// starts it again from the lab's binary, and waits until it reports ready.
func restartAgent(t *testing.T, l *lab.Lab, node string) {
	t.Helper()
	if err := l.StopAgent(node); err != nil {
		t.Fatal(err)
	}
	if err := l.StartAgent(node); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, ok := waitFor(ctx, 20*time.Second, func() bool {
		code, _ := get(ctx, l.State(), node, "/readyz")
		return code == 200
	}); !ok {
		t.Fatalf("%s: restarted agent not ready within 20 s", node)
	}
}

// A pod pings a pod on the other node every 10 ms while (a) a new hgw-ebpf
// binary is installed over the old one and every node's agent restarts
// into it, one node after the other, and then (b) every agent restarts
// again (SIGTERM, start). Not one packet is lost; after each round every
// pinned link keeps its ID but runs a program it did not run before
// (replaced in place, by link update), the pinned maps are the same maps,
// and the fast-path counters kept counting through both rounds.
func TestUpgradeAndRestartReplaceProgramsWithoutLoss(t *testing.T) {
	testutil.RequireRoot(t)
	// A bin dir of the test's own, so that its hgw-ebpf can be replaced:
	// first a copy of the binary under test ("installed"), then a build of
	// the same source with another version stamped in ("the upgrade").
	dir := t.TempDir()
	copyExecutable(t, filepath.Join(binDir, "hgw-ebpf"), filepath.Join(dir, "hgw-ebpf"))
	if err := os.Symlink(filepath.Join(binDir, "hgw-cni"), filepath.Join(dir, "hgw-cni")); err != nil {
		t.Fatal(err)
	}
	const newVersion = "e2e-upgrade"
	upgrade := filepath.Join(dir, "hgw-ebpf.new")
	build := exec.Command("go", "build", "-ldflags", "-X main.version="+newVersion, "-o", upgrade, "./cmd/hgw-ebpf")
	build.Dir = testutil.RepoRoot()
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the upgrade binary: %v\n%s", err, out)
	}

	l := startLabConfig(t, lab.Config{Nodes: 2, PodsPerNode: 1, Datapath: lab.DatapathEBPF, BinDir: dir})
	st := l.State()
	links, maps := map[string]map[string][2]uint32{}, map[string]map[string]ebpf.MapID{}
	for _, n := range st.Nodes {
		links[n.Name], maps[n.Name] = pinnedLinks(t, n), pinnedMapIDs(t, n)
		if len(links[n.Name]) < 3 { // cni0, eth0 and the pod's veth
			t.Fatalf("%s: %d link pins, want from_pods@cni0, from_underlay@eth0 and the pod's veth: %v",
				n.Name, len(links[n.Name]), links[n.Name])
		}
		if len(maps[n.Name]) < 3 {
			t.Fatalf("%s: %d map pins, want routes, config, stats at least: %v", n.Name, len(maps[n.Name]), maps[n.Name])
		}
		if v := agentVersion(t, st, n.Name); strings.HasSuffix(v, newVersion) {
			t.Fatalf("%s: the agent runs %q before the upgrade", n.Name, v)
		}
	}
	a, b := st.Pods[0], st.Pods[1]
	src := mustNode(t, st, a.Node)
	before, err := src.Counters()
	if err != nil {
		t.Fatal(err)
	}

	const pings = 1000 // 10 s; the four restarts took 1.6 s here
	wait := startPinger(t, st, a.Name, b.IP, pings, 10*time.Millisecond)
	started := time.Now()
	time.Sleep(500 * time.Millisecond)
	// The package manager's part: the new file replaces the old one
	// (rename, as dpkg does); the running agents keep their old image.
	if err := os.Rename(upgrade, filepath.Join(dir, "hgw-ebpf")); err != nil {
		t.Fatal(err)
	}
	progs := links
	for _, round := range []string{"upgrade", "restart"} {
		for _, n := range st.Nodes {
			restartAgent(t, l, n.Name)
			if v := agentVersion(t, l.State(), n.Name); !strings.HasSuffix(v, newVersion) {
				t.Errorf("%s after the %s: the agent runs %q, want version %s", n.Name, round, v, newVersion)
			}
		}
		now := map[string]map[string][2]uint32{}
		for _, n := range st.Nodes {
			// The pod's veth link is updated by the agent's endpoint sync,
			// which may finish just after /readyz: wait for it.
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			waitFor(ctx, 10*time.Second, func() bool {
				now[n.Name] = pinnedLinks(t, n)
				for pin, was := range progs[n.Name] {
					if now[n.Name][pin][1] == was[1] {
						return false
					}
				}
				return true
			})
			cancel()
			for pin, orig := range links[n.Name] {
				cur, ok := now[n.Name][pin]
				switch {
				case !ok:
					t.Errorf("%s after the %s: link %s gone", n.Name, round, pin)
				case cur[0] != orig[0]:
					t.Errorf("%s after the %s: link %s replaced (id %d -> %d), want updated in place", n.Name, round, pin, orig[0], cur[0])
				case cur[1] == progs[n.Name][pin][1]:
					t.Errorf("%s after the %s: link %s still runs program %d: not replaced", n.Name, round, pin, cur[1])
				}
			}
			for pin, id := range pinnedMapIDs(t, n) {
				if was, ok := maps[n.Name][pin]; ok && was != id {
					t.Errorf("%s after the %s: map %s is a new map (id %d -> %d), want the pinned one kept", n.Name, round, pin, was, id)
				}
			}
		}
		progs = now
	}
	d := time.Since(started)
	t.Logf("the upgrade and the restart of both agents took %v", d.Round(time.Millisecond))
	if d > pings*10*time.Millisecond-2*time.Second {
		t.Errorf("the restarts took %v, longer than the pinger covers (%d pings at 10 ms): raise pings", d, pings)
	}
	sent, got := wait()
	t.Logf("ping every 10 ms across an upgrade and a restart of both agents: %d sent, %d received", sent, got)
	if sent == 0 || got != sent {
		t.Errorf("ping every 10 ms across an upgrade and a restart of both agents: %d sent, %d received", sent, got)
	}
	// The new programs count into the kept stats map: the requests of the
	// whole run are there, not only those since the last restart.
	after, err := src.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if d := datapath.Redirected(datapath.Delta(before, after), "from_pods"); d < uint64(sent) {
		t.Errorf("%s: from_pods redirected %d packets during the run for %d echo requests: counters lost across the restarts", src.Name, d, sent)
	}
}
