package lab

import (
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hgw-ebpf/hgw-ebpf/internal/procstat"
)

func TestSubnetEnvRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "subnet.env")
	for _, dual := range []bool{false, true} {
		want := subnetEnv(netip.MustParsePrefix("10.244.7.0/24"), dual)
		if err := writeSubnetEnv(path, want); err != nil {
			t.Fatal(err)
		}
		got, err := readSubnetEnv(path)
		if err != nil || got != want {
			t.Fatalf("read back %+v, %v; want %+v", got, err, want)
		}
		if dual != (got.IPv6Subnet == netip.MustParsePrefix("fd00:10:244:7::/64")) {
			t.Errorf("dual stack %v: IPv6 subnet %s", dual, got.IPv6Subnet)
		}
	}
	// A file the agent is still writing (no MTU yet) is not ready.
	if err := os.WriteFile(path, []byte("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := readSubnetEnv(path); err == nil {
		t.Error("incomplete subnet file accepted")
	}
	if err := os.WriteFile(path, []byte("FLANNEL_SUBNET=banana\nFLANNEL_MTU=1500\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := readSubnetEnv(path); err == nil {
		t.Error("bad FLANNEL_SUBNET accepted")
	}
}

func TestResolve(t *testing.T) {
	st := State{
		Prefix: "hgwx", Underlay: "hgwx-ul",
		Nodes: []Node{{Name: "hgwx-n1"}},
		Pods:  []Pod{{Name: "hgwx-n1-p1", Node: "hgwx-n1"}},
	}
	for in, want := range map[string]string{
		"n1": "hgwx-n1", "hgwx-n1": "hgwx-n1", "n1-p1": "hgwx-n1-p1", "ul": "hgwx-ul", "underlay": "hgwx-ul",
	} {
		if got, err := st.Resolve(in); err != nil || got != want {
			t.Errorf("Resolve(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"n2", "n1-p2", "", "hgwy-n1"} {
		if _, err := st.Resolve(bad); err == nil {
			t.Errorf("Resolve(%q) accepted", bad)
		}
	}
}

func TestProcessIdentity(t *testing.T) {
	self := os.Getpid()
	start, err := procStart(self)
	if err != nil {
		t.Fatal(err)
	}
	if !running(self, start) {
		t.Error("this process does not match its own start time")
	}
	if running(self, start+1) {
		t.Error("a different start time matched: a reused PID would be killed")
	}
	if running(0, 0) {
		t.Error("PID 0 matched")
	}

	// A child that exited and was not reaped yet is a zombie: not running,
	// or terminate would wait on it until its SIGKILL timeout.
	child := exec.Command("true")
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	defer child.Wait()
	childStart, err := procStart(child.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for running(child.Process.Pid, childStart) {
		if time.Now().After(deadline) {
			t.Fatalf("exited child %d still counts as running", child.Process.Pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if st, err := procstat.Read(child.Process.Pid); err != nil || st.State != 'Z' {
		t.Errorf("child %d: %+v, %v; want a zombie (the check above proves nothing otherwise)", child.Process.Pid, st, err)
	}
}

func TestLeaseKey(t *testing.T) {
	if got := leaseKey("/coreos.com/network/", netip.MustParsePrefix("10.244.3.1/24"), netip.Prefix{}); got != "/coreos.com/network/subnets/10.244.3.0-24" {
		t.Errorf("leaseKey = %q", got)
	}
	if got := leaseKey("/coreos.com/network", netip.MustParsePrefix("10.244.3.0/24"), netip.MustParsePrefix("fd00:10:244:3::/64")); got != "/coreos.com/network/subnets/10.244.3.0-24&fd00:10:244:3::-64" {
		t.Errorf("dual-stack leaseKey = %q", got)
	}
}

// A kube lab needs agents and the Kubernetes binaries, and says which is
// missing; an unknown registry is refused by name.
func TestKubeConfigChecks(t *testing.T) {
	bin := t.TempDir()
	c := Config{Registry: "consul", BinDir: bin}
	if err := c.checkKube(); err == nil || !strings.Contains(err.Error(), `"consul"`) {
		t.Errorf("unknown registry: %v", err)
	}
	c = Config{Registry: RegistryKube, Datapath: DatapathStatic, BinDir: bin}
	if err := c.checkKube(); err == nil || !strings.Contains(err.Error(), DatapathStatic) {
		t.Errorf("static kube lab: %v", err)
	}
	c = Config{Registry: RegistryKube, Datapath: DatapathEBPF, BinDir: bin}
	if err := c.checkKube(); err == nil || !strings.Contains(err.Error(), "kube-apiserver") || !strings.Contains(err.Error(), "make deps") {
		t.Errorf("kube lab without kube-apiserver: %v", err)
	}
	if err := os.MkdirAll(KubeBinDir(bin), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{"kube-apiserver", "kubectl"} {
		if err := os.WriteFile(filepath.Join(KubeBinDir(bin), b), nil, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.checkKube(); err != nil {
		t.Errorf("kube lab with both binaries: %v", err)
	}
	c = Config{Registry: RegistryEtcd}
	if err := c.checkKube(); err != nil {
		t.Errorf("etcd lab: %v", err)
	}
}

func TestParseName(t *testing.T) {
	for _, tc := range []struct {
		name      string
		node, pod int
		ok        bool
	}{
		{"hgwx-ul", -1, -1, true},
		{"hgwx-inet", -1, -1, true},
		{"hgwx-n3", 3, -1, true},
		{"hgwx-n3-p12", 3, 12, true},
		{"hgwx-n3-q1", 0, 0, false},
		{"hgwx-nope", 0, 0, false},
		{"hgwxy-n1", 0, 0, false},
	} {
		node, pod, ok := parseName("hgwx", tc.name)
		if ok != tc.ok || (ok && (node != tc.node || pod != tc.pod)) {
			t.Errorf("parseName(%q) = %d, %d, %v; want %d, %d, %v", tc.name, node, pod, ok, tc.node, tc.pod, tc.ok)
		}
	}
	if err := ValidatePrefix("hgwlab"); err != nil {
		t.Error(err)
	}
	for _, bad := range []string{"", "lab", "hgw-x", "hgwLAB", "hgw/../x", "hgw" + strings.Repeat("a", 18)} {
		if ValidatePrefix(bad) == nil {
			t.Errorf("ValidatePrefix(%q) accepted", bad)
		}
	}
}
