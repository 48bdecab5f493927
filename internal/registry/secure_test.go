package registry

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"

	"github.com/hgw-ebpf/hgw-ebpf/internal/testutil"
)

// pki is a CA and the certificates issued by it, as PEM files.
type pki struct {
	dir          string
	cert         *x509.Certificate
	key          *ecdsa.PrivateKey
	caFile       string
	serial       int64
	issuedPrefix string
}

func newPKI(t *testing.T, name string) *pki {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	p := &pki{dir: t.TempDir(), cert: cert, key: key, serial: 1, issuedPrefix: name}
	p.caFile = p.write(t, "ca.pem", "CERTIFICATE", der)
	return p
}

func (p *pki) write(t *testing.T, name, typ string, der []byte) string {
	t.Helper()
	path := filepath.Join(p.dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// issue signs a certificate for name; server certificates get 127.0.0.1.
func (p *pki) issue(t *testing.T, name string, server bool) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p.serial++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(p.serial), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.cert, &key.PublicKey, p.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return p.write(t, name+".pem", "CERTIFICATE", der), p.write(t, name+"-key.pem", "EC PRIVATE KEY", kder)
}

// startSecureEtcd starts an embedded etcd whose client URL is https when
// tls is set, and returns its endpoint.
func startSecureEtcd(t *testing.T, tls func(*embed.Config)) string {
	t.Helper()
	cfg := embed.NewConfig()
	cfg.Name = "secure"
	cfg.Dir = filepath.Join(t.TempDir(), "data")
	scheme := "http"
	if tls != nil {
		scheme = "https"
		tls(cfg)
	}
	client := url.URL{Scheme: scheme, Host: testutil.FreeLoopbackAddr(t)}
	peer := url.URL{Scheme: "http", Host: testutil.FreeLoopbackAddr(t)}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.LogLevel = "error"
	cfg.LogOutputs = []string{filepath.Join(t.TempDir(), "etcd.log")}
	cfg.UnsafeNoFsync = true
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(20 * time.Second):
		t.Fatal("etcd not ready")
	}
	return client.String()
}

// dialFails checks that Dial fails promptly with a message naming etcd.
func dialFails(t *testing.T, name string, o ClientOptions, mention string) {
	t.Helper()
	o.DialTimeout = 2 * time.Second
	start := time.Now()
	cli, err := Dial(context.Background(), o)
	took := time.Since(start)
	if err == nil {
		cli.Close()
		t.Errorf("%s: Dial succeeded", name)
		return
	}
	t.Logf("%s: failed after %s: %v", name, took.Round(time.Millisecond), err)
	// The agent waits for an etcd that does not answer, and gives up at
	// once on what a retry cannot fix: these must not look unreachable.
	var unreachable *UnreachableError
	if errors.As(err, &unreachable) {
		t.Errorf("%s: %v is an UnreachableError; the agent would wait instead of failing", name, err)
	}
	if took > o.DialTimeout+2*time.Second {
		t.Errorf("%s: took %s to fail, want about the dial timeout %s (no retry storm)", name, took, o.DialTimeout)
	}
	if !strings.Contains(err.Error(), mention) {
		t.Errorf("%s: error %q does not mention %q", name, err, mention)
	}
}

func TestDialWithClientCertificates(t *testing.T) {
	ca := newPKI(t, "hgw-test-ca")
	srvCert, srvKey := ca.issue(t, "etcd-server", true)
	cliCert, cliKey := ca.issue(t, "hgw-agent", false)
	rogue := newPKI(t, "rogue-ca")
	rogueCert, rogueKey := rogue.issue(t, "intruder", false)

	endpoint := startSecureEtcd(t, func(c *embed.Config) {
		c.ClientTLSInfo.CertFile, c.ClientTLSInfo.KeyFile = srvCert, srvKey
		c.ClientTLSInfo.TrustedCAFile = ca.caFile
		c.ClientTLSInfo.ClientCertAuth = true
	})
	ok := ClientOptions{Endpoints: []string{endpoint}, CAFile: ca.caFile, CertFile: cliCert, KeyFile: cliKey}

	cli, err := Dial(context.Background(), ok)
	if err != nil {
		t.Fatalf("Dial with a valid client certificate: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, DefaultPrefix+"/config", `{"Network":"10.244.0.0/16"}`); err != nil {
		t.Fatalf("put over TLS: %v", err)
	}
	if _, err := New(cli, "", discard()).Config(ctx); err != nil {
		t.Fatalf("read config over TLS: %v", err)
	}
	cli.Close()

	dialFails(t, "no client certificate", ClientOptions{Endpoints: []string{endpoint}, CAFile: ca.caFile}, "certificate required")
	dialFails(t, "certificate of another CA", ClientOptions{Endpoints: []string{endpoint}, CAFile: ca.caFile,
		CertFile: rogueCert, KeyFile: rogueKey}, "unknown certificate authority")
	dialFails(t, "server not trusted", ClientOptions{Endpoints: []string{endpoint}, CAFile: rogue.caFile,
		CertFile: cliCert, KeyFile: cliKey}, "unknown authority")
	dialFails(t, "missing certificate file", ClientOptions{Endpoints: []string{endpoint}, CAFile: ca.caFile,
		CertFile: filepath.Join(t.TempDir(), "nope.pem"), KeyFile: cliKey}, "nope.pem")
}

func TestDialWithUserAndPassword(t *testing.T) {
	endpoint := startSecureEtcd(t, nil)
	admin, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	steps := []func() error{
		func() error { _, err := admin.UserAdd(ctx, "root", "rootpw"); return err },
		func() error { _, err := admin.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := admin.RoleAdd(ctx, "flannel"); return err },
		func() error {
			_, err := admin.RoleGrantPermission(ctx, "flannel", DefaultPrefix, clientv3.GetPrefixRangeEnd(DefaultPrefix),
				clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		},
		func() error { _, err := admin.UserAdd(ctx, "hgw", "s3cret"); return err },
		func() error { _, err := admin.UserGrantRole(ctx, "hgw", "flannel"); return err },
		func() error { _, err := admin.AuthEnable(ctx); return err },
	}
	for i, step := range steps {
		if err := step(); err != nil {
			t.Fatalf("auth setup step %d: %v", i, err)
		}
	}

	cli, err := Dial(context.Background(), ClientOptions{Endpoints: []string{endpoint}, Username: "hgw", Password: "s3cret"})
	if err != nil {
		t.Fatalf("Dial with the right password: %v", err)
	}
	if _, err := cli.Put(ctx, DefaultPrefix+"/subnets/10.244.1.0-24", `{"PublicIP":"198.18.0.11"}`); err != nil {
		t.Errorf("put under the prefix as hgw: %v", err)
	}
	cli.Close()
	dialFails(t, "wrong password", ClientOptions{Endpoints: []string{endpoint}, Username: "hgw", Password: "guess"},
		"authentication failed")
}

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// No etcd at the endpoint: an UnreachableError, after about the dial
// timeout, naming the endpoint.
func TestDialNobodyListeningIsUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	endpoint := "http://" + ln.Addr().String()
	ln.Close() // the port is now free: nobody answers there
	cli, err := Dial(context.Background(), ClientOptions{Endpoints: []string{endpoint}, DialTimeout: time.Second})
	if err == nil {
		cli.Close()
		t.Fatal("Dial succeeded with nobody listening")
	}
	var unreachable *UnreachableError
	if !errors.As(err, &unreachable) || !strings.Contains(err.Error(), endpoint) {
		t.Errorf("Dial error %v (%T): want an UnreachableError naming %s", err, err, endpoint)
	}
}
