package peers

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// conn is one NETLINK_ROUTE socket in the reconciler's namespace. Writes
// go out in windows of many requests, one system call each, before their
// acknowledgements are read: a round trip per window, not per route.
// vishvananda/netlink sends one request and waits for its answer, and has
// no nexthop messages at all; the messages are built with its nl package.
type conn struct {
	f    *os.File
	rc   syscall.RawConn
	seq  uint32
	buf  []byte    // receive buffer
	wbuf []byte    // a window's requests
	msgs []message // a datagram's messages
	// idle, if set, is called between the datagrams of a dump and the
	// windows of execEach: a full run lets incremental runs through
	// there (on another socket).
	idle func()
}

const (
	// window is how many requests are written before their acks are
	// read. Every ack is a small socket buffer of its own, and the kernel
	// drops those that do not fit the receive buffer (rcvBuf), so a
	// window must stay well inside it.
	window = 256
	rcvBuf = 8 << 20
	// ackTimeout bounds the wait for a window's acks and a dump's parts.
	ackTimeout = 30 * time.Second
)

// dial opens a socket in ns (nil: the calling thread's namespace), joined
// to the multicast groups given (none: a socket for requests).
func dial(ns *netns.NsHandle, groups ...uint) (*conn, error) {
	target := netns.None()
	if ns != nil {
		target = *ns
	}
	var (
		s   *nl.NetlinkSocket
		err error
	)
	if len(groups) > 0 {
		s, err = nl.SubscribeAt(target, netns.None(), unix.NETLINK_ROUTE, groups...)
	} else {
		s, err = nl.GetNetlinkSocketAt(target, netns.None(), unix.NETLINK_ROUTE)
	}
	if err != nil {
		return nil, fmt.Errorf("open route netlink socket: %w", err)
	}
	// Keep the descriptor under our own *os.File (nl's has no reusable
	// receive buffer: 64 KiB allocated per message read).
	fd, err := unix.FcntlInt(uintptr(s.GetFd()), unix.F_DUPFD_CLOEXEC, 0)
	s.Close()
	if err != nil {
		return nil, fmt.Errorf("route netlink socket: %w", err)
	}
	// Acks without the request copied back; error strings from the
	// kernel; dump filters applied by the kernel. Old kernels lack the
	// last two: then errors are bare and dumps are filtered here.
	_ = unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_CAP_ACK, 1)
	_ = unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_EXT_ACK, 1)
	_ = unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_GET_STRICT_CHK, 1)
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcvBuf) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, rcvBuf)
	}
	f := os.NewFile(uintptr(fd), "netlink-route")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("route netlink socket: %w", err)
	}
	return &conn{f: f, rc: rc, buf: make([]byte, 1<<16)}, nil
}

func (c *conn) Close() error { return c.f.Close() }

// request is one netlink message to the kernel.
type request struct {
	typ   uint16
	flags uint16 // besides NLM_F_REQUEST and NLM_F_ACK
	data  []nl.NetlinkRequestData
}

func (c *conn) serialize(r request, flags uint16) []byte {
	req := nl.NewNetlinkRequest(int(r.typ), int(unix.NLM_F_REQUEST|flags|r.flags))
	c.seq++
	req.Seq = c.seq
	req.Pid = 0
	for _, d := range r.data {
		req.AddData(d)
	}
	return req.Serialize()
}

func (c *conn) send(b []byte) error {
	var serr error
	err := c.rc.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), b, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
		return serr != unix.EAGAIN
	})
	if err == nil {
		err = serr
	}
	return err
}

// recv reads one datagram (one or more netlink messages) into c.buf.
func (c *conn) recv(deadline time.Time) ([]byte, error) {
	if err := c.f.SetReadDeadline(deadline); err != nil {
		return nil, err
	}
	var (
		n    int
		rerr error
	)
	err := c.rc.Read(func(fd uintptr) bool {
		n, rerr = unix.Read(int(fd), c.buf) // only the kernel sends to us: no address to read
		return rerr != unix.EAGAIN
	})
	if err == nil {
		err = rerr
	}
	if err != nil {
		return nil, err
	}
	return c.buf[:n], nil
}

// message is one netlink message in a received datagram.
type message struct {
	typ, flags uint16
	seq        uint32
	body       []byte
}

// messages splits a datagram (into out[:0]); a truncated tail is dropped.
func messages(out []message, b []byte) []message {
	out = out[:0]
	for len(b) >= unix.SizeofNlMsghdr {
		l := int(binary.NativeEndian.Uint32(b[0:4]))
		if l < unix.SizeofNlMsghdr || l > len(b) {
			break
		}
		out = append(out, message{
			typ:   binary.NativeEndian.Uint16(b[4:6]),
			flags: binary.NativeEndian.Uint16(b[6:8]),
			seq:   binary.NativeEndian.Uint32(b[8:12]),
			body:  b[unix.SizeofNlMsghdr:l],
		})
		b = b[min(nlAlign(l), len(b)):]
	}
	return out
}

func nlAlign(n int) int { return (n + 3) &^ 3 }

// ackError is the error an NLMSG_ERROR message carries (nil for an ack),
// with the kernel's explanation when it gave one.
func ackError(m message) error {
	if len(m.body) < 4 {
		return errors.New("short netlink error message")
	}
	code := int32(binary.NativeEndian.Uint32(m.body[0:4]))
	if code == 0 {
		return nil
	}
	err := error(syscall.Errno(-code))
	if m.flags&unix.NLM_F_ACK_TLVS == 0 {
		return err
	}
	// The TLVs follow the copied request: its header only if capped.
	off := 4 + unix.SizeofNlMsghdr
	if m.flags&unix.NLM_F_CAPPED == 0 && len(m.body) >= 4+4 {
		off = 4 + nlAlign(int(binary.NativeEndian.Uint32(m.body[4:8])))
	}
	if off > len(m.body) {
		return err
	}
	var msg string
	walkAttrs(m.body[off:], func(typ uint16, v []byte) {
		if typ == unix.NLMSGERR_ATTR_MSG {
			msg = cString(v)
		}
	})
	if msg == "" {
		return err
	}
	return fmt.Errorf("%w (%s)", err, msg)
}

