package lab

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/hgw-ebpf/hgw-ebpf/internal/namedns"
	"github.com/hgw-ebpf/hgw-ebpf/internal/registry"
)

// Datapaths a lab can run.
const (
	DatapathEBPF   = "ebpf"   // hgw-ebpf run: kernel routes + fast path
	DatapathRoutes = "routes" // hgw-ebpf run --datapath routes: plain flannel host-gw
	// DatapathStatic runs no agent: the lab writes the subnet files, leases
	// and routes itself. It tests the topology on its own.
	DatapathStatic = "static"
)

// The agents a node can run.
const (
	AgentHgw      = "hgw-ebpf" // hgw-ebpf run, with the lab's datapath
	AgentFlanneld = "flanneld" // the real flanneld, host-gw backend, on the lab's registry
)

// agentProc is one supervised agent process.
type agentProc struct {
	cancel context.CancelFunc // stops the supervisor from restarting it
	done   chan struct{}      // closed when the supervisor has returned
	sigc   chan syscall.Signal
}

// agentArgs are the flags of node n's agent. Every node has its own pin
// directory: bpffs is shared by all namespaces, so the default /sys/fs/bpf/hgw
// would be one node's state seen by all.
func (l *Lab) agentArgs(n Node) []string {
	args := append([]string{"run"}, l.registryArgs()...)
	args = append(args,
		"--iface", nodeUplink,
		"--public-ip", n.IP,
		"--subnet-file", n.SubnetFile,
		"--bridge", podBridge,
		"--datapath", l.datapath(),
		"--bpffs-root", n.PinRoot,
		"--resync-interval", l.cfg.ResyncInterval.String(),
		"--log-format", "text",
	)
	if l.cfg.AttachMode != "" {
		args = append(args, "--attach-mode", l.cfg.AttachMode)
	}
	if l.cfg.IPMasq {
		args = append(args, "--ip-masq")
	}
	return append(args, l.cfg.AgentArgs...)
}

// agentCommand is the command node n's agent runs. NODE_NAME names its
// Node, as the DaemonSets' downward API does (read in kube labs).
func (l *Lab) agentCommand(n Node) *exec.Cmd {
	cmd := exec.Command(l.agentBin, l.agentArgs(n)...)
	if n.Agent == AgentFlanneld {
		cmd = exec.Command(l.cfg.Flanneld, l.flanneldArgs(n)...)
	}
	cmd.Env = append(os.Environ(), "NODE_NAME="+n.Name)
	return cmd
}

// startProcess starts cmd inside the named namespace: the fork happens on a
// thread that has joined it, so the child is born there. Unlike `ip netns
// exec` this keeps the mount namespace, so /sys/fs/bpf stays visible.
//
// Unless the caller chose otherwise, the child gets SIGKILL when the thread
// that forked it ends, which for us means when this process dies: a crashed
// lab or test leaves no helper behind. (The forking thread goes back to the
// Go runtime, which keeps its threads for the life of the process.)
func startProcess(ns string, cmd *exec.Cmd) error {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	if cmd.SysProcAttr.Pdeathsig == 0 {
		cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	}
	if err := namedns.Do(ns, cmd.Start); err != nil {
		return fmt.Errorf("start %s in %s: %w", filepath.Base(cmd.Path), ns, err)
	}
	return nil
}

// startAgent launches node n's agent once, logging to its agent.log.
func (l *Lab) startAgent(n Node) (*exec.Cmd, error) {
	logf, err := os.OpenFile(n.AgentLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open agent log: %w", err)
	}
	defer logf.Close() // the child has its own copy
	cmd := l.agentCommand(n)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Own process group: a Ctrl-C on the lab's terminal reaches the lab,
	// which stops the agents in order, not the agents directly.
	// SIGTERM when the lab process dies: the agent stops as on a normal
	// shutdown, leaving its pins for the next `up` or `down` to remove.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	fmt.Fprintf(logf, "--- hgw-lab: starting %s %v\n", cmd.Path, cmd.Args[1:])
	if err := startProcess(n.Name, cmd); err != nil {
		return nil, err
	}
	start, err := procStart(cmd.Process.Pid)
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, fmt.Errorf("agent of %s exited at once (see %s)", n.Name, n.AgentLog)
	}
	l.updateNode(n.Name, func(st *Node) { st.AgentPID, st.AgentStart = cmd.Process.Pid, start })
	return cmd, nil
}

// superviseAgent keeps node's agent running until ctx ends: an agent that
// dies (a crash, a `kill -9` in a test) is restarted, after a pause that
// grows while it keeps dying quickly.
func (l *Lab) superviseAgent(ctx context.Context, n Node, p *agentProc) {
	defer close(p.done)
	pause := registry.NewBackoff(100*time.Millisecond, 5*time.Second)
	for {
		if ctx.Err() != nil {
			return
		}
		cmd, err := l.startAgent(n)
		if err != nil {
			l.log.Error("agent start failed", "node", n.Name, "err", err)
		} else {
			l.log.Info("agent started", "node", n.Name, "pid", cmd.Process.Pid)
			started := time.Now()
			waitc := make(chan error, 1)
			go func() { waitc <- cmd.Wait() }()
			var werr error
		wait:
			for {
				select {
				case werr = <-waitc:
					break wait
				case sig := <-p.sigc:
					_ = cmd.Process.Signal(sig)
				}
			}
			if ctx.Err() != nil {
				return
			}
			l.log.Warn("agent exited; restarting", "node", n.Name, "reason", werr, "log", n.AgentLog)
			if time.Since(started) > 10*time.Second {
				pause.Reset()
			}
		}
		if !pause.Sleep(ctx) {
			return
		}
	}
}

