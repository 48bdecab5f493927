package lab

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"sync"

	"github.com/hgw-ebpf/hgw-ebpf/internal/namedns"
)

// LimitedBuffer keeps the first 64 KiB written to it: enough for any
// error message, bounded for a chatty command. It is safe for the
// goroutines os/exec copies a command's output with, and for reading
// while the command runs.
type LimitedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

const outputLimit = 64 << 10

func (b *LimitedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if room := outputLimit - b.buf.Len(); room > 0 {
		b.buf.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

// Bytes is a copy of what was kept.
func (b *LimitedBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf.Bytes())
}

func (b *LimitedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Resolve maps a user's name for a lab namespace to the namespace: a node
// or pod by full name ("hgwlab-n1-p2") or short name ("n1-p2"), "ul" /
// "underlay", or "inet" / "internet".
func (s State) Resolve(target string) (string, error) {
	switch target {
	case "underlay":
		target = "ul"
	case "internet":
		target = "inet"
	}
	full := target
	if !strings.HasPrefix(target, s.Prefix+"-") {
		full = s.Prefix + "-" + target
	}
	if full == s.Underlay || (s.Internet != "" && full == s.Internet) {
		return full, nil
	}
	if _, ok := s.Node(full); ok {
		return full, nil
	}
	if _, ok := s.Pod(full); ok {
		return full, nil
	}
	return "", fmt.Errorf("no node or pod %q in lab %s", target, s.Prefix)
}

// Exec runs argv inside a lab namespace (see State.Resolve) with the given
// standard streams, until it exits or ctx ends.
func (s State) Exec(ctx context.Context, target string, argv []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(argv) == 0 {
		return fmt.Errorf("exec: no command")
	}
	ns, err := s.Resolve(target)
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, stdout, stderr
	if err := startProcess(ns, cmd); err != nil {
		return err
	}
	return cmd.Wait()
}

// Output runs argv inside a lab namespace and returns its combined output.
func (s State) Output(ctx context.Context, target string, argv ...string) (string, error) {
	var buf LimitedBuffer
	err := s.Exec(ctx, target, argv, nil, &buf, &buf)
	return buf.String(), err
}

// Start starts cmd inside a lab namespace (see State.Resolve) without
// waiting: for helpers such as an iperf3 server, which the caller stops by
// PID (cmd.Process) and then waits for.
func (s State) Start(target string, cmd *exec.Cmd) error {
	ns, err := s.Resolve(target)
	if err != nil {
		return err
	}
	return startProcess(ns, cmd)
}

// Do runs fn on a thread inside a lab namespace (see State.Resolve), for
// netlink or BPF inspection code that works on "the current namespace".
func (s State) Do(target string, fn func() error) error {
	ns, err := s.Resolve(target)
	if err != nil {
		return err
	}
	return namedns.Do(ns, fn)
}
