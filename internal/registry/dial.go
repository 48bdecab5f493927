package registry

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/url"
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
	// Status needs no key permission, so a user limited to the prefix passes.
	sctx, cancel := context.WithTimeout(ctx, o.DialTimeout)
	defer cancel()
	var statusErr error
	for _, ep := range o.Endpoints {
		if _, statusErr = cli.Status(sctx, ep); statusErr == nil {
			return cli, nil
		}
	}
	cli.Close()
	if tlsCfg != nil {
		// gRPC reports a rejected handshake as a timeout; say what failed.
		if why := diagnoseTLS(o.Endpoints[0], tlsCfg, o.DialTimeout); why != nil {
			return nil, fmt.Errorf("etcd %v: TLS: %w (check --etcd-cafile, --etcd-certfile, --etcd-keyfile)", o.Endpoints, why)
		}
	}
	return nil, &UnreachableError{Endpoints: o.Endpoints, Err: statusErr}
}

// UnreachableError says that no etcd endpoint answered within the dial
// timeout: etcd may be down or not up yet, so trying again makes sense
// (unlike a rejected certificate or password).
type UnreachableError struct {
	Endpoints []string
	Err       error
}

func (e *UnreachableError) Error() string {
	return fmt.Sprintf("etcd %v does not answer: %v", e.Endpoints, e.Err)
}

func (e *UnreachableError) Unwrap() error { return e.Err }

// diagnoseTLS performs one TLS handshake with endpoint and reads once, so
// that a certificate the server rejects shows as the server's alert.
func diagnoseTLS(endpoint string, cfg *tls.Config, timeout time.Duration) error {
	u, err := url.Parse(endpoint)
	if err != nil || u.Host == "" {
		return nil
	}
	cfg = cfg.Clone()
	if cfg.ServerName == "" {
		cfg.ServerName = u.Hostname()
	}
	cfg.NextProtos = []string{"h2"}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: timeout}, "tcp", u.Host, cfg)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(timeout))
	// With TLS 1.3 the server checks our certificate after the handshake;
	// its verdict arrives as an alert on the first read.
	if _, err := conn.Read(make([]byte, 1)); err != nil && !isTimeout(err) {
		return err
	}
	return nil
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}