// runAgent starts supervising node n's agent.
func (l *Lab) runAgent(n Node) {
	ctx, cancel := context.WithCancel(l.ctx)
	p := &agentProc{cancel: cancel, done: make(chan struct{}), sigc: make(chan syscall.Signal, 1)}
	l.mu.Lock()
	l.agents[n.Name] = p
	l.mu.Unlock()
	go l.superviseAgent(ctx, n, p)
}

// stopAgent stops node's agent for good: SIGTERM (it leaves routes, maps
// and links in place), SIGKILL after grace.
func (l *Lab) stopAgent(node string, grace time.Duration) {
	l.mu.Lock()
	p := l.agents[node]
	delete(l.agents, node)
	l.mu.Unlock()
	if p == nil {
		return
	}
	p.cancel()
	select {
	case p.sigc <- syscall.SIGTERM:
	default:
	}
	start := time.Now()
	select {
	case <-p.done:
		return
	case <-time.After(grace):
	}
	l.log.Warn("agent did not stop within its grace period; killing it", "node", node, "grace", grace)
	select {
	case p.sigc <- syscall.SIGKILL:
	case <-p.done:
	}
	<-p.done
	// A killed process lingers while it is stuck in the kernel: say so, a
	// test waiting on it may time out for that reason.
	if d := time.Since(start); d > 2*grace {
		l.log.Warn("agent took long to die after SIGKILL", "node", node, "after", d.Round(time.Millisecond))
	}
}

// runCleanup runs `hgw-ebpf cleanup` for one node's pin directory inside
// the node's namespace (tc filters are found by device there).
func runCleanup(ctx context.Context, agentBin, ns, pinRoot string) error {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, agentBin, "cleanup", "--bpffs-root", pinRoot)
	out, err := runIn(ns, cmd)
	if err != nil {
		return fmt.Errorf("hgw-ebpf cleanup --bpffs-root %s: %w: %s", pinRoot, err, out)
	}
	return nil
}

// runIn runs cmd to completion inside the named namespace and returns its
// combined output.
func runIn(ns string, cmd *exec.Cmd) ([]byte, error) {
	var buf LimitedBuffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := startProcess(ns, cmd); err != nil {
		return nil, err
	}
	err := cmd.Wait()
	return buf.Bytes(), err
}

// StopAgent stops node's agent and keeps it stopped (the lab no longer
// restarts it) until StartAgent: SIGTERM, as an operator's `systemctl stop`,
// so routes, maps and program links stay in place.
func (l *Lab) StopAgent(node string) error {
	n, err := l.agentNode("stop", node)
	if err != nil {
		return err
	}
	l.stopAgent(n.Name, 5*time.Second)
	l.updateNode(n.Name, func(st *Node) { st.AgentPID, st.AgentStart = 0, 0 })
	return nil
}

// StartAgent starts (and supervises again) the agent of a node stopped by
// StopAgent; it does nothing if the agent runs.
func (l *Lab) StartAgent(node string) error {
	n, err := l.agentNode("start", node)
	if err != nil {
		return err
	}
	l.mu.Lock()
	_, running := l.agents[n.Name]
	l.mu.Unlock()
	if !running {
		l.runAgent(n)
	}
	return nil
}

// agentNode is the node whose agent op (start, stop) is asked for.
func (l *Lab) agentNode(op, node string) (Node, error) {
	n, ok := l.State().Node(node)
	if !ok {
		return Node{}, fmt.Errorf("%s agent: no node %q in lab %s", op, node, l.cfg.Prefix)
	}
	if l.datapath() == DatapathStatic {
		return Node{}, fmt.Errorf("%s agent of %s: a %s lab runs no agents", op, n.Name, DatapathStatic)
	}
	return n, nil
}

// agentReadyURL is the agent's /readyz at its default --metrics-addr,
// inside the node's namespace.
const agentReadyURL = "http://127.0.0.1:9742/readyz"

// RestartAgents restarts every node's agent with change made to the lab's
// configuration first (e.g. IPMasq), as an operator who changes a flag of
// the DaemonSet, and waits until every agent says it is ready.
func (l *Lab) RestartAgents(ctx context.Context, change func(*Config), timeout time.Duration) error {
	nodes := l.State().Nodes
	for _, n := range nodes {
		if err := l.StopAgent(n.Name); err != nil {
			return err
		}
	}
	change(&l.cfg) // no agent runs: nothing reads it meanwhile
	for _, n := range nodes {
		if err := l.StartAgent(n.Name); err != nil {
			return err
		}
	}
	return l.WaitAgentsReady(ctx, timeout)
}

// WaitAgentsReady waits until every node's agent answers /readyz with 200:
// its lease, routes and (ebpf) programs are in place.
func (l *Lab) WaitAgentsReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	st := l.State()
	for _, n := range st.Nodes {
		for {
			out, err := st.Output(ctx, n.Name, "curl", "-s", "-m", "1", "-o", "/dev/null", "-w", "%{http_code}", agentReadyURL)
			if err == nil && strings.TrimSpace(out) == "200" {
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("agent of %s not ready within %v: /readyz %q", n.Name, timeout, strings.TrimSpace(out))
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	return nil
}
