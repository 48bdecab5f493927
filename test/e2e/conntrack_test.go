package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
	"github.com/hgw-ebpf/hgw-ebpf/internal/lab"
	"github.com/hgw-ebpf/hgw-ebpf/internal/lab/labtest"
)

// The lab's kube-proxy services (lab.Config.KubeProxy) DNAT a TCP and a
// DNS-like UDP ClusterIP to the server pod on node 2, which runs echo
// servers on the services' backend ports; every node carries the
// INVALID-drop rule.
var (
	clusterIP    = lab.ServiceIP.String()
	dnsClusterIP = lab.ServiceDNSIP.String()
)

const (
	clusterPort = 80
	dnsPort     = 53
	serverPort  = lab.BackendHTTPPort // TCP echo in the backend pod
	udpPort     = lab.BackendDNSPort  // UDP echo in the backend pod
)

// kubeCluster is a 2-node lab where node 1's client pod reaches node 2's
// server pod through kube-proxy's ClusterIPs.
type kubeCluster struct {
	lab            *lab.Lab
	st             lab.State
	client, server lab.Pod
	clientNode     string
}

func startKubeCluster(t *testing.T, ctx context.Context, datapath string, agentArgs ...string) kubeCluster {
	l := startLabConfig(t, lab.Config{Nodes: 2, PodsPerNode: 1, Datapath: datapath, AgentArgs: agentArgs, KubeProxy: true})
	st := l.State()
	var c kubeCluster
	c.lab, c.st = l, st
	c.client, c.server = st.PodsOf(st.Nodes[0].Name)[0], st.PodsOf(st.Nodes[1].Name)[0]
	c.clientNode = st.Nodes[0].Name
	c.serveEcho(t)
	return c
}

// serveEcho runs TCP and UDP echo servers in the server pod; sockets are
// opened inside its namespace and closed when the test ends.
func (c kubeCluster) serveEcho(t *testing.T) { serveEchoIn(t, c.st, c.server.Name) }

// serveEchoIn runs the echo servers in namespace ns (a pod or a node).
func serveEchoIn(t *testing.T, st lab.State, ns string) {
	var ln net.Listener
	var pc net.PacketConn
	err := st.Do(ns, func() error {
		var err error
		if ln, err = net.Listen("tcp4", fmt.Sprintf(":%d", serverPort)); err != nil {
			return err
		}
		pc, err = net.ListenPacket("udp4", fmt.Sprintf(":%d", udpPort))
		return err
	})
	if err != nil {
		t.Fatalf("echo servers in %s: %v", ns, err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); pc.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer conn.Close()
				conn.SetDeadline(time.Now().Add(5 * time.Second))
				io.Copy(conn, conn)
			})
		}
	})
	wg.Go(func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	})
}

// exchange opens a connection from the client pod to addr, sends a line
// and expects it back: the round trip a kube-proxy'd request makes.
func (c kubeCluster) exchange(network, addr string, i int) error {
	return exchangeFrom(c.st, c.client.Name, network, addr, i)
}

// exchangeFrom is exchange from any namespace of the lab (a pod or a node).
func exchangeFrom(st lab.State, from, network, addr string, i int) error {
	return exchangeFromPort(st, from, network, 0, addr, i)
}

// exchangeFromPort is exchangeFrom with the client's source port chosen
// (0: any), reusable while an earlier connection from it lingers in
// TIME_WAIT, as the kernel's own port choice may reuse it.
func exchangeFromPort(st lab.State, from, network string, port int, addr string, i int) error {
	d := net.Dialer{Timeout: time.Second}
	if port != 0 {
		d.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
			}); err != nil {
				return err
			}
			return serr
		}
		if network == "udp4" {
			d.LocalAddr = &net.UDPAddr{Port: port}
		} else {
			d.LocalAddr = &net.TCPAddr{Port: port}
		}
	}
	var conn net.Conn
	err := st.Do(from, func() error {
		var err error
		conn, err = d.Dial(network, addr)
		return err
	})
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(time.Second))
	msg := fmt.Sprintf("request %d from %s\n", i, from)
	if _, err := conn.Write([]byte(msg)); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(conn, buf); err != nil {
		return err
	}
	if string(buf) != msg {
		return fmt.Errorf("echo %q, want %q", buf, msg)
	}
	return nil
}

