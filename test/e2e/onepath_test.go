package e2e

import (
	"errors"
	"fmt"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
	"github.com/hgw-ebpf/hgw-ebpf/internal/lab"
)

// A pod talking TCP to another node's own address (hostNetwork: a
// node-local agent, the API server), on nodes that masquerade nothing: the
// node's replies reach the pod's node with the node's address as their
// source, and take the kernel path there, where conntrack saw the pod's
// SYN, so kube-proxy's INVALID rule (on both nodes here) lets the flow
// through. Were the replies fast-pathed into the pod, that conntrack would
// see the pod's SYN and ACK but never the SYN-ACK, and drop the ACK as
// INVALID. The other direction, a node talking to a remote pod, is
// TestRealNodeTraffic's node_to_remote_pod.
func TestPodAndRemoteNodeTalkThroughTheKernel(t *testing.T) {
	ctx := testContext(t, 2*time.Minute)
	c := startKubeCluster(t, ctx, lab.DatapathEBPF)
	podNode := c.server.Node
	client, _ := c.st.Node(c.clientNode)
	serveEchoIn(t, c.st, c.clientNode)
	before := c.counters(t, podNode)

	const conns = 10
	for i := range conns {
		if err := exchangeFrom(c.st, c.server.Name, "tcp4", fmt.Sprintf("%s:%d", client.IP, serverPort), i); err != nil {
			t.Errorf("pod %s -> node %s, connection %d: %v", c.server.IP, client.IP, i, err)
		}
	}
	moved := datapath.Delta(before, c.counters(t, podNode))
	// The node's SYN-ACK and its echo of the line, at least: the pod had
	// both before its exchange returned.
	if d := datapath.Packets(moved, "from_underlay", "src_not_pod"); d < 2*conns {
		t.Errorf("%s: from_underlay src_not_pod moved by %d, want >= %d", podNode, d, 2*conns)
	}
	for _, k := range []struct{ prog, reason string }{{"from_underlay", "redirect"}, {"from_underlay", "redirect_peer"}, {"from_pods", "redirect"}} {
		if d := datapath.Packets(moved, k.prog, k.reason); d != 0 {
			t.Errorf("%s: %s/%s moved by %d: part of a node's flow took the fast path", podNode, k.prog, k.reason, d)
		}
	}
}

// A UDP datagram to a port nobody listens on in a pod on another node: the
// ICMP port unreachable comes back to the client, which sees ECONNREFUSED.
// The flow took the fast path, so its error does too: through the kernel,
// conntrack would meet an error about a flow it never saw and kube-proxy's
// INVALID rule (on both nodes here) would drop it.
func TestPortUnreachableReachesARemotePod(t *testing.T) {
	ctx := testContext(t, 2*time.Minute)
	c := startKubeCluster(t, ctx, lab.DatapathEBPF)
	before := c.counters(t, c.clientNode)
	const tries = 5
	for i := range tries {
		err := c.st.Do(c.client.Name, func() error {
			conn, err := net.Dial("udp4", net.JoinHostPort(c.server.IP, "9"))
			if err != nil {
				return err
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(time.Second))
			if _, err := conn.Write([]byte("anyone?")); err != nil {
				return err
			}
			_, err = conn.Read(make([]byte, 16))
			return err
		})
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("datagram %d to a closed port of %s: %v, want connection refused", i, c.server.IP, err)
		}
	}
	if d := datapath.Redirected(datapath.Delta(before, c.counters(t, c.clientNode)), "from_underlay"); d < tries {
		t.Errorf("%s: from_underlay redirected %d packets, want the %d port unreachables at least", c.clientNode, d, tries)
	}
}
