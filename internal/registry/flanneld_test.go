package registry_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sys/unix"

	"github.com/hgw-ebpf/hgw-ebpf/internal/registry"
	"github.com/hgw-ebpf/hgw-ebpf/internal/subnetfile"
	"github.com/hgw-ebpf/hgw-ebpf/internal/testutil"
)

// flanneldBinary finds the real flanneld: $FLANNELD (the binary, or the
// directory holding it), else ../shared/tools/flanneld beside the project
// root, where the project keeps it (the Go module proxy does not serve
// it). Outside CI its absence skips the test, saying so; in CI it fails.
func flanneldBinary(t *testing.T) string {
	t.Helper()
	var tried []string
	if env := os.Getenv("FLANNELD"); env != "" {
		tried = append(tried, env, filepath.Join(env, "flanneld"))
	} else {
		tried = append(tried, filepath.Join(testutil.RepoRoot(), "..", "shared", "tools", "flanneld"))
	}
	for _, p := range tried {
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p
		}
	}
	msg := fmt.Sprintf("the real flanneld is not in %v (set $FLANNELD to it or its directory)", tried)
	if os.Getenv("CI") == "" {
		t.Skip(msg + "; skipping because CI is unset")
	}
	t.Fatal(msg)
	return ""
}

// flannelNode is a network namespace with an underlay link eth0 (with an
// IPv4 and an IPv6 address), where the real flanneld runs.
type flannelNode struct {
	ns   string // name, for ip netns exec
	link netlink.Link
}

func newFlannelNode(t *testing.T, ip4, ip6 string) *flannelNode {
	t.Helper()
	name, h := testutil.NetNS(t, "flanneld")
	nh, err := netlink.NewHandleAt(h)
	if err != nil {
		t.Fatal(err)
	}
	defer nh.Close()
	n := &flannelNode{ns: name}
	// A veth pair with both ends in the namespace (this kernel has no
	// dummy links): eth0 is up with a carrier, as flanneld expects.
	if err := nh.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth0peer"}); err != nil {
		t.Fatalf("add eth0 in %s: %v", name, err)
	}
	if n.link, err = nh.LinkByName("eth0"); err != nil {
		t.Fatal(err)
	}
	for _, p := range []netip.Prefix{netip.MustParsePrefix(ip4), netip.MustParsePrefix(ip6)} {
		a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
		if p.Addr().Is6() {
			a.Flags = unix.IFA_F_NODAD // usable at once, as flanneld looks for it
		}
		if err := nh.AddrAdd(n.link, a); err != nil {
			t.Fatalf("add %s to eth0 in %s: %v", p, name, err)
		}
	}
	for _, l := range []string{"lo", "eth0peer", "eth0"} {
		link, err := nh.LinkByName(l)
		if err == nil {
			err = nh.LinkSetUp(link)
		}
		if err != nil {
			t.Fatalf("set %s up in %s: %v", l, name, err)
		}
	}
	return n
}