func cString(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}

// exec writes reqs, a window at a time, each asking for an ack, and
// returns one error per request (nil: done).
func (c *conn) exec(reqs []request) []error {
	errs := make([]error, len(reqs))
	for start := 0; start < len(reqs); start += window {
		end := min(start+window, len(reqs))
		if err := c.execWindow(reqs[start:end], errs[start:end]); err != nil {
			for i := start; i < len(reqs); i++ {
				if i >= end || errs[i] == nil {
					errs[i] = err
				}
			}
			return errs
		}
	}
	return errs
}

// errSkipped is the result of a request execEach's build chose not to
// send.
var errSkipped = errors.New("not sent")

// execEach is exec for n requests built one window at a time (tens of
// thousands of requests built at once would be a large share of the
// agent's memory): build makes the i-th (false: not to be sent after
// all, done gets errSkipped), done gets its result. A window is built
// just before it is sent, after idle. ctx stops it between windows; the
// requests not sent then get ctx's error.
func (c *conn) execEach(ctx context.Context, n int, build func(i int) (request, bool), done func(i int, err error)) {
	reqs := make([]request, 0, min(n, window))
	idx := make([]int, 0, min(n, window))
	for start := 0; start < n; start += window {
		end := min(start+window, n)
		if c.idle != nil {
			c.idle()
		}
		if err := ctx.Err(); err != nil {
			for i := start; i < n; i++ {
				done(i, err)
			}
			return
		}
		reqs, idx = reqs[:0], idx[:0]
		for i := start; i < end; i++ {
			if req, ok := build(i); ok {
				reqs, idx = append(reqs, req), append(idx, i)
			} else {
				done(i, errSkipped)
			}
		}
		for j, err := range c.exec(reqs) {
			done(idx[j], err)
		}
	}
}

// pending marks a request of a window whose ack has not come yet.
var errPending = errors.New("no acknowledgement")

func (c *conn) execWindow(reqs []request, errs []error) error {
	buf := c.wbuf[:0]
	first := c.seq + 1
	for i, r := range reqs {
		buf = append(buf, c.serialize(r, unix.NLM_F_ACK)...)
		errs[i] = errPending
	}
	c.wbuf = buf
	if err := c.send(buf); err != nil {
		return fmt.Errorf("send %d route requests: %w", len(reqs), err)
	}
	deadline := time.Now().Add(ackTimeout)
	for left := len(reqs); left > 0; {
		b, err := c.recv(deadline)
		if err != nil {
			return fmt.Errorf("read acknowledgements (%d of %d missing): %w", left, len(reqs), err)
		}
		c.msgs = messages(c.msgs, b)
		for _, m := range c.msgs {
			i := int(m.seq - first)
			if m.typ != unix.NLMSG_ERROR || m.seq < first || i >= len(reqs) || errs[i] != errPending {
				continue // a late answer to an abandoned window
			}
			errs[i] = ackError(m)
			left--
		}
	}
	return nil
}

// errDumpInterrupted: the table changed while it was dumped; read it again.
var errDumpInterrupted = errors.New("dump interrupted")

// dump asks for a dump and hands each message of the answer to fn.
func (c *conn) dump(r request, fn func(typ uint16, body []byte)) error {
	if err := c.send(c.serialize(r, unix.NLM_F_DUMP)); err != nil {
		return err
	}
	seq := c.seq
	deadline := time.Now().Add(ackTimeout)
	interrupted := false
	for {
		b, err := c.recv(deadline)
		if err != nil {
			return err
		}
		c.msgs = messages(c.msgs, b)
		if c.idle != nil {
			// c.buf holds this datagram until the next recv: c.msgs stays
			// valid across idle, which uses another socket.
			c.idle()
		}
		for _, m := range c.msgs {
			if m.seq != seq {
				continue
			}
			if m.flags&unix.NLM_F_DUMP_INTR != 0 {
				interrupted = true
			}
			switch m.typ {
			case unix.NLMSG_DONE:
				if len(m.body) >= 4 {
					if code := int32(binary.NativeEndian.Uint32(m.body)); code < 0 {
						return syscall.Errno(-code)
					}
				}
				if interrupted {
					return errDumpInterrupted
				}
				return nil
			case unix.NLMSG_ERROR:
				if err := ackError(m); err != nil {
					return err
				}
			default:
				fn(m.typ, m.body)
			}
		}
	}
}

// nlaTypeMask strips NLA_F_NESTED and NLA_F_NET_BYTEORDER from a type.
const nlaTypeMask = 0x3fff

// walkAttrs calls fn for each netlink attribute in b.
func walkAttrs(b []byte, fn func(typ uint16, v []byte)) {
	for len(b) >= unix.SizeofRtAttr {
		l := int(binary.NativeEndian.Uint16(b[0:2]))
		if l < unix.SizeofRtAttr || l > len(b) {
			return
		}
		fn(binary.NativeEndian.Uint16(b[2:4])&nlaTypeMask, b[unix.SizeofRtAttr:l])
		b = b[min(nlAlign(l), len(b)):]
	}
}

func u32(v []byte) uint32 {
	if len(v) < 4 {
		return 0
	}
	return binary.NativeEndian.Uint32(v)
}
