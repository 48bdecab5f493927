// Package embedetcd starts a single-member etcd inside this process: the
// lab's flannel registry, the store behind the tests' kube-apiserver, and
// the registry tests' etcd.
package embedetcd

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/hgw-ebpf/hgw-ebpf/internal/namedns"
)

// Config is one embedded etcd.
type Config struct {
	Netns   string // the network namespace it listens in; "" for this thread's
	Name    string // its member name
	Dir     string // its data directory, made if missing
	Client  string // host:port of its client listener, in Netns
	Peer    string // host:port of its peer listener, in Netns
	LogFile string // where it logs warnings and errors; nowhere if ""
}

const readyTimeout = 30 * time.Second

// Start starts an embedded etcd with its listeners inside c.Netns and
// waits until it serves. embed.StartEtcd creates every listen socket
// synchronously (configurePeerListeners, configureClientListeners) before
// it returns, and a socket keeps the namespace it was created in, so
// calling it on a thread in the namespace is enough. The goroutines it
// leaves behind only accept on those sockets; new OS threads the runtime
// spawns meanwhile come from its template thread, not from our namespaced
// one. The gRPC gateway is off because it would dial the client URL from
// the host's namespace. Durability is not the point of these short-lived
// stores: writes are not synced.
func Start(ctx context.Context, c Config) (*embed.Etcd, error) {
	if err := os.MkdirAll(c.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("etcd data dir: %w", err)
	}
	cfg := embed.NewConfig()
	cfg.Name, cfg.Dir = c.Name, c.Dir
	client, peer := url.URL{Scheme: "http", Host: c.Client}, url.URL{Scheme: "http", Host: c.Peer}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.EnableGRPCGateway = false
	see := ""
	if c.LogFile != "" {
		cfg.Logger, cfg.LogLevel, cfg.LogOutputs = "zap", "warn", []string{c.LogFile}
		see = " (see " + c.LogFile + ")"
	} else {
		cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	}
	cfg.UnsafeNoFsync = true

	var e *embed.Etcd
	start := func() error {
		var err error
		e, err = embed.StartEtcd(cfg)
		return err
	}
	var err error
	if c.Netns == "" {
		err = start()
	} else {
		err = namedns.Do(c.Netns, start)
	}
	if err != nil {
		return nil, fmt.Errorf("start etcd on %s (netns %q): %w", c.Client, c.Netns, err)
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, nil
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("etcd on %s failed while starting: %w", c.Client, err)
	case <-time.After(readyTimeout):
		e.Close()
		return nil, fmt.Errorf("etcd on %s not ready after %s%s", c.Client, readyTimeout, see)
	case <-ctx.Done():
		e.Close()
		return nil, ctx.Err()
	}
}