func (c kubeCluster) counters(t *testing.T, node string) []datapath.Counter {
	t.Helper()
	return labtest.Counters(t, mustNode(t, c.st, node))
}

// tracked is how many packets node's programs left to the kernel's
// conntrack (reason ct_tracked), over both programs and families.
func tracked(t *testing.T, n lab.Node) uint64 {
	t.Helper()
	cs := labtest.Counters(t, n)
	return datapath.Packets(cs, "from_pods", "ct_tracked") + datapath.Packets(cs, "from_underlay", "ct_tracked")
}

// A ClusterIP connection's replies must be un-NATed by the client node's
// conntrack: with the check on, every connection works and the replies are
// counted as ct_nat; direct pod-to-pod connections stay fast.
func TestClusterIPThroughConntrack(t *testing.T) {
	ctx := testContext(t, 2*time.Minute)
	c := startKubeCluster(t, ctx, lab.DatapathEBPF)
	before := c.counters(t, c.clientNode)

	const conns = 100
	failed := 0
	for i := range conns {
		if err := c.exchange("tcp4", fmt.Sprintf("%s:%d", clusterIP, clusterPort), i); err != nil {
			failed++
			t.Logf("connection %d via ClusterIP: %v", i, err)
		}
	}
	if failed > 0 {
		t.Fatalf("%d of %d ClusterIP connections failed", failed, conns)
	}
	mid := c.counters(t, c.clientNode)
	if d := datapath.Packets(datapath.Delta(before, mid), "from_underlay", "ct_nat"); d < conns {
		t.Errorf("from_underlay ct_nat moved by %d, want >= %d (one per reply at least)", d, conns)
	}

	// Direct pod-to-pod: fast, and conntrack never hears of it.
	for i := range 20 {
		if err := c.exchange("tcp4", fmt.Sprintf("%s:%d", c.server.IP, serverPort), i); err != nil {
			t.Fatalf("direct connection %d: %v", i, err)
		}
	}
	direct := datapath.Delta(mid, c.counters(t, c.clientNode))
	if d := datapath.Packets(direct, "from_pods", "redirect"); d < 20*3 {
		t.Errorf("from_pods redirected %d packets of 20 direct connections, want >= 60", d)
	}
	// Into a known pod with redirect_peer, else through the bridge.
	if d := datapath.Redirected(direct, "from_underlay"); d < 20*2 {
		t.Errorf("from_underlay redirected %d packets of 20 direct connections, want >= 40", d)
	}
	for _, prog := range []string{"from_pods", "from_underlay"} {
		if d := datapath.Packets(direct, prog, "ct_tracked"); d != 0 {
			t.Errorf("%s/ct_tracked moved by %d during direct connections, want 0", prog, d)
		}
	}
}

// A pod's kernel picks source ports per destination, so a direct
// connection to a backend may reuse the source port of an earlier
// ClusterIP connection to the same backend, whose conntrack entry (in
// TIME_WAIT, or a UDP flow's timeout) has the new flow's reply as its own
// reply. The new flow must then take the kernel path at the client node,
// where NAT gives it another source port, instead of having its replies
// un-NATed as the old connection's.
func TestDirectFlowReusingAClusterIPSourcePort(t *testing.T) {
	ctx := testContext(t, 2*time.Minute)
	c := startKubeCluster(t, ctx, lab.DatapathEBPF)
	for i, tc := range []struct {
		network, service, direct string
	}{
		{"tcp4", fmt.Sprintf("%s:%d", clusterIP, clusterPort), fmt.Sprintf("%s:%d", c.server.IP, serverPort)},
		{"udp4", fmt.Sprintf("%s:%d", dnsClusterIP, dnsPort), fmt.Sprintf("%s:%d", c.server.IP, udpPort)},
	} {
		port := 40100 + i
		if err := exchangeFromPort(c.st, c.client.Name, tc.network, port, tc.service, 0); err != nil {
			t.Fatalf("%s via the service from port %d: %v", tc.network, port, err)
		}
		if err := exchangeFromPort(c.st, c.client.Name, tc.network, port, tc.direct, 1); err != nil {
			t.Errorf("%s direct to %s from port %d, just used for the service: %v", tc.network, tc.direct, port, err)
		}
	}
}

