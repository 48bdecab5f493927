package lab

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"strconv"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/hgw-ebpf/hgw-ebpf/internal/embedetcd"
	"github.com/hgw-ebpf/hgw-ebpf/internal/namedns"
	"github.com/hgw-ebpf/hgw-ebpf/internal/registry"
)

// networkConfig is the flannel network config the lab seeds; a
// dual-stack lab's enables IPv6 as flannel's documentation does.
const (
	networkConfig          = `{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"host-gw"}}`
	networkConfigDualStack = `{"Network":"10.244.0.0/16","SubnetLen":24,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","IPv6SubnetLen":64,"Backend":{"Type":"host-gw"}}`
)

// EtcdEndpoint is the URL the agents (inside the node namespaces) use.
func EtcdEndpoint() string { return "http://" + etcdClientAddr() }

// etcdClientAddr is where etcd's client listener is, in the underlay.
func etcdClientAddr() string {
	return net.JoinHostPort(underlayGateway.String(), strconv.Itoa(etcdClientPort))
}

// newEtcdClient connects to the lab's etcd from any process: every
// connection's socket is created inside the underlay namespace, where
// 198.18.0.1 is reachable, so the root namespace needs no route to it.
func newEtcdClient(underlay string) (*clientv3.Client, error) {
	dial := func(ctx context.Context, addr string) (net.Conn, error) {
		// clientv3 hands over host:port, or a URL for some endpoint forms.
		if u, err := url.Parse(addr); err == nil && u.Host != "" {
			addr = u.Host
		}
		var conn net.Conn
		err := namedns.Do(underlay, func() error {
			var d net.Dialer
			c, err := d.DialContext(ctx, "tcp", addr)
			conn = c
			return err
		})
		return conn, err
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{EtcdEndpoint()},
		DialTimeout: 5 * time.Second,
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(dial)},
		Logger:      zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("etcd client for %s: %w", EtcdEndpoint(), err)
	}
	return cli, nil
}

// seedNetworkConfig writes <prefix>/config as a flannel operator would.
func seedNetworkConfig(ctx context.Context, cli *clientv3.Client, prefix string, dualStack bool) error {
	key := registry.ConfigKey(prefix)
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	config := networkConfig
	if dualStack {
		config = networkConfigDualStack
	}
	if _, err := cli.Put(ctx, key, config); err != nil {
		return fmt.Errorf("seed %s: %w", key, err)
	}
	return nil
}

// StartEtcd starts the embedded etcd (again, after StopEtcd) on the same
// data directory.
func (l *Lab) StartEtcd(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.etcd != nil {
		return nil
	}
	e, err := embedetcd.Start(ctx, embedetcd.Config{
		Netns: l.state.Underlay, Name: "hgw-lab", Dir: filepath.Join(l.state.Dir, "etcd", "data"),
		Client:  etcdClientAddr(),
		Peer:    net.JoinHostPort(underlayGateway.String(), strconv.Itoa(etcdPeerPort)),
		LogFile: filepath.Join(l.state.Dir, "etcd", "etcd.log"),
	})
	if err != nil {
		return err
	}
	l.etcd = e
	if l.client != nil {
		// After an outage gRPC may wait out a long backoff before it
		// redials; the server is back now, so redial at once.
		l.client.ActiveConnection().ResetConnectBackoff()
	}
	return nil
}

// StopEtcd stops the embedded etcd; the agents keep their routes and
// retry. Leases are kept in the data directory.
func (l *Lab) StopEtcd() {
	l.mu.Lock()
	e := l.etcd
	l.etcd = nil
	l.mu.Unlock()
	if e != nil {
		e.Close()
	}
}
