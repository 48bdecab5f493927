package lab

import (
	"context"
	"fmt"
	"time"
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