// The same ClusterIP connections with the conntrack check off break: the
// replies reach the client from the backend's address. This proves the
// test above sees the bug it guards against.
func TestClusterIPBreaksWithoutConntrackCheck(t *testing.T) {
	ctx := testContext(t, 2*time.Minute)
	c := startKubeCluster(t, ctx, lab.DatapathEBPF, "--unsafe-ignore-conntrack")
	ok := 0
	for i := range 5 {
		if c.exchange("tcp4", fmt.Sprintf("%s:%d", clusterIP, clusterPort), i) == nil {
			ok++
		}
	}
	if ok != 0 {
		t.Fatalf("%d of 5 ClusterIP connections worked without the conntrack check; the test cannot see the bug", ok)
	}
}

// UDP through a "DNS" ClusterIP: a connected UDP socket only accepts
// replies from the ClusterIP, so an un-NATed reply is lost.
func TestUDPClusterIPThroughConntrack(t *testing.T) {
	ctx := testContext(t, 2*time.Minute)
	c := startKubeCluster(t, ctx, lab.DatapathEBPF)
	before := c.counters(t, c.clientNode)
	for i := range 20 {
		if err := c.exchange("udp4", fmt.Sprintf("%s:%d", dnsClusterIP, dnsPort), i); err != nil {
			t.Fatalf("UDP query %d via ClusterIP: %v", i, err)
		}
	}
	if d := datapath.Packets(datapath.Delta(before, c.counters(t, c.clientNode)), "from_underlay", "ct_nat"); d < 20 {
		t.Errorf("from_underlay ct_nat moved by %d, want >= 20", d)
	}
}

// A long TCP transfer that starts on plain routes keeps working when the
// agents move the nodes onto the fast path in the middle of it: conntrack
// already tracks the flow, so it stays on the kernel path (ct_tracked)
// instead of splitting and being dropped as INVALID.
func TestTransferSurvivesSwitchToFastPath(t *testing.T) {
	ctx := testContext(t, 2*time.Minute)
	c := startKubeCluster(t, ctx, lab.DatapathRoutes)

	wait := startIperf(t, c.st, c.server.Name, 5201, c.client.Name, c.server.IP, 5201, 6)
	time.Sleep(2 * time.Second)
	if err := c.lab.SwitchDatapath(ctx, lab.DatapathEBPF); err != nil {
		t.Fatal(err)
	}
	if err := waitAttached(ctx, c.st.Nodes...); err != nil {
		t.Fatal(err)
	}
	res, err := wait()
	if err != nil {
		t.Fatalf("across the switch: %v", err)
	}
	if len(res.Intervals) < 10 {
		t.Fatalf("iperf3: %d intervals, want 12", len(res.Intervals))
	}
	for _, i := range res.stalls() {
		t.Errorf("interval %d moved no bytes: the transfer stalled", i)
	}
	for _, n := range c.st.Nodes {
		if tracked(t, n) == 0 {
			t.Errorf("%s: the running transfer was never recognised as tracked (ct_tracked = 0)", n.Name)
		}
	}
}

// waitAttached waits until the nodes' agents have attached both programs.
func waitAttached(ctx context.Context, nodes ...lab.Node) error {
	for _, n := range nodes {
		if _, ok := waitFor(ctx, 10*time.Second, func() bool {
			atts, err := datapath.Attachments(n.PinRoot)
			return err == nil && len(atts) >= 2
		}); !ok {
			return fmt.Errorf("%s: programs not attached 10 s after the switch", n.Name)
		}
	}
	return nil
}
