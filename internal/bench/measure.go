package bench

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hgw-ebpf/hgw-ebpf/internal/lab"
	"github.com/hgw-ebpf/hgw-ebpf/internal/logtail"
)

// Ports the servers listen on, on the server's address only.
const (
	iperfPort    = 5201
	sockperfPort = 11111
	connPort     = 7000
)

// server is a helper process in a lab namespace, stopped by its PID.
type server struct {
	cmd *exec.Cmd
	out lab.LimitedBuffer
}

// startServer starts argv in p's server namespace and waits until it
// listens on port (proto "tcp" or "udp").
func startServer(ctx context.Context, p path, proto string, port int, argv ...string) (*server, error) {
	s := &server{cmd: exec.Command(argv[0], argv[1:]...)}
	s.cmd.Stdout, s.cmd.Stderr = &s.out, &s.out
	if err := p.St.Start(p.Server, s.cmd); err != nil {
		return nil, err
	}
	if err := waitListening(ctx, p, proto, port); err != nil {
		s.stop()
		return nil, fmt.Errorf("%s: %w; it said: %s", argv[0], err, s.out.String())
	}
	return s, nil
}

// stop kills the server by PID and reaps it.
func (s *server) stop() {
	_ = s.cmd.Process.Signal(syscall.SIGKILL)
	_ = s.cmd.Wait()
}

// waitListening polls `ss` in the server namespace for a listening socket:
// a client started earlier would count a refused connection as a sample.
func waitListening(ctx context.Context, p path, proto string, port int) error {
	flag := "-Hltn"
	if proto == "udp" {
		flag = "-Hlun"
	}
	want := ":" + strconv.Itoa(port)
	deadline := time.Now().Add(3 * time.Second)
	for {
		out, err := p.St.Output(ctx, p.Server, "ss", flag)
		if err == nil {
			for _, line := range strings.Split(out, "\n") {
				f := strings.Fields(line)
				if len(f) >= 4 && strings.HasSuffix(f[3], want) {
					return nil
				}
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not listening on %s port %d after 3s", proto, port)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(30 * time.Millisecond):
		}
	}
}

// run runs argv in the client namespace with a deadline and returns its
// output.
func run(ctx context.Context, p path, timeout time.Duration, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	out, err := p.St.Output(ctx, p.Client, argv...)
	if err != nil {
		if ctx.Err() != nil {
			err = errors.Join(err, fmt.Errorf("timed out after %s", timeout))
		}
		return out, fmt.Errorf("%s: %w\n%s", argv[0], err, logtail.Lines(out, 5))
	}
	return out, nil
}

// tcpThroughput is one iperf3 TCP stream's goodput in Gbit/s.
func tcpThroughput(ctx context.Context, p path, d time.Duration) (float64, error) {
	srv, err := startServer(ctx, p, "tcp", iperfPort, "iperf3", "--server", "--one-off", "--bind", p.ServerIP, "--port", strconv.Itoa(iperfPort))
	if err != nil {
		return 0, err
	}
	defer srv.stop()
	out, err := run(ctx, p, d+15*time.Second, "iperf3", "--client", p.ServerIP, "--port", strconv.Itoa(iperfPort),
		"--time", seconds(d), "--json", "--connect-timeout", "3000")
	if err != nil {
		return 0, err
	}
	s, err := ParseIperf3([]byte(out))
	if err != nil {
		return 0, err
	}
	return s.BitsPerSecond / 1e9, nil
}

// latency is one sockperf ping-pong, client and server pinned to the same
// CPU: the round trip is then the CPU path length of one transaction, not
// the scheduler's wake-up luck: it repeats within ±0.5 % run to run, where
// unpinned it wanders ±20 %. IPv6
// paths take pingPong, the same exchange without sockperf, whose Debian
// 12 version has no IPv6.
func latency(ctx context.Context, p path, proto string, d time.Duration, cpu int) (Latency, error) {
	if _, v6 := family(p.Datapath); v6 {
		return pingPong(ctx, p, proto, d, cpu)
	}
	pin := []string{"taskset", "--cpu-list", strconv.Itoa(cpu)}
	srvArgs := append(pin, "sockperf", "server", "--ip", p.ServerIP, "--port", strconv.Itoa(sockperfPort))
	cliArgs := append(append([]string(nil), pin...), "sockperf", "ping-pong", "--ip", p.ServerIP,
		"--port", strconv.Itoa(sockperfPort), "--time", seconds(d), "--full-rtt")
	if proto == "tcp" {
		srvArgs = append(srvArgs, "--tcp")
		cliArgs = append(cliArgs, "--tcp")
	}
	srv, err := startServer(ctx, p, proto, sockperfPort, srvArgs...)
	if err != nil {
		return Latency{}, err
	}
	defer srv.stop()
	out, err := run(ctx, p, d+15*time.Second, cliArgs...)
	if err != nil {
		return Latency{}, err
	}
	return ParseSockperf(out)
}

// seconds formats d for tools that take whole seconds (at least 1).
func seconds(d time.Duration) string {
	return strconv.Itoa(max(1, int(d.Round(time.Second)/time.Second)))
}
