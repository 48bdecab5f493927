package embedetcd

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/hgw-ebpf/hgw-ebpf/internal/testutil"
)

// In this thread's namespace (Netns ""), it serves once Start returns.
func TestStartServes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	client := testutil.FreeLoopbackAddr(t)
	e, err := Start(ctx, Config{Name: "t", Dir: t.TempDir(), Client: client, Peer: testutil.FreeLoopbackAddr(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{client}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if _, err := cli.Put(ctx, "/k", "v"); err != nil {
		t.Fatalf("put right after Start: %v", err)
	}
	if resp, err := cli.Get(ctx, "/k"); err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v" {
		t.Fatalf("get: %v, %v", resp, err)
	}
}

// A listener it cannot open fails Start with the address in the error.
func TestStartNamesTheAddressItCannotListenOn(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	_, err = Start(context.Background(), Config{Name: "t", Dir: t.TempDir(), Client: taken.Addr().String(), Peer: testutil.FreeLoopbackAddr(t)})
	if err == nil || !strings.Contains(err.Error(), taken.Addr().String()) {
		t.Fatalf("Start on a taken port: %v, want an error naming %s", err, taken.Addr())
	}
}
