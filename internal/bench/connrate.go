package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"
)

// connRate opens TCP connections one after another from the client
// namespace to a server in the server namespace for d, and returns the
// completed connections per second. Each connection is a full
// transaction: handshake, one byte from the server, close. The client
// closes with an RST (linger 0), so no TIME_WAIT socket piles up and ports
// never run out across rounds; every connection still creates (and, on a
// kube node, NATs and matches) a fresh conntrack entry, which is the cost
// this figure exists to show.
//
// Both ends are sockets of this process: a socket belongs to the network
// namespace of the thread that created it, so the listener and each dial
// are made on a thread inside the right namespace (State.Do).
func connRate(ctx context.Context, p path, d time.Duration) (float64, error) {
	addr := net.JoinHostPort(p.ServerIP, strconv.Itoa(connPort))
	var ln net.Listener
	err := p.St.Do(p.Server, func() error {
		var lc net.ListenConfig
		var err error
		ln, err = lc.Listen(ctx, "tcp", addr) // the family of the server's address
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("listen on %s in %s: %w", addr, p.Server, err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { serveOneByte(ln) })
	defer func() {
		ln.Close()
		wg.Wait()
	}()

	var n, failed int
	var firstErr error
	var elapsed time.Duration
	err = p.St.Do(p.Client, func() error {
		dialer := net.Dialer{Timeout: time.Second}
		start := time.Now()
		end := start.Add(d)
		buf := make([]byte, 1)
		for time.Now().Before(end) && ctx.Err() == nil {
			if err := oneConn(ctx, &dialer, addr, buf); err != nil {
				failed++
				if firstErr == nil {
					firstErr = err
				}
				continue
			}
			n++
		}
		elapsed = time.Since(start)
		return nil
	})
	if err != nil {
		return 0, err
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	// A path that drops connections must not look fast: more than 1 % lost
	// makes the sample an error.
	if failed*100 > n+failed {
		return 0, fmt.Errorf("%d of %d connections failed: %w", failed, n+failed, firstErr)
	}
	return float64(n) / elapsed.Seconds(), nil
}

func oneConn(ctx context.Context, d *net.Dialer, addr string, buf []byte) error {
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	tc := c.(*net.TCPConn)
	defer tc.Close()
	_ = tc.SetDeadline(time.Now().Add(time.Second))
	if _, err := io.ReadFull(tc, buf); err != nil {
		return fmt.Errorf("read from %s: %w", addr, err)
	}
	return tc.SetLinger(0)
}

// serveOneByte answers every connection with one byte and closes it, until
// the listener is closed.
func serveOneByte(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			time.Sleep(time.Millisecond) // e.g. EMFILE: do not spin
			continue
		}
		_, _ = c.Write([]byte{1})
		_ = c.Close()
	}
}
