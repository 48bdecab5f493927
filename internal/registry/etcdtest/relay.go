package etcdtest

import (
	"io"
	"net"
	"net/url"
	"sync"
	"testing"
)

// relay is the server's client endpoint: it forwards TCP to etcd while
// etcd runs. Stopping etcd cuts every client connection at once — as a
// crash would — instead of letting etcd drain its streams for seconds;
// and the endpoint's port stays ours across a restart.
type relay struct {
	ln net.Listener
	wg sync.WaitGroup

	mu     sync.Mutex
	target string // etcd's own address; "" while it is down
	gen    int    // bumped by every cut, so a dial racing a cut is dropped
	conns  map[net.Conn]struct{}
}

// newRelay listens on network ("tcp": a free loopback port; "unix":
// the socket path addr).
func newRelay(network, addr string) (*relay, error) {
	ln, err := net.Listen(network, addr)
	if err != nil {
		return nil, err
	}
	r := &relay{ln: ln, conns: map[net.Conn]struct{}{}}
	r.wg.Go(r.accept)
	return r, nil
}

func (r *relay) addr() string { return r.ln.Addr().String() }

func (r *relay) accept() {
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		r.wg.Go(func() { r.serve(c) })
	}
}

func (r *relay) serve(c net.Conn) {
	r.mu.Lock()
	target, gen := r.target, r.gen
	r.mu.Unlock()
	if target == "" {
		c.Close() // down: the client sees its connection fail and retries
		return
	}
	up, err := net.Dial("tcp", target)
	if err != nil {
		c.Close()
		return
	}
	r.mu.Lock()
	if r.gen != gen {
		r.mu.Unlock()
		c.Close()
		up.Close()
		return
	}
	r.conns[c], r.conns[up] = struct{}{}, struct{}{}
	r.mu.Unlock()

	done := make(chan struct{}, 2)
	go func() { io.Copy(up, c); done <- struct{}{} }()
	go func() { io.Copy(c, up); done <- struct{}{} }()
	<-done
	c.Close()
	up.Close()
	<-done
	r.mu.Lock()
	delete(r.conns, c)
	delete(r.conns, up)
	r.mu.Unlock()
}

// forward sends new connections to target; "" cuts every connection and
// refuses new ones.
func (r *relay) forward(target string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.target = target
	if target != "" {
		return
	}
	r.gen++
	for c := range r.conns {
		c.Close()
	}
}

func (r *relay) close() {
	r.ln.Close()
	r.forward("")
	r.wg.Wait()
}

// Proxy forwards TCP to an etcd endpoint and can cut every connection,
// so that one client can be cut off etcd while others stay connected.
type Proxy struct {
	r      *relay
	target string // the endpoint's host:port
}

// NewProxy starts a proxy of endpoint (a URL, as Endpoints gives) on a
// free loopback port; it is closed when the test ends.
func NewProxy(t testing.TB, endpoint string) *Proxy {
	t.Helper()
	u, err := url.Parse(endpoint)
	if err != nil {
		t.Fatalf("etcdtest: proxy of %q: %v", endpoint, err)
	}
	r, err := newRelay("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("etcdtest: proxy of %s: %v", endpoint, err)
	}
	t.Cleanup(r.close)
	p := &Proxy{r: r, target: u.Host}
	p.Heal()
	return p
}

// URL is the proxy's client URL.
func (p *Proxy) URL() string { return "http://" + p.r.addr() }

// Cut closes every connection and refuses new ones until Heal.
func (p *Proxy) Cut() { p.r.forward("") }

// Heal forwards new connections again.
func (p *Proxy) Heal() { p.r.forward(p.target) }
