package etcdtest

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

func TestRestartKeepsDataAndEndpoints(t *testing.T) {
	s := Start(t)
	endpoints := s.Endpoints()
	cli := s.Client(t)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	put, err := cli.Put(ctx, "k", "before")
	if err != nil {
		t.Fatal(err)
	}

	// An open stream does not hold Stop up: clients are cut as by a crash
	// (etcd alone would drain them for seconds).
	wch := cli.Watch(ctx, "w")
	if _, err := cli.Put(ctx, "w", "x"); err != nil {
		t.Fatal(err)
	}
	if wr := <-wch; len(wr.Events) != 1 {
		t.Fatalf("watch response %+v", wr)
	}
	start := time.Now()
	s.Stop()
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Stop with an open watch took %s", d)
	}
	short, cancelShort := context.WithTimeout(ctx, 500*time.Millisecond)
	if _, err := cli.Get(short, "k"); err == nil {
		t.Error("Get succeeded while the server was stopped")
	}
	cancelShort()

	s.Restart(t)
	if got := s.Endpoints(); got[0] != endpoints[0] {
		t.Errorf("endpoints changed across Restart: %v, was %v", got, endpoints)
	}
	resp, err := cli.Get(ctx, "k") // the same client reconnects
	if err != nil {
		t.Fatalf("Get after Restart: %v", err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "before" {
		t.Fatalf("after Restart k = %v, want \"before\"", resp.Kvs)
	}

	if _, err := cli.Put(ctx, "k", "after"); err != nil {
		t.Fatal(err)
	}
	s.Compact(t, 0)
	_, err = cli.Get(ctx, "k", clientv3.WithRev(put.Header.Revision))
	if !errors.Is(err, rpctypes.ErrCompacted) {
		t.Errorf("Get at revision %d after Compact: %v, want %v", put.Header.Revision, err, rpctypes.ErrCompacted)
	}
}

// The unix endpoint reaches the same etcd, before and after a restart:
// it is how a process in another network namespace gets there.
func TestUnixEndpoint(t *testing.T) {
	s := Start(t)
	ep := s.UnixEndpoint(t)
	if !strings.HasPrefix(ep, "unix:///") {
		t.Fatalf("UnixEndpoint = %q, want unix:///<path>", ep)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	if _, err := s.Client(t).Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	for _, when := range []string{"before", "after"} {
		resp, err := cli.Get(ctx, "k")
		if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v" {
			t.Fatalf("Get k through %s %s Restart: %v, %v", ep, when, resp, err)
		}
		s.Restart(t)
	}
}