// runFlanneld starts the real flanneld in the node's namespace against
// etcd (a unix:// endpoint: etcd listens in the test's namespace), waits
// until it has written subnetFile (at most 30 s; flanneld renames a new
// file into place, so an older file there is told apart by its inode),
// and stops it (SIGTERM, SIGKILL after 5 s; by its PID). It returns
// flanneld's log.
func (n *flannelNode) runFlanneld(t *testing.T, bin, endpoint, subnetFile string, args ...string) string {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), "flanneld.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	args = append([]string{"netns", "exec", n.ns, bin, "--etcd-endpoints", endpoint, "--iface", "eth0",
		"--subnet-file", subnetFile}, args...)
	// ip netns exec execs flanneld in place: the PID is flanneld's.
	cmd := exec.Command("ip", args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	var old uint64 // inode of the file there before, if any
	if st, err := os.Stat(subnetFile); err == nil {
		old = st.Sys().(*syscall.Stat_t).Ino
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start flanneld: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop := func() {
		if err := syscall.Kill(cmd.Process.Pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
			t.Errorf("stop flanneld %d: %v", cmd.Process.Pid, err)
		}
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			syscall.Kill(cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	for {
		if st, err := os.Stat(subnetFile); err == nil && st.Sys().(*syscall.Stat_t).Ino != old {
			break
		}
		select {
		case err := <-exited:
			out, _ := os.ReadFile(logPath)
			t.Fatalf("flanneld exited (%v) before writing %s:\n%s", err, subnetFile, out)
		case <-ctx.Done():
			stop()
			out, _ := os.ReadFile(logPath)
			t.Fatalf("flanneld wrote no %s in 30 s:\n%s", subnetFile, out)
		case <-time.After(50 * time.Millisecond):
		}
	}
	stop()
	out, _ := os.ReadFile(logPath)
	return string(out)
}

// flanneldCluster is an IPv4-only host-gw cluster for the real flanneld:
// its binary and the etcd endpoint it reaches from a namespace.
func flanneldCluster(t *testing.T) (c *cluster, flanneld, endpoint string) {
	t.Helper()
	testutil.RequireRoot(t)
	flanneld = flanneldBinary(t)
	c = newCluster(t, hostGW16)
	return c, flanneld, c.srv.UnixEndpoint(t)
}

// subnets reads every lease key (its last element) and value as written.
func (c *cluster) subnets(t *testing.T) map[string]string {
	t.Helper()
	resp, err := c.cli.Get(testCtx(t), registry.DefaultPrefix+"/subnets/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, kv := range resp.Kvs {
		m[strings.TrimPrefix(string(kv.Key), registry.DefaultPrefix+"/subnets/")] = string(kv.Value)
	}
	return m
}

// newKey returns the one key in after that is not in before.
func newKey(t *testing.T, before, after map[string]string) string {
	t.Helper()
	var added []string
	for k := range after {
		if _, ok := before[k]; !ok {
			added = append(added, k)
		}
	}
	if len(added) != 1 {
		t.Fatalf("flanneld added the keys %v, want one", added)
	}
	return added[0]
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// The real flanneld v0.28.9 and we write the same lease keys, lease
// values and subnet files, byte for byte, IPv4-only and dual-stack; each
// reads what the other wrote: flanneld takes back a lease we rewrote and
// the subnets of a subnet file we wrote, we take back its lease and read
// its IPv4-only and dual-stack leases side by side.
//
// flanneld itself cannot draw a dual-stack subnet while an IPv4-only lease
// exists (v0.28.9 dereferences the missing IPv6 subnet and panics), so its
// IPv4-only lease is taken aside while it draws one, then put back as it
// wrote it.
func TestFlanneldDualStackMatches(t *testing.T) {
	c, bin, endpoint := flanneldCluster(t)
	ctx := testCtx(t)

	// A flanneld node of the IPv4-only days, with --ip-masq.
	b := newFlannelNode(t, "198.18.0.12/24", "fd00:198:18::12/64")
	bFile := filepath.Join(t.TempDir(), "subnet.env")
	before := c.subnets(t)
	b.runFlanneld(t, bin, endpoint, bFile, "--ip-masq")
	keyB := newKey(t, before, c.subnets(t))
	valueB := c.subnets(t)[keyB]
	t.Logf("flanneld, IPv4 only: key %s value %s file %q", keyB, valueB, readFile(t, bFile))
	subnetB, v6, err := registry.ParseSubnetKey(keyB)
	if err != nil || v6.IsValid() {
		t.Fatalf("flanneld's IPv4-only key %q: %s, %s, %v", keyB, subnetB, v6, err)
	}
	if ours := registry.SubnetKey(subnetB); ours != keyB {
		t.Errorf("our key %q, flanneld's %q", ours, keyB)
	}
	ourValue, err := json.Marshal(registry.LeaseAttrs{PublicIP: "198.18.0.12", BackendType: "host-gw"})
	if err != nil || string(ourValue) != valueB {
		t.Errorf("our IPv4-only value %s (%v), flanneld's %s", ourValue, err, valueB)
	}
	envB := subnetfile.Env{Network: netip.MustParsePrefix("10.244.0.0/16"), Subnet: subnetB, MTU: b.link.Attrs().MTU, IPMasq: true}
	if ours, err := subnetfile.Format(envB); err != nil || string(ours) != readFile(t, bFile) {
		t.Errorf("our IPv4-only subnet file %q (%v), flanneld's %q", ours, err, readFile(t, bFile))
	}
	if _, err := c.cli.Delete(ctx, registry.DefaultPrefix+"/subnets/"+keyB); err != nil {
		t.Fatal(err)
	}

	// The network turns dual-stack; a flanneld node starts with it.
	if _, err := c.cli.Put(ctx, registry.DefaultPrefix+"/config", dualStack16); err != nil {
		t.Fatal(err)
	}
	reg := newRegistry(t, c.cli, "")
	cfg, err := reg.Config(ctx)
	if err != nil {
		t.Fatal(err)
	}
	a := newFlannelNode(t, "198.18.0.11/24", "fd00:198:18::11/64")
	aFile := filepath.Join(t.TempDir(), "subnet.env")
	before = c.subnets(t)
	a.runFlanneld(t, bin, endpoint, aFile, "--ip-masq")
	keyA := newKey(t, before, c.subnets(t))
	valueA, fileA := c.subnets(t)[keyA], readFile(t, aFile)
	t.Logf("flanneld, dual stack: key %s value %s file %q", keyA, valueA, fileA)
	subnetA, subnetA6, err := registry.ParseSubnetKey(keyA)
	if err != nil || !subnetA6.IsValid() {
		t.Fatalf("flanneld's dual-stack key %q: %s, %s, %v", keyA, subnetA, subnetA6, err)
	}
	if ours := registry.DualStackKey(subnetA, subnetA6); ours != keyA {
		t.Errorf("our key %q, flanneld's %q", ours, keyA)
	}
	if !cfg.InRange(subnetA) || !cfg.InRange(subnetA6) {
		t.Errorf("flanneld drew %s and %s; our config hands out %s..%s and %s..%s", subnetA, subnetA6,
			cfg.SubnetMin, cfg.SubnetMax, cfg.IPv6SubnetMin, cfg.IPv6SubnetMax)
	}
	ourValue, err = json.Marshal(registry.LeaseAttrs{PublicIP: "198.18.0.11", PublicIPv6: "fd00:198:18::11", BackendType: "host-gw"})
	if err != nil || string(ourValue) != valueA {
		t.Errorf("our dual-stack value %s (%v), flanneld's %s", ourValue, err, valueA)
	}
	envA := subnetfile.Env{Network: cfg.Network, Subnet: subnetA, IPv6Network: cfg.IPv6Network, IPv6Subnet: subnetA6,
		MTU: a.link.Attrs().MTU, IPMasq: true}
	if ours, err := subnetfile.Format(envA); err != nil || string(ours) != fileA {
		t.Errorf("our dual-stack subnet file %q (%v), flanneld's %q", ours, err, fileA)
	}
	if got, err := subnetfile.Read(aFile); err != nil || got != envA {
		t.Errorf("Read(flanneld's file) = %+v, %v; want %+v", got, err, envA)
	}

	// We read both flanneld leases, each as it is, and a node of ours
	// joins next to them.
	c.put(t, registry.DefaultPrefix+"/subnets/"+keyB, valueB, 3600)
	s := startWatch(t, reg).next(t)
	if len(s.Leases) != 2 || len(s.Skipped) != 0 {
		t.Fatalf("our view of flanneld's leases: %+v", s)
	}
	for _, l := range s.Leases {
		want := registry.Lease{Subnet: subnetB, PublicIP: netip.MustParseAddr("198.18.0.12")}
		if l.IPv6Subnet.IsValid() {
			want = registry.Lease{Subnet: subnetA, IPv6Subnet: subnetA6, PublicIP: netip.MustParseAddr("198.18.0.11"),
				PublicIPv6: netip.MustParseAddr("fd00:198:18::11")}
		}
		if l.Subnet != want.Subnet || l.IPv6Subnet != want.IPv6Subnet || l.PublicIP != want.PublicIP || l.PublicIPv6 != want.PublicIPv6 {
			t.Errorf("read %s as %s, %s via %s, %s", l.Key, l.Subnet, l.IPv6Subnet, l.PublicIP, l.PublicIPv6)
		}
	}
	lc, err := reg.Acquire(ctx, dualOpts("198.18.0.13", "fd00:198:18::13", time.Hour))
	if err != nil || lc.Subnet == subnetA || lc.Subnet == subnetB || lc.IPv6Subnet == subnetA6 || !lc.IPv6Subnet.IsValid() {
		t.Errorf("our node next to flanneld's: %+v, %v", lc, err)
	}

	// hgw-ebpf takes node A over: its lease, rewritten to flanneld's very
	// bytes, and its subnet file, likewise.
	prev, err := subnetfile.Read(aFile)
	if err != nil {
		t.Fatal(err)
	}
	o := dualOpts("198.18.0.11", "fd00:198:18::11", time.Hour)
	o.Previous, o.PreviousIPv6 = prev.Subnet, prev.IPv6Subnet
	l, err := reg.Acquire(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if l.Key != registry.DefaultPrefix+"/subnets/"+keyA || c.subnets(t)[keyA] != valueA {
		t.Errorf("we took %s = %s, want flanneld's %s = %s", l.Key, c.subnets(t)[l.Key], keyA, valueA)
	}
	if err := subnetfile.Write(aFile, envA); err != nil || readFile(t, aFile) != fileA {
		t.Errorf("our subnet file %q (%v), flanneld's %q", readFile(t, aFile), err, fileA)
	}

	// flanneld comes back to node A: it takes back the lease we wrote.
	before = c.subnets(t)
	a.runFlanneld(t, bin, endpoint, aFile, "--ip-masq")
	if after := c.subnets(t); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("flanneld changed the leases we wrote: %v, were %v", after, before)
	}
	if got := readFile(t, aFile); got != fileA {
		t.Errorf("flanneld rewrote our subnet file as %q, want %q", got, fileA)
	}

	// Without a lease, flanneld takes both subnets of a subnet file we
	// wrote: it reads our IPv6 lines. They lie beyond the first 100
	// subnets every lease here was drawn from, so they are free (taken,
	// flanneld would draw, and panic over the IPv4-only lease).
	if err := reg.Release(ctx, subnetA, o.PublicIP); err != nil {
		t.Fatal(err)
	}
	chosen := envA
	chosen.Subnet, chosen.IPv6Subnet = netip.MustParsePrefix("10.244.200.0/24"), netip.MustParsePrefix("fd00:10:244:c8::/64")
	if err := subnetfile.Write(aFile, chosen); err != nil {
		t.Fatal(err)
	}
	before = c.subnets(t)
	a.runFlanneld(t, bin, endpoint, aFile, "--ip-masq")
	if got, want := newKey(t, before, c.subnets(t)), registry.DualStackKey(chosen.Subnet, chosen.IPv6Subnet); got != want {
		t.Errorf("flanneld took %s after reading our subnet file, want %s", got, want)
	}
}

// flanneld logs the ranges it draws from ("Picking subnet in range
// 10.244.1.0 ... 10.244.255.0", "Picking ipv6 subnet in range ..."): ours
// are the same for configs off the beaten track, and what it draws is in
// them.
func TestFlanneldConfigRanges(t *testing.T) {
	c, bin, endpoint := flanneldCluster(t)
	ctx := testCtx(t)
	n := newFlannelNode(t, "198.18.0.11/24", "fd00:198:18::11/64")
	picked := regexp.MustCompile(`Picking (ipv6 )?subnet in range (\S+) \.\.\. (\S+)`)
	for _, config := range []string{
		// A /63: flannel's default IPv6SubnetLen is then 65, not 64.
		`{"Network":"10.244.0.0/22","EnableIPv6":true,"IPv6Network":"fd00:10:244::/63","Backend":{"Type":"host-gw"}}`,
		`{"Network":"192.168.6.0/23","SubnetLen":26,"SubnetMax":"192.168.7.64","EnableIPv6":true,"IPv6Network":"fd00:10:244:100::/56",` +
			`"IPv6SubnetLen":80,"IPv6SubnetMin":"fd00:10:244:100:1::","IPv6SubnetMax":"fd00:10:244:1ff:ffff::","Backend":{"Type":"host-gw"}}`,
	} {
		if _, err := c.cli.Delete(ctx, registry.DefaultPrefix+"/subnets/", clientv3.WithPrefix()); err != nil {
			t.Fatal(err)
		}
		if _, err := c.cli.Put(ctx, registry.DefaultPrefix+"/config", config); err != nil {
			t.Fatal(err)
		}
		cfg, err := registry.ParseConfig([]byte(config))
		if err != nil {
			t.Fatalf("ParseConfig(%s): %v", config, err)
		}
		log := n.runFlanneld(t, bin, endpoint, filepath.Join(t.TempDir(), "subnet.env"))
		got := map[string]string{}
		for _, m := range picked.FindAllStringSubmatch(log, -1) {
			got[m[1]] = m[2] + " ... " + m[3]
		}
		want := map[string]string{
			"":      fmt.Sprintf("%s ... %s", cfg.SubnetMin, cfg.SubnetMax),
			"ipv6 ": fmt.Sprintf("%s ... %s", cfg.IPv6SubnetMin, cfg.IPv6SubnetMax),
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("config %s: flanneld picks in %v, our ranges are %v", config, got, want)
		}
		t.Logf("config %s: flanneld picks in %v", config, got)
		var key string
		for k := range c.subnets(t) {
			key = k
		}
		v4, v6, err := registry.ParseSubnetKey(key)
		if err != nil || !cfg.InRange(v4) || !cfg.InRange(v6) {
			t.Errorf("config %s: flanneld took %q (%s, %s, %v), outside our ranges", config, key, v4, v6, err)
		}
	}
}
