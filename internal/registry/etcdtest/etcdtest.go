// Package etcdtest runs a real single-member etcd inside a test process,
// so registry code is tested against etcd itself rather than a mock.
package etcdtest

import (
	"context"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/hgw-ebpf/hgw-ebpf/internal/embedetcd"
	"github.com/hgw-ebpf/hgw-ebpf/internal/testutil"
)

// Server is an embedded etcd listening on loopback. Its data survive Stop,
// so Restart brings back the same cluster on the same ports. Clients reach
// it through a relay on Endpoints(), so Stop is as abrupt as a crash.
type Server struct {
	dir          string
	client, peer url.URL // etcd's own
	relay        *relay

	mu    sync.Mutex
	etcd  *embed.Etcd // nil while stopped
	extra []*relay    // UnixEndpoint's
}

// Start starts etcd on free loopback ports with its data in t.TempDir();
// it is stopped when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	s := &Server{dir: filepath.Join(t.TempDir(), "etcd")}
	var err error
	if s.relay, err = newRelay("tcp", "127.0.0.1:0"); err != nil {
		t.Fatalf("etcdtest: client endpoint: %v", err)
	}
	t.Cleanup(s.relay.close) // after Stop: cleanups run last in, first out
	// A port found free may be taken before etcd binds it: try a few.
	for range 3 {
		s.client = url.URL{Scheme: "http", Host: testutil.FreeLoopbackAddr(t)}
		s.peer = url.URL{Scheme: "http", Host: testutil.FreeLoopbackAddr(t)}
		if err = s.start(); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("etcdtest: %v", err)
	}
	t.Cleanup(s.Stop)
	return s
}

func (s *Server) start() error {
	e, err := embedetcd.Start(context.Background(), embedetcd.Config{
		Name: "etcdtest", Dir: s.dir, Client: s.client.Host, Peer: s.peer.Host})
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.etcd = e
	for _, r := range s.extra {
		r.forward(s.client.Host)
	}
	s.mu.Unlock()
	s.relay.forward(s.client.Host)
	return nil
}

// Endpoints are the client URLs, for clientv3.Config or registry.Dial.
func (s *Server) Endpoints() []string { return []string{"http://" + s.relay.addr()} }

// UnixEndpoint returns a unix:// client URL of this server (a socket in
// t.TempDir()), for a client in another network namespace: a socket file
// is reached through the file system, where 127.0.0.1 would be the
// namespace's own loopback. It follows Stop and Restart like Endpoints.
func (s *Server) UnixEndpoint(t testing.TB) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "etcd.sock")
	r, err := newRelay("unix", path)
	if err != nil {
		t.Fatalf("etcdtest: unix endpoint: %v", err)
	}
	t.Cleanup(r.close)
	s.mu.Lock()
	s.extra = append(s.extra, r)
	if s.etcd != nil {
		r.forward(s.client.Host)
	}
	s.mu.Unlock()
	return "unix://" + path
}

// Client returns a client of this server, closed when the test ends. It
// keeps working across Stop and Restart, as a real agent's client would.
func (s *Server) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	cli := s.newClient(t)
	t.Cleanup(func() { cli.Close() })
	return cli
}

func (s *Server) newClient(t testing.TB) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   s.Endpoints(),
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatalf("etcdtest: client of %v: %v", s.Endpoints(), err)
	}
	return cli
}

// Stop cuts every client connection, shuts etcd down and keeps its data.
// Stopping twice is harmless.
func (s *Server) Stop() {
	s.mu.Lock()
	e := s.etcd
	s.etcd = nil
	extra := s.extra
	s.mu.Unlock()
	// Cut first: etcd then has no stream to drain and closes at once.
	s.relay.forward("")
	for _, r := range extra {
		r.forward("")
	}
	if e != nil {
		e.Close()
	}
}

// Restart stops etcd if it runs and starts it again on the same data
// directory and ports.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Stop()
	if err := s.start(); err != nil {
		t.Fatalf("etcdtest: restart: %v", err)
	}
}

// Wipe stops etcd, deletes its data and starts an empty etcd on the same
// ports: an etcd recreated, or restored from an older backup.
func (s *Server) Wipe(t testing.TB) {
	t.Helper()
	s.Stop()
	if err := os.RemoveAll(s.dir); err != nil {
		t.Fatalf("etcdtest: wipe %s: %v", s.dir, err)
	}
	if err := s.start(); err != nil {
		t.Fatalf("etcdtest: start after wipe: %v", err)
	}
}

// Compact compacts the key history up to rev (the current revision if
// rev <= 0), so that watches from an older revision fail as compacted.
func (s *Server) Compact(t testing.TB, rev int64) {
	t.Helper()
	cli := s.newClient(t)
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if rev <= 0 {
		resp, err := cli.Get(ctx, "compact-probe")
		if err != nil {
			t.Fatalf("etcdtest: read the current revision: %v", err)
		}
		rev = resp.Header.Revision
	}
	if _, err := cli.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil {
		t.Fatalf("etcdtest: compact at %d: %v", rev, err)
	}
}
