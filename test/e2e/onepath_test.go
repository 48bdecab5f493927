package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/hgw-ebpf/hgw-ebpf/pkg/lab"
)

// A node's own network namespace (hostNetwork: the API server calling a
// webhook, a node-local agent) talking TCP to a pod on another node, and
// the pod talking to that node: the flow takes the kernel path both ways
// at the pod's node, so conntrack sees it whole and kube-proxy's INVALID
// rule (on both nodes here) lets it through. Were the SYN fast-pathed into
// the pod, conntrack would meet the SYN-ACK first and drop it as INVALID.
func TestNodeAndRemotePodTalkThroughTheKernel(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := startKubeCluster(t, ctx, lab.DatapathEBPF)
	podNode := c.server.Node
	client, _ := c.st.Node(c.clientNode)
	serveEchoIn(t, c.st, c.clientNode)
	before := c.counters(t, podNode)

	const conns = 10
	for i := range conns {
		if err := exchangeFrom(c.st, c.clientNode, "tcp4", fmt.Sprintf("%s:%d", c.server.IP, serverPort), i); err != nil {
			t.Errorf("node %s -> pod %s, connection %d: %v", c.clientNode, c.server.IP, i, err)
		}
		if err := exchangeFrom(c.st, c.server.Name, "tcp4", fmt.Sprintf("%s:%d", client.IP, serverPort), i); err != nil {
			t.Errorf("pod %s -> node %s, connection %d: %v", c.server.IP, client.IP, i, err)
		}
	}
	after := c.counters(t, podNode)
	// The node's SYNs, ACKs, data: at least three packets a connection.
	if d := after["from_underlay/src_not_pod"] - before["from_underlay/src_not_pod"]; d < 3*conns {
		t.Errorf("%s: from_underlay src_not_pod moved by %d, want >= %d", podNode, d, 3*conns)
	}
	for _, k := range []string{"from_underlay/redirect", "from_underlay/redirect_peer", "from_pods/redirect"} {
		if after[k] != before[k] {
			t.Errorf("%s: %s moved by %d: part of a node's flow took the fast path", podNode, k, after[k]-before[k])
		}
	}
}
