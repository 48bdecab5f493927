package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

const udpLoadPort = 7001

// udpLoad is the fixed offered load of the CPU-per-packet figure.
type udpLoad struct {
	PPS     int
	Payload int // bytes of UDP payload
}

// cpuPerPacket offers load from the client to the server for d and returns
// the machine's kernel and busy CPU time during the run per packet the
// server received (see PerPacket), and the share of sent packets received.
//
// Sender and receiver are this process's own sockets (made on threads in
// the client's and the server's namespace) and move packets in batches
// (sendmmsg/recvmmsg), sleeping between them: iperf3's UDP sender spins
// on the rate limiter and would add a whole busy CPU (~20 µs per packet
// at 50k pps) to every datapath's figure, hiding their difference.
func cpuPerPacket(ctx context.Context, p path, d time.Duration, load udpLoad) (kernelNs, busyNs, delivered float64, err error) {
	addr := net.JoinHostPort(p.ServerIP, strconv.Itoa(udpLoadPort))
	var rc net.PacketConn
	err = p.St.Do(p.Server, func() error {
		var lc net.ListenConfig
		var err error
		rc, err = lc.ListenPacket(ctx, "udp", addr) // the family of the server's address
		return err
	})
	if err != nil {
		return 0, 0, 0, fmt.Errorf("listen on udp %s in %s: %w", addr, p.Server, err)
	}
	var received atomic.Int64
	var wg sync.WaitGroup
	wg.Go(func() { countDatagrams(rc, &received) })
	defer func() {
		rc.Close()
		wg.Wait()
	}()

	var sent int64
	var before, after CPUTimes
	err = p.St.Do(p.Client, func() error {
		var dl net.Dialer
		c, err := dl.DialContext(ctx, "udp", addr)
		if err != nil {
			return fmt.Errorf("dial udp %s: %w", addr, err)
		}
		defer c.Close()
		if before, err = readCPUTimes(); err != nil {
			return err
		}
		sent, err = offer(ctx, newBatchConn(c.(*net.UDPConn)), load, d)
		return err
	})
	if err != nil {
		return 0, 0, 0, fmt.Errorf("offer %d pps from %s: %w", load.PPS, p.Client, err)
	}
	// Let the last batches land before reading the counters.
	time.Sleep(50 * time.Millisecond)
	if after, err = readCPUTimes(); err != nil {
		return 0, 0, 0, err
	}
	got := received.Load()
	kernelNs, busyNs, err = PerPacket(before, after, got)
	if err != nil {
		return 0, 0, 0, err
	}
	return kernelNs, busyNs, float64(got) / float64(max(sent, 1)), nil
}

// offer sends load.PPS datagrams a second for d, in one batch per
// millisecond tick: the number due so far minus those sent, so timer
// jitter does not change the average rate.
func offer(ctx context.Context, pc batchConn, load udpLoad, d time.Duration) (int64, error) {
	const maxBatch = 512
	payload := make([]byte, load.Payload)
	msgs := make([]ipv4.Message, maxBatch)
	for i := range msgs {
		msgs[i].Buffers = [][]byte{payload}
	}
	start := time.Now()
	var sent int64
	for {
		elapsed := time.Since(start)
		if elapsed >= d || ctx.Err() != nil {
			return sent, ctx.Err()
		}
		due := int64(elapsed.Seconds()*float64(load.PPS)) - sent
		for due > 0 {
			n, err := pc.WriteBatch(msgs[:min(due, maxBatch)], 0)
			if err != nil {
				return sent, fmt.Errorf("sendmmsg: %w", err)
			}
			sent += int64(n)
			due -= int64(n)
		}
		time.Sleep(time.Millisecond)
	}
}

// batchConn is the batch API (sendmmsg, recvmmsg) of x/net's ipv4 and
// ipv6 PacketConns, whose Message is one type.
type batchConn interface {
	ReadBatch(ms []ipv4.Message, flags int) (int, error)
	WriteBatch(ms []ipv4.Message, flags int) (int, error)
}

// newBatchConn is c's batch API for its family.
func newBatchConn(c net.PacketConn) batchConn {
	if a, ok := c.LocalAddr().(*net.UDPAddr); ok && a.IP.To4() == nil {
		return ipv6.NewPacketConn(c)
	}
	return ipv4.NewPacketConn(c)
}

// countDatagrams counts what arrives until the socket is closed. It drains
// the socket once per millisecond, like the sender fills it: a receiver
// woken for every datagram would add a wake-up per packet to the figure.
func countDatagrams(c net.PacketConn, n *atomic.Int64) {
	if uc, ok := c.(*net.UDPConn); ok {
		_ = uc.SetReadBuffer(4 << 20) // capped by net.core.rmem_max; ~5 ms of load fits the default
	}
	pc := newBatchConn(c)
	msgs := make([]ipv4.Message, 512)
	for i := range msgs {
		msgs[i].Buffers = [][]byte{make([]byte, 2048)}
	}
	for {
		k, err := pc.ReadBatch(msgs, 0) // the socket is non-blocking: whatever is queued, or wait for one
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err == nil {
			n.Add(int64(k))
			if k == len(msgs) {
				continue // more may be queued
			}
		}
		time.Sleep(time.Millisecond)
	}
}
