package bench

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

const pingPongPort = 11112

// pingPongSize is the message each side sends: sockperf ping-pong's
// default.
const pingPongSize = 64

// pingPongWarmUp is left out of the figures, as sockperf leaves its first
// 400 ms out.
const pingPongWarmUp = 400 * time.Millisecond

// pingPong measures round trips as sockperf's ping-pong does, for paths
// sockperf cannot take (Debian 12's sockperf 3.7 has no IPv6): a client
// thread sends a 64-byte message and waits for it back, a server thread
// echoes it, each with one blocking system call per direction, both
// threads pinned to cpu (see latency); for d after a
// warm-up. It returns the round trips' p50 and p99 in µs.
func pingPong(ctx context.Context, p path, proto string, d time.Duration, cpu int) (Latency, error) {
	ip, err := netip.ParseAddr(p.ServerIP)
	if err != nil {
		return Latency{}, fmt.Errorf("server address %q: %w", p.ServerIP, err)
	}
	sa := sockaddr(netip.AddrPortFrom(ip, pingPongPort))
	typ := unix.SOCK_STREAM
	if proto == "udp" {
		typ = unix.SOCK_DGRAM
	}
	family := unix.AF_INET6
	if ip.Is4() {
		family = unix.AF_INET
	}
	var (
		srv  int
		wg   sync.WaitGroup
		serr error
	)
	err = p.St.Do(p.Server, func() error {
		var err error
		srv, err = listenSocket(family, typ, sa)
		return err
	})
	if err != nil {
		return Latency{}, fmt.Errorf("ping-pong server on %s in %s: %w", p.ServerIP, p.Server, err)
	}
	wg.Go(func() {
		serr = p.St.Do(p.Server, func() error { return pinned(cpu, func() error { return echo(srv, typ) }) })
	})
	var rtts []time.Duration
	cerr := p.St.Do(p.Client, func() error {
		return pinned(cpu, func() error {
			var err error
			rtts, err = ping(ctx, family, typ, sa, d)
			return err
		})
	})
	unix.Close(srv) // ends an echo still waiting for a connection
	wg.Wait()
	if err := errors.Join(cerr, serr); err != nil {
		return Latency{}, fmt.Errorf("ping-pong %s -> %s: %w", p.Client, p.ServerIP, err)
	}
	if len(rtts) == 0 {
		return Latency{}, errors.New("ping-pong: no round trip after the warm-up")
	}
	slices.Sort(rtts)
	at := func(q float64) float64 { return float64(rtts[int(q*float64(len(rtts)-1))].Nanoseconds()) / 1e3 }
	return Latency{P50: at(0.50), P99: at(0.99)}, nil
}

func sockaddr(ap netip.AddrPort) unix.Sockaddr {
	if ap.Addr().Is4() {
		return &unix.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())}
	}
	return &unix.SockaddrInet6{Addr: ap.Addr().As16(), Port: int(ap.Port())}
}

// listenSocket is a bound (and for TCP listening) blocking socket whose
// reads give up after a second, so that no side waits for ever.
func listenSocket(family, typ int, sa unix.Sockaddr) (int, error) {
	fd, err := unix.Socket(family, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	err = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	if err == nil {
		err = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 1})
	}
	if err == nil {
		err = unix.Bind(fd, sa)
	}
	if err == nil && typ == unix.SOCK_STREAM {
		err = unix.Listen(fd, 1)
	}
	if err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// pinned runs fn on this OS thread, pinned to cpu, and unpins it after.
func pinned(cpu int, fn func() error) error {
	var was, set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &was); err != nil {
		return fmt.Errorf("CPU affinity: %w", err)
	}
	set.Set(cpu)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		return fmt.Errorf("pin to CPU %d: %w", cpu, err)
	}
	defer unix.SchedSetaffinity(0, &was)
	return fn()
}

// echo sends every message back until the client is done: the TCP
// connection closes, or a UDP message of one byte says so.
func echo(fd, typ int) error {
	buf := make([]byte, pingPongSize)
	if typ == unix.SOCK_STREAM {
		var c int
		err := noEINTR(func() (err error) { c, _, err = unix.Accept(fd); return err })
		if err != nil {
			return fmt.Errorf("accept: %w", err)
		}
		defer unix.Close(c)
		if err := unix.SetsockoptInt(c, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
			return err
		}
		for {
			var n int
			err := noEINTR(func() (err error) { n, err = unix.Read(c, buf); return err })
			if n <= 0 || err != nil {
				return nil // the client closed (or went quiet)
			}
			if err := noEINTR(func() error { _, err := unix.Write(c, buf[:n]); return err }); err != nil {
				return fmt.Errorf("echo: %w", err)
			}
		}
	}
	for {
		var (
			n    int
			from unix.Sockaddr
		)
		err := noEINTR(func() (err error) { n, from, err = unix.Recvfrom(fd, buf, 0); return err })
		if err != nil {
			return nil // quiet for a second: the client is gone
		}
		if n == 1 {
			return nil
		}
		if err := noEINTR(func() error { return unix.Sendto(fd, buf[:n], 0, from) }); err != nil {
			return fmt.Errorf("echo: %w", err)
		}
	}
}

// noEINTR runs a system call again while a signal interrupts it (the Go
// runtime preempts its threads with signals).
func noEINTR(call func() error) error {
	for {
		if err := call(); !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

// ping sends and waits for the echo, one message at a time, for the
// warm-up and then d, and returns the round trips after the warm-up.
func ping(ctx context.Context, family, typ int, to unix.Sockaddr, d time.Duration) ([]time.Duration, error) {
	fd, err := unix.Socket(family, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 1}); err != nil {
		return nil, err
	}
	if typ == unix.SOCK_STREAM {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
			return nil, err
		}
	}
	if err := noEINTR(func() error { return unix.Connect(fd, to) }); err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	if typ == unix.SOCK_DGRAM {
		defer unix.Write(fd, []byte{0}) // done
	}
	msg, buf := make([]byte, pingPongSize), make([]byte, pingPongSize)
	var rtts []time.Duration
	start := time.Now()
	for ctx.Err() == nil {
		t0 := time.Now()
		if t0.Sub(start) >= pingPongWarmUp+d {
			return rtts, nil
		}
		if err := noEINTR(func() error { _, err := unix.Write(fd, msg); return err }); err != nil {
			return nil, fmt.Errorf("send: %w", err)
		}
		for got := 0; got < len(buf); {
			var n int
			err := noEINTR(func() (err error) { n, err = unix.Read(fd, buf[got:]); return err })
			if err != nil || n <= 0 {
				return nil, fmt.Errorf("no echo within a second: %v", err)
			}
			got += n
		}
		if t0.Sub(start) >= pingPongWarmUp {
			rtts = append(rtts, time.Since(t0))
		}
	}
	return nil, ctx.Err()
}
