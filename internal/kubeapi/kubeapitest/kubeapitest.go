// Package kubeapitest gives tests a real kube-apiserver: one per test
// binary, with its etcd, in a network namespace of their own (etcd on the
// namespace's loopback, the API server on a veth address there). Tests
// reach it through kubeapi.Server's clients, which open their sockets in
// that namespace.
package kubeapitest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"go.etcd.io/etcd/server/v3/embed"

	"github.com/hgw-ebpf/hgw-ebpf/deploy"
	"github.com/hgw-ebpf/hgw-ebpf/internal/embedetcd"
	"github.com/hgw-ebpf/hgw-ebpf/internal/kubeapi"
	"github.com/hgw-ebpf/hgw-ebpf/internal/namedns"
	"github.com/hgw-ebpf/hgw-ebpf/internal/testutil"
)

// Addr is the API server's address in its namespace.
var Addr = netip.MustParseAddr("198.18.0.1")

// Agent is the agent's service account as the server authenticates it:
// it may do what the manifest's ClusterRole gives it once a test has
// applied deploy.KubeManifest, and nothing before.
var Agent = func() kubeapi.User {
	name, groups := deploy.ServiceAccountUser()
	return kubeapi.User{Name: name, Groups: groups}
}()

// shared is the test binary's server; Main tears it down.
var shared struct {
	once   sync.Once
	err    error
	srv    *kubeapi.Server
	netns  string
	etcd   *embed.Etcd
	dir    string
	binDir string
}

// Main runs the tests, then stops the server Shared started (if any) and
// removes its namespace and files. Call it from TestMain.
func Main(m *testing.M) int {
	code := m.Run()
	if err := teardown(); err != nil {
		fmt.Fprintln(os.Stderr, "kubeapitest:", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// BinDir is where `make deps` puts kube-apiserver and kubectl: $HGW_BIN/kube,
// else bin/kube at the module root above the test's directory.
func BinDir() string { return filepath.Join(testutil.BinDir(), "kube") }

// Require returns the path of a binary of BinDir. A missing one skips the
// test outside CI (with the reason) and fails it in CI.
func Require(t testing.TB, name string) string {
	t.Helper()
	path := filepath.Join(BinDir(), name)
	if fi, err := os.Stat(path); err == nil && fi.Mode()&0o111 != 0 {
		return path
	}
	if os.Getenv("CI") == "" {
		t.Skipf("no %s in %s (run `make deps`); skipping because CI is unset", name, BinDir())
	}
	t.Fatalf("no %s in %s, and CI is set: `make deps` builds it", name, BinDir())
	return ""
}

// Shared returns the test binary's kube-apiserver, started on first use.
// Tests share it: each names its objects apart and removes them.
func Shared(t testing.TB) *kubeapi.Server {
	t.Helper()
	testutil.RequireRoot(t)
	bin := Require(t, "kube-apiserver")
	shared.once.Do(func() { shared.err = setup(bin) })
	if shared.err != nil {
		t.Fatalf("kubeapitest: %v", shared.err)
	}
	return shared.srv
}

func setup(bin string) error {
	if err := testutil.CleanupStale(testutil.NSPrefix + "kapi-"); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "hgw-kubeapi")
	if err != nil {
		return err
	}
	shared.dir = dir
	name := fmt.Sprintf("%skapi-%d", testutil.NSPrefix, os.Getpid())
	if err := namedns.Create(name); err != nil {
		return err
	}
	shared.netns = name
	if err := network(name); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	shared.etcd, err = embedetcd.Start(ctx, embedetcd.Config{
		Netns: name, Name: "kubeapitest", Dir: filepath.Join(dir, "etcd"), Client: "127.0.0.1:2379", Peer: "127.0.0.1:2380"})
	if err != nil {
		return err
	}
	shared.srv, err = kubeapi.Start(ctx, kubeapi.Config{
		Bin: bin, Netns: name, Addr: Addr, EtcdServers: []string{"http://127.0.0.1:2379"},
		Dir: filepath.Join(dir, "kube"), Users: []kubeapi.User{Agent},
	})
	return err
}

// network brings up the namespace's loopback (etcd) and a veth pair, one
// end holding Addr (the API server).
func network(name string) error {
	ns, err := netns.GetFromName(name)
	if err != nil {
		return err
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return err
	}
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "api0"}, PeerName: "api1"}
	if err := errors.Join(h.LinkSetUp(lo), h.LinkAdd(veth)); err != nil {
		return fmt.Errorf("links in %s: %w", name, err)
	}
	for _, n := range []string{"api0", "api1"} {
		l, err := h.LinkByName(n)
		if err != nil {
			return err
		}
		if err := h.LinkSetUp(l); err != nil {
			return err
		}
		if n == "api0" {
			addr := &netlink.Addr{IPNet: &net.IPNet{IP: Addr.AsSlice(), Mask: net.CIDRMask(24, 32)}}
			if err := h.AddrAdd(l, addr); err != nil {
				return fmt.Errorf("address %s in %s: %w", Addr, name, err)
			}
		}
	}
	return nil
}

func teardown() error {
	if shared.srv != nil {
		shared.srv.Stop()
	}
	if shared.etcd != nil {
		shared.etcd.Close()
	}
	var errs []error
	if shared.netns != "" {
		errs = append(errs, namedns.Delete(shared.netns))
	}
	if shared.dir != "" {
		errs = append(errs, os.RemoveAll(shared.dir))
	}
	return errors.Join(errs...)
}
