// Package kubeapi runs a real kube-apiserver inside a network namespace,
// for the lab and the tests: its certificates, its bearer tokens, the
// kubeconfigs of its users, and clients that reach it from outside the
// namespace. Nothing of it listens in the host's network namespace.
//
// kube-apiserver refuses a loopback --advertise-address (its endpoint
// reconciler publishes it as the kubernetes Service's endpoint), so it is
// bound to an ordinary address of the namespace, such as the lab's
// underlay gateway.
package kubeapi

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"k8s.io/client-go/rest"

	"github.com/hgw-ebpf/hgw-ebpf/internal/logtail"
	"github.com/hgw-ebpf/hgw-ebpf/internal/namedns"
)

// DefaultPort is kube-apiserver's secure port.
const DefaultPort = 6443

// Admin is the user every server has: in group system:masters, which
// RBAC lets do anything.
const Admin = "admin"

// User is a bearer-token identity the server accepts.
type User struct {
	Name   string
	Groups []string
}

// Config says where and how to run kube-apiserver.
type Config struct {
	Bin         string     // the kube-apiserver binary
	Netns       string     // named network namespace it runs in
	Addr        netip.Addr // an address of Netns, not loopback
	Port        int        // DefaultPort if 0
	EtcdServers []string   // reachable from Netns
	Dir         string     // certificates, tokens, kubeconfigs, its log
	// ServiceCIDR is --service-cluster-ip-range (default 10.96.0.0/16).
	ServiceCIDR netip.Prefix
	// Users besides Admin that get a token and a kubeconfig.
	Users []User
	// ReadyTimeout bounds the wait for /readyz (default 90s).
	ReadyTimeout time.Duration
	Log          *slog.Logger
}

// Server is a kube-apiserver process this process started.
type Server struct {
	cfg    Config
	caPEM  []byte
	tokens map[string]string // user -> token

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has been waited for
}

