package lab

import (
	"context"
	"fmt"
	"time"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
)

// SwitchDatapath restarts every node's agent with --datapath d (ebpf or
// routes), one node after the other, as an operator moving a running cluster
// onto or off the fast path would: each agent stops gracefully (routes and
// pins stay) and its successor takes over.
func (l *Lab) SwitchDatapath(ctx context.Context, d string) error {
	if d != DatapathEBPF && d != DatapathRoutes {
		return fmt.Errorf("switch datapath to %q: want %s or %s", d, DatapathEBPF, DatapathRoutes)
	}
	l.mu.Lock()
	if l.cfg.Datapath == DatapathStatic {
		l.mu.Unlock()
		return fmt.Errorf("switch datapath: a %s lab runs no agents", DatapathStatic)
	}
	l.cfg.Datapath = d
	var nodes []Node
	for _, n := range l.state.Nodes {
		if _, ok := l.agents[n.Name]; ok {
			nodes = append(nodes, n)
		}
	}
	l.mu.Unlock()
	for _, n := range nodes {
		if err := ctx.Err(); err != nil {
			return err
		}
		l.stopAgent(n.Name, 5*time.Second)
		l.runAgent(n)
		l.log.Info("agent restarted", "node", n.Name, "datapath", d)
	}
	return nil
}

// datapath is the agents' current --datapath.
func (l *Lab) datapath() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.cfg.Datapath
}

// MoveAgent moves node to agent (AgentHgw or AgentFlanneld) the way
// docs/migration.md tells an operator to. To hgw-ebpf: flanneld stops,
// leaving its routes, iptables rules, lease and subnet file for hgw-ebpf to
// take over.
// To flanneld: hgw-ebpf stops, `hgw-ebpf cleanup` removes its programs,
// pins, routes (and rules), and flanneld starts. Pods attached from then on
// get the new agent's CNI configuration. It returns once the new agent
// runs.
func (l *Lab) MoveAgent(ctx context.Context, node, agent string) error {
	n, err := l.agentNode("move", node)
	if err != nil {
		return err
	}
	switch {
	case agent != AgentHgw && agent != AgentFlanneld:
		return fmt.Errorf("move %s to agent %q: want %s or %s", n.Name, agent, AgentHgw, AgentFlanneld)
	case agent == n.Agent:
		return nil
	case agent == AgentFlanneld && l.cfg.Flanneld == "":
		return fmt.Errorf("move %s to flanneld: the lab has no flanneld binary (Config.Flanneld)", n.Name)
	}
	l.stopAgent(n.Name, 5*time.Second)
	if n.Agent == AgentHgw {
		if err := runCleanup(ctx, l.agentBin, n.Name, n.PinRoot); err != nil {
			return err
		}
	}
	if err := datapath.PreparePinRoot(n.PinRoot); err != nil {
		return fmt.Errorf("create pin dir: %w", err)
	}
	l.updateNode(n.Name, func(st *Node) { st.Agent, st.AgentPID, st.AgentStart = agent, 0, 0 })
	n, _ = l.State().Node(n.Name)
	if err := l.setCNINetwork(n); err != nil {
		return err
	}
	l.runAgent(n)
	l.log.Info("agent moved", "node", n.Name, "agent", agent)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if cur, _ := l.State().Node(n.Name); cur.AgentPID != 0 {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("move %s to %s: the agent did not start (see %s)", n.Name, agent, n.AgentLog)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
