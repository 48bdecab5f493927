package e2e

import (
	"os/exec"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
	"github.com/hgw-ebpf/hgw-ebpf/internal/lab"
)

var pingSummaryRE = regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`)

// startPinger starts pinging from one namespace to an address, every
// `every`, for count packets, in the background; wait returns transmitted
// and received.
func startPinger(t *testing.T, st lab.State, from string, to string, count int, every time.Duration) (wait func() (int, int)) {
	t.Helper()
	var out lab.LimitedBuffer
	cmd := exec.Command("ping", "-n", "-q", "-i", strconv.FormatFloat(every.Seconds(), 'f', 3, 64), "-W", "1", "-c", strconv.Itoa(count), to)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := st.Start(from, cmd); err != nil {
		t.Fatal(err)
	}
	killer := time.AfterFunc(time.Duration(count)*every+30*time.Second, func() {
		_ = cmd.Process.Signal(syscall.SIGKILL)
	})
	t.Cleanup(func() { _ = cmd.Process.Signal(syscall.SIGKILL) })
	return func() (int, int) {
		_ = cmd.Wait()
		killer.Stop()
		m := pingSummaryRE.FindStringSubmatch(out.String())
		if m == nil {
			t.Fatalf("ping output has no summary: %s", out.String())
		}
		sent, _ := strconv.Atoi(m[1])
		got, _ := strconv.Atoi(m[2])
		return sent, got
	}
}

// kill -9 of an agent while a pod pings a remote pod every 10 ms, over
// IPv4 and over IPv6 at once (a dual-stack cluster): no packet is lost,
// the lab restarts the agent, and the restarted agent keeps the programs
// attached (it takes over the pinned links).
func TestAgentKill9LosesNothing(t *testing.T) {
	l := startLabConfig(t, lab.Config{Nodes: 2, PodsPerNode: 1, Datapath: lab.DatapathEBPF, DualStack: true})
	ctx := testContext(t, time.Minute)
	st := l.State()
	a, b := st.Pods[0], st.Pods[1]
	node, _ := st.Node(a.Node)

	wait4 := startPinger(t, st, a.Name, b.IP, 300, 10*time.Millisecond) // 3 s
	wait6 := startPinger(t, st, a.Name, b.IP6, 300, 10*time.Millisecond)
	time.Sleep(500 * time.Millisecond)
	if err := syscall.Kill(node.AgentPID, syscall.SIGKILL); err != nil {
		t.Fatalf("kill agent %d: %v", node.AgentPID, err)
	}
	// While the agent is gone (and as it comes back), the pinned programs
	// stay attached.
	restarted, ok := waitFor(ctx, 10*time.Second, func() bool {
		n, _ := l.State().Node(node.Name)
		return n.AgentPID != 0 && n.AgentPID != node.AgentPID
	})
	if !ok {
		t.Fatal("the lab did not restart the killed agent")
	}
	if !fastPathAttached(t, st, node.Name) {
		t.Error("fast path detached across the agent restart")
	}
	for family, wait := range map[string]func() (int, int){"IPv4": wait4, "IPv6": wait6} {
		sent, got := wait()
		if sent == 0 || got != sent {
			t.Errorf("%s ping across kill -9: %d sent, %d received", family, sent, got)
		}
	}
	// Still attached, and still forwarding, a while after the restart.
	time.Sleep(time.Until(restarted.Add(2 * time.Second)))
	if !fastPathAttached(t, st, node.Name) {
		t.Error("fast path detached after the restarted agent took over")
	}
	before, _ := node.Counters()
	pingAll(t, ctx, l.State())
	expectAll(t, "ipv6", l.State().PingAll6(ctx, 16), len(st.Pods))
	after, _ := node.Counters()
	for _, family := range []string{"ipv4", "ipv6"} {
		if d := datapath.Redirected(datapath.OfFamily(datapath.Delta(before, after), family), "from_pods"); d == 0 {
			t.Errorf("%s: from_pods redirected no %s packet after the restart", node.Name, family)
		}
	}
}