// Start writes the server's credentials into cfg.Dir (or reuses those an
// earlier Start left there), starts kube-apiserver in cfg.Netns and
// returns once it answers /readyz. Stop ends it.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("kube-apiserver dir: %w", err)
	}
	caPEM, err := credentials(cfg.Dir, cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("kube-apiserver credentials in %s: %w", cfg.Dir, err)
	}
	tokens, err := userTokens(cfg.Dir, append([]User{{Name: Admin, Groups: []string{"system:masters"}}}, cfg.Users...))
	if err != nil {
		return nil, fmt.Errorf("kube-apiserver tokens in %s: %w", cfg.Dir, err)
	}
	s := &Server{cfg: cfg, caPEM: caPEM, tokens: tokens}
	if err := s.Start(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

func (c *Config) setDefaults() error {
	if c.Port == 0 {
		c.Port = DefaultPort
	}
	if !c.ServiceCIDR.IsValid() {
		c.ServiceCIDR = netip.MustParsePrefix("10.96.0.0/16")
	}
	if c.ReadyTimeout == 0 {
		c.ReadyTimeout = 90 * time.Second
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	switch {
	case c.Bin == "" || c.Netns == "" || c.Dir == "" || len(c.EtcdServers) == 0:
		return errors.New("kube-apiserver: binary, namespace, directory and etcd servers must be given")
	case !c.Addr.IsValid() || c.Addr.IsLoopback():
		return fmt.Errorf("kube-apiserver address %s: want a non-loopback address (its endpoint reconciler refuses loopback)", c.Addr)
	}
	if fi, err := os.Stat(c.Bin); err != nil || fi.Mode()&0o111 == 0 {
		return fmt.Errorf("kube-apiserver binary %s is not executable (run `make deps`): %v", c.Bin, err)
	}
	return nil
}

// args are kube-apiserver's flags: RBAC and static bearer tokens, a
// service account issuer (required), and nothing that needs nodes.
func (s *Server) args() []string {
	c := s.cfg
	f := func(name string) string { return filepath.Join(c.Dir, name) }
	return []string{
		"--etcd-servers=" + strings.Join(c.EtcdServers, ","),
		"--advertise-address=" + c.Addr.String(),
		"--bind-address=" + c.Addr.String(),
		"--secure-port=" + strconv.Itoa(c.Port),
		"--tls-cert-file=" + f(certFile),
		"--tls-private-key-file=" + f(keyFile),
		"--cert-dir=" + c.Dir,
		"--token-auth-file=" + f(tokensFile),
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file=" + f(saKeyFile),
		"--service-account-signing-key-file=" + f(saKeyFile),
		"--service-cluster-ip-range=" + c.ServiceCIDR.String(),
		"--profiling=false",
	}
}

// Start starts the server again after Stop, with the same credentials.
func (s *Server) Start(ctx context.Context) error {
	s.mu.Lock()
	if s.cmd != nil {
		s.mu.Unlock()
		return nil
	}
	logf, err := os.OpenFile(filepath.Join(s.cfg.Dir, logFile), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		s.mu.Unlock()
		return fmt.Errorf("kube-apiserver log: %w", err)
	}
	defer logf.Close() // the child has its own copy
	cmd := exec.Command(s.cfg.Bin, s.args()...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// SIGTERM when the process that started it dies, so a killed test
	// or lab leaves no server behind.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := namedns.Do(s.cfg.Netns, cmd.Start); err != nil {
		s.mu.Unlock()
		return fmt.Errorf("start kube-apiserver in %s: %w", s.cfg.Netns, err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	s.cmd, s.exited = cmd, exited
	s.mu.Unlock()
	s.cfg.Log.Info("kube-apiserver started", "pid", cmd.Process.Pid, "netns", s.cfg.Netns, "url", s.URL())
	if err := s.waitReady(ctx, exited); err != nil {
		s.Stop()
		return err
	}
	return nil
}

// waitReady polls /readyz until it answers 200.
func (s *Server) waitReady(ctx context.Context, exited <-chan struct{}) error {
	hc, err := rest.HTTPClientFor(s.RestConfig(Admin))
	if err != nil {
		return err
	}
	deadline := time.After(s.cfg.ReadyTimeout)
	var last string
	for {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		req, _ := http.NewRequestWithContext(rctx, http.MethodGet, s.URL()+"/readyz", nil)
		resp, err := hc.Do(req)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				cancel()
				return nil
			}
			last = fmt.Sprintf("HTTP %d: %s", resp.StatusCode, oneLine(logtail.Lines(string(body), 3)))
		} else {
			last = err.Error()
		}
		cancel()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-exited:
			return fmt.Errorf("kube-apiserver exited while starting: %s", s.logTail())
		case <-deadline:
			return fmt.Errorf("kube-apiserver not ready after %s (%s): %s", s.cfg.ReadyTimeout, last, s.logTail())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// logTail is the end of the server's log on one line, for errors.
func (s *Server) logTail() string {
	path := filepath.Join(s.cfg.Dir, logFile)
	return fmt.Sprintf("%s (log %s)", oneLine(logtail.File(path, 5)), path)
}

func oneLine(s string) string { return strings.ReplaceAll(strings.TrimSpace(s), "\n", " | ") }

// Stop ends the server (SIGTERM, SIGKILL after 10 s) and waits for it.
// Its credentials stay for Start.
func (s *Server) Stop() {
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-exited
	}
	s.cfg.Log.Info("kube-apiserver stopped", "pid", cmd.Process.Pid)
}

// PID is the running server's process ID (0 when stopped).
func (s *Server) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

// URL is the server's address as clients inside the network see it.
func (s *Server) URL() string {
	return "https://" + net.JoinHostPort(s.cfg.Addr.String(), strconv.Itoa(s.cfg.Port))
}

// Dial connects from this process to an address reachable from the
// server's namespace: the socket is created there.
func (s *Server) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var conn net.Conn
	err := namedns.Do(s.cfg.Netns, func() error {
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		conn = c
		return err
	})
	return conn, err
}

// RestConfig is a client config for user that works from this process,
// whatever its namespace.
func (s *Server) RestConfig(user string) *rest.Config {
	return &rest.Config{
		Host:            s.URL(),
		BearerToken:     s.tokens[user],
		TLSClientConfig: rest.TLSClientConfig{CAData: s.caPEM},
		Dial:            s.Dial,
		UserAgent:       "hgw-ebpf-test",
	}
}

// Kubeconfig writes a kubeconfig for user at path, for processes inside
// the network (agents in the lab's nodes, kubectl in the namespace).
func (s *Server) Kubeconfig(user, path string) error {
	tok, ok := s.tokens[user]
	if !ok {
		return fmt.Errorf("kubeconfig: no user %q", user)
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, `apiVersion: v1
kind: Config
clusters:
- name: hgw
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: %s
  user:
    token: %s
contexts:
- name: hgw
  context:
    cluster: hgw
    user: %s
current-context: hgw
`, s.URL(), base64.StdEncoding.EncodeToString(s.caPEM), user, tok, user)
	return os.WriteFile(path, b.Bytes(), 0o600)
}

// AdminKubeconfig writes Admin's kubeconfig in the server's directory
// (admin.kubeconfig) and returns its path: kubectl's, and an operator's.
func (s *Server) AdminKubeconfig() (string, error) {
	path := filepath.Join(s.cfg.Dir, Admin+".kubeconfig")
	return path, s.Kubeconfig(Admin, path)
}

// Kubectl runs kubectl (bin) with args as Admin inside the server's
// namespace, with stdin as its input, and returns its combined output.
func (s *Server) Kubectl(ctx context.Context, bin string, stdin []byte, args ...string) ([]byte, error) {
	kc, err := s.AdminKubeconfig()
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, bin, append([]string{"--kubeconfig", kc}, args...)...)
	cmd.Stdin = bytes.NewReader(stdin)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := namedns.Do(s.cfg.Netns, cmd.Start); err != nil {
		return nil, fmt.Errorf("start kubectl in %s: %w", s.cfg.Netns, err)
	}
	err = cmd.Wait()
	if err != nil {
		err = fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.Bytes(), err
}

// userTokens returns each user's token from dir's token file, writing a
// file with new tokens when there is none.
func userTokens(dir string, users []User) (map[string]string, error) {
	path := filepath.Join(dir, tokensFile)
	if f, err := os.Open(path); err == nil {
		defer f.Close()
		recs, err := csv.NewReader(f).ReadAll()
		if err != nil {
			return nil, err
		}
		tokens := map[string]string{}
		for _, r := range recs {
			tokens[r[1]] = r[0]
		}
		return tokens, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	var b bytes.Buffer
	w := csv.NewWriter(&b)
	tokens := map[string]string{}
	for _, u := range users {
		tokens[u.Name] = newToken()
		// token,user,uid,"group1,group2": kube-apiserver's format.
		w.Write([]string{tokens[u.Name], u.Name, u.Name, strings.Join(u.Groups, ",")})
	}
	w.Flush()
	return tokens, os.WriteFile(path, b.Bytes(), 0o600)
}
