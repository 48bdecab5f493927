package registry

import (
	"context"
	"crypto/tls"
	"fmt"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// ClientOptions are flanneld's etcd flags.
type ClientOptions struct {
	Endpoints                 []string
	CAFile, CertFile, KeyFile string
	Username, Password        string
	DialTimeout               time.Duration // default 5s
}

// Dial connects to etcd and checks that it answers, so a wrong endpoint,
// certificate or password is one clear error at start-up.
func Dial(ctx context.Context, o ClientOptions) (*clientv3.Client, error) {
	if o.DialTimeout == 0 {
		o.DialTimeout = 5 * time.Second
	}
	var tlsCfg *tls.Config
	if o.CAFile != "" || o.CertFile != "" || o.KeyFile != "" {
		info := transport.TLSInfo{TrustedCAFile: o.CAFile, CertFile: o.CertFile, KeyFile: o.KeyFile}
		var err error
		if tlsCfg, err = info.ClientConfig(); err != nil {
			return nil, fmt.Errorf("etcd TLS (ca %q, cert %q, key %q): %w", o.CAFile, o.CertFile, o.KeyFile, err)
		}
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: o.Endpoints, DialTimeout: o.DialTimeout, TLS: tlsCfg,
		Username: o.Username, Password: o.Password, Context: ctx,
		Logger: zap.NewNop(),
		// Fail fast on a dead endpoint instead of blocking forever.
		DialKeepAliveTime: 10 * time.Second, DialKeepAliveTimeout: 5 * time.Second,
	})
	if err != nil {
		return nil, fmt.Errorf("connect to etcd %v: %w", o.Endpoints, err)
	}
	sctx, cancel := context.WithTimeout(ctx, o.DialTimeout)
	defer cancel()
	if _, err := cli.Get(sctx, "health-check-by-hgw-ebpf", clientv3.WithCountOnly()); err != nil {
		cli.Close()
		return nil, fmt.Errorf("etcd %v does not answer: %w", o.Endpoints, err)
	}
	return cli, nil
}
