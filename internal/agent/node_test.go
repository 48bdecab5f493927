package agent

// The agent's start-up and resync steps on a node of their own: a network
// namespace with an eth0 and a cni0, a pin root under /sys/fs/bpf, and the
// probes replaced so that each answer (conntrack there or not, a policy
// engine or not) can be forced. Every step runs on a thread inside the
// namespace (testutil.Do), iptables included.

import (
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	promtest "github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
	"github.com/hgw-ebpf/hgw-ebpf/internal/metrics"
	"github.com/hgw-ebpf/hgw-ebpf/internal/netfilter"
	"github.com/hgw-ebpf/hgw-ebpf/internal/registry"
	"github.com/hgw-ebpf/hgw-ebpf/internal/subnetfile"
	"github.com/hgw-ebpf/hgw-ebpf/internal/testutil"
)

type agentEnv struct {
	ns   netns.NsHandle
	nl   *netlink.Handle
	root string // pin root
}

func newAgentEnv(t *testing.T) *agentEnv {
	t.Helper()
	testutil.RequireRoot(t)
	_, ns := testutil.NetNS(t, "agent")
	nl, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nl.Close)
	e := &agentEnv{ns: ns, nl: nl, root: filepath.Join("/sys/fs/bpf", "hgwt-agent-"+testutil.RandHex(t, 4))}
	t.Cleanup(func() {
		testutil.Do(t, ns, func() {
			if err := datapath.Cleanup(e.root); err != nil {
				t.Errorf("cleanup %s: %v", e.root, err)
			}
		})
	})
	eth0 := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0", MTU: 1500}, PeerName: "eth0-peer"}
	e.addLink(t, eth0)
	addr, _ := netlink.ParseAddr("198.18.0.11/24")
	if err := nl.AddrAdd(eth0, addr); err != nil {
		t.Fatal(err)
	}
	e.addLink(t, &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "cni0", MTU: 1500}})
	return e
}

func (e *agentEnv) addLink(t *testing.T, l netlink.Link) {
	t.Helper()
	if err := e.nl.LinkAdd(l); err != nil {
		t.Fatalf("add %s: %v", l.Attrs().Name, err)
	}
	if err := e.nl.LinkSetUp(l); err != nil {
		t.Fatalf("up %s: %v", l.Attrs().Name, err)
	}
}

// addPod adds a veth pair whose host end (name) is a port of cni0.
func (e *agentEnv) addPod(t *testing.T, name string) {
	t.Helper()
	e.addLink(t, &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"})
	l, err := e.nl.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	br, err := e.nl.LinkByName("cni0")
	if err != nil {
		t.Fatal(err)
	}
	if err := e.nl.LinkSetMaster(l, br); err != nil {
		t.Fatal(err)
	}
}

func (e *agentEnv) config(datapathMode string) Config {
	return Config{Bridge: "cni0", Iface: "eth0", Datapath: datapathMode, AttachMode: datapath.ModeAuto,
		PinRoot: e.root, ResyncInterval: time.Second}
}

// node builds the agent's state for this env, as Run does after the lease.
func (e *agentEnv) node(t *testing.T, cfg Config, p probes) *node {
	t.Helper()
	var n *node
	testutil.Do(t, e.ns, func() {
		ul, err := resolveUnderlay("eth0", netip.Addr{})
		if err != nil {
			t.Fatal(err)
		}
		n = &node{cfg: cfg, log: testutil.Logger(t), ul: ul,
			network: netip.MustParsePrefix("10.244.0.0/16"), probes: p,
			metrics: metrics.New(nil), ready: metrics.NewReadiness(), firstApply: make(chan struct{})}
		n.setOwn(registry.Lease{Subnet: netip.MustParsePrefix("10.244.3.0/24"), PublicIP: ul.publicIP})
	})
	t.Cleanup(n.close)
	return n
}

func (e *agentEnv) do(t *testing.T, fn func()) { testutil.Do(t, e.ns, fn) }

// attached lists program@dev as Attachments reports them (live devices).
func (e *agentEnv) attached(t *testing.T) map[string]datapath.Attachment {
	t.Helper()
	out := map[string]datapath.Attachment{}
	e.do(t, func() {
		atts, err := datapath.Attachments(e.root)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range atts {
			if a.Ifindex != 0 {
				out[string(a.Program)+"@"+a.Dev] = a
			}
		}
	})
	return out
}

// kernelPrograms counts the BPF programs the kernel runs at dev's ingress
// (tcx links and tc filters), whoever attached them.
func (e *agentEnv) kernelPrograms(t *testing.T, dev string) int {
	t.Helper()
	l, err := e.nl.LinkByName(dev)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	// The ifindex means a device of the namespace the query runs in.
	e.do(t, func() {
		res, err := link.QueryPrograms(link.QueryOptions{Target: l.Attrs().Index, Attach: ebpf.AttachTCXIngress})
		if err != nil {
			t.Fatalf("query tcx programs of %s: %v", dev, err)
		}
		n += len(res.Programs)
	})
	filters, err := e.nl.FilterList(l, netlink.HANDLE_MIN_INGRESS)
	if err != nil {
		t.Fatal(err)
	}
	return n + len(filters)
}

func (e *agentEnv) programConfig(t *testing.T) datapath.NodeConfig {
	t.Helper()
	maps, err := datapath.OpenPinned(e.root)
	if err != nil {
		t.Fatal(err)
	}
	defer maps.Close()
	c, ok, err := maps.Config()
	if err != nil || !ok {
		t.Fatalf("config map: %v (written: %v)", err, ok)
	}
	return c
}

func gauge(t *testing.T, n *node, name string, labels ...string) float64 {
	t.Helper()
	switch name {
	case "active":
		return promtest.ToFloat64(n.metrics.FastPathActive)
	case "check":
		return promtest.ToFloat64(n.metrics.FastPathChecks.WithLabelValues(labels...))
	case "engine":
		return promtest.ToFloat64(n.metrics.PolicyEngines.WithLabelValues(labels...))
	}
	t.Fatalf("no gauge %s", name)
	return 0
}

func noEngines() []netfilter.Engine { return nil }

// Until the conntrack lookup is usable the programs redirect nothing (no
// conntrack flag, no ignore flag: they fail closed) and from_underlay is
// not attached, also when an earlier run left it attached. Once
// nf_conntrack is there, the next resync loads programs that can ask it,
// swaps them into every attachment, sets the flag and attaches
// from_underlay.
func TestConntrackUnusableFailsClosedUntilItIsThere(t *testing.T) {
	e := newAgentEnv(t)
	e.addPod(t, "vethpod")
	// What an earlier run (with conntrack) left: both programs and a pod.
	e.do(t, func() {
		dp, err := datapath.Load(datapath.Options{PinRoot: e.root})
		if err != nil {
			t.Fatal(err)
		}
		defer dp.Close()
		for dev, p := range map[string]datapath.Program{"cni0": datapath.FromPods, "eth0": datapath.FromUnderlay, "vethpod": datapath.FromPods} {
			if _, err := dp.Attach(dev, p); err != nil {
				t.Fatal(err)
			}
		}
	})

	ctThere := false
	loads := 0
	n := e.node(t, e.config(DatapathEBPF), probes{
		conntrack:       func() (bool, error) { return ctThere, nil },
		conntrackLoaded: func() bool { return ctThere },
		loadConntrack: func() error {
			loads++
			return exec.ErrNotFound
		},
		engines: noEngines,
	})
	n.without = datapath.Features{ConntrackLookup: true} // the kernel as it is without nf_conntrack
	e.do(t, func() {
		if err := n.startDatapath(); err != nil {
			t.Fatal(err)
		}
	})
	if c := e.programConfig(t); c.Conntrack || c.IgnoreConntrack || c.StepAside {
		t.Errorf("config %+v: want neither conntrack flag (fail closed) and no step aside", c)
	}
	atts := e.attached(t)
	if _, ok := atts["from_underlay@eth0"]; ok {
		t.Error("from_underlay left attached though conntrack cannot be asked")
	}
	if e.kernelPrograms(t, "eth0") != 0 {
		t.Error("the kernel still runs a program at eth0's ingress")
	}
	if _, ok := atts["from_pods@cni0"]; !ok {
		t.Errorf("from_pods not attached to cni0: %v", atts)
	}
	if loads != 1 {
		t.Errorf("nf_conntrack load tried %d times at start, want 1", loads)
	}
	if gauge(t, n, "active") != 0 || gauge(t, n, "check", "conntrack") != 0 {
		t.Error("metrics say the fast path or its conntrack check is active")
	}
	if notes := strings.Join(n.ready.Notes(), "\n"); !strings.Contains(notes, "closed") || !strings.Contains(notes, "not loaded") {
		t.Errorf("/readyz notes %q: want the closed fast path and why", notes)
	}

	// A resync with nothing changed changes nothing, but asks again.
	e.do(t, n.check)
	if _, ok := e.attached(t)["from_underlay@eth0"]; ok || e.programConfig(t).Conntrack {
		t.Error("a resync opened the fast path while conntrack is still missing")
	}
	if loads != 2 {
		t.Errorf("nf_conntrack load tried %d times after one resync, want 2", loads)
	}

	// nf_conntrack arrives (kube-proxy loaded it).
	before := e.attached(t)
	ctThere, n.without = true, datapath.Features{}
	e.do(t, n.check)
	after := e.attached(t)
	if c := e.programConfig(t); !c.Conntrack {
		t.Errorf("config %+v after nf_conntrack came: want the conntrack flag", c)
	}
	if _, ok := after["from_underlay@eth0"]; !ok {
		t.Errorf("from_underlay not attached after nf_conntrack came: %v", after)
	}
	for _, key := range []string{"from_pods@cni0", "from_pods@vethpod"} {
		if before[key].ProgramID == after[key].ProgramID {
			t.Errorf("%s still runs program %d, loaded without the conntrack lookup", key, before[key].ProgramID)
		}
	}
	if gauge(t, n, "active") != 1 || gauge(t, n, "check", "conntrack") != 1 {
		t.Error("metrics do not say the fast path and its conntrack check are active")
	}
}

// A NetworkPolicy engine makes the programs step aside (they stay
// attached, passing every packet on) and says so; when it goes, the next
// resync brings the fast path back. --allow-policy-bypass keeps it on.
func TestPolicyEngineStepsAsideAndBack(t *testing.T) {
	e := newAgentEnv(t)
	engines := []netfilter.Engine{knp}
	p := probes{
		conntrack:       func() (bool, error) { return true, nil },
		conntrackLoaded: func() bool { return true },
		loadConntrack:   func() error { t.Error("nf_conntrack load tried though the lookup is there"); return nil },
		engines:         func() []netfilter.Engine { return engines },
	}
	n := e.node(t, e.config(DatapathEBPF), p)
	e.do(t, func() {
		if err := n.startDatapath(); err != nil {
			t.Fatal(err)
		}
	})
	if c := e.programConfig(t); !c.StepAside || !c.Conntrack {
		t.Errorf("config %+v with kube-network-policies present: want step aside (and conntrack)", c)
	}
	if atts := e.attached(t); len(atts) != 2 {
		t.Errorf("attachments %v: stepping aside keeps both programs attached", atts)
	}
	if gauge(t, n, "active") != 0 || gauge(t, n, "engine", netfilter.EngineKubeNetworkPolicies) != 1 || gauge(t, n, "check", "policy") != 1 {
		t.Error("metrics do not show the engine and the inactive fast path")
	}
	if notes := strings.Join(n.ready.Notes(), "\n"); !strings.Contains(notes, "stepping aside for NetworkPolicy engine kube-network-policies") {
		t.Errorf("/readyz notes %q: want the engine named", notes)
	}

	engines = nil
	e.do(t, n.check)
	if c := e.programConfig(t); c.StepAside {
		t.Error("still stepping aside one resync after the engine went")
	}
	if gauge(t, n, "active") != 1 || strings.Join(n.ready.Notes(), "\n") != "fast path: active\n"+n.fastPath().Checks() {
		t.Errorf("after the engine went: active %v, notes %q", gauge(t, n, "active"), n.ready.Notes())
	}

	bypass := e.config(DatapathEBPF)
	bypass.AllowPolicyBypass = true
	engines = []netfilter.Engine{knp}
	nb := e.node(t, bypass, p)
	e.do(t, func() {
		if err := nb.startDatapath(); err != nil {
			t.Fatal(err)
		}
	})
	if c := e.programConfig(t); c.StepAside {
		t.Error("--allow-policy-bypass: stepped aside anyway")
	}
	if gauge(t, nb, "check", "policy") != 0 || !strings.Contains(strings.Join(nb.ready.Notes(), "\n"), "BYPASSING") {
		t.Errorf("--allow-policy-bypass: policy check gauge %v, notes %q", gauge(t, nb, "check", "policy"), nb.ready.Notes())
	}
}

// Restarted with --datapath routes after an ebpf run, the agent leaves
// nothing of ours attached (tcx links and tc filters, pod veths too) and
// no pins for hgw-cni to fast-path new pods with; it checks again on every
// resync.
func TestRoutesModeRemovesWhatAnEbpfRunLeft(t *testing.T) {
	e := newAgentEnv(t)
	e.addPod(t, "vethpod")
	e.addPod(t, "vethtc")
	ebpfNode := e.node(t, e.config(DatapathEBPF), probes{
		conntrack: func() (bool, error) { return true, nil }, conntrackLoaded: func() bool { return true },
		loadConntrack: func() error { return nil }, engines: noEngines,
	})
	e.do(t, func() {
		if err := ebpfNode.startDatapath(); err != nil {
			t.Fatal(err)
		}
		if _, err := ebpfNode.programs().Attach("vethpod", datapath.FromPods); err != nil {
			t.Fatal(err)
		}
		// A pod attached in tc mode (an older kernel's run, or hgw-cni's).
		tc, err := datapath.Load(datapath.Options{PinRoot: e.root, Mode: datapath.ModeTC})
		if err != nil {
			t.Fatal(err)
		}
		defer tc.Close()
		if _, err := tc.Attach("vethtc", datapath.FromPods); err != nil {
			t.Fatal(err)
		}
	})
	ebpfNode.close()
	if got := len(e.attached(t)); got != 4 {
		t.Fatalf("setup: %d attachments, want 4", got)
	}

	routes := e.node(t, e.config(DatapathRoutes), probes{})
	e.do(t, routes.check)
	if atts := e.attached(t); len(atts) != 0 {
		t.Errorf("attachments after a routes resync: %v", atts)
	}
	for _, dev := range []string{"eth0", "cni0", "vethpod", "vethtc"} {
		if n := e.kernelPrograms(t, dev); n != 0 {
			t.Errorf("%s: the kernel still runs %d program(s) at its ingress", dev, n)
		}
	}
	if _, err := os.Stat(e.root); !os.IsNotExist(err) {
		t.Errorf("pin root %s still there (%v): hgw-cni would find maps to fast-path with", e.root, err)
	}

	// Something attaches again behind the agent's back (an old hgw-cni):
	// the next resync removes it too.
	e.do(t, func() {
		dp, err := datapath.Load(datapath.Options{PinRoot: e.root})
		if err != nil {
			t.Fatal(err)
		}
		defer dp.Close()
		if _, err := dp.Attach("vethpod", datapath.FromPods); err != nil {
			t.Fatal(err)
		}
	})
	e.do(t, routes.check)
	if atts := e.attached(t); len(atts) != 0 {
		t.Errorf("attachments after the second routes resync: %v", atts)
	}
}

// flanneld's iptables duties through the agent's steps: at start one copy
// of flanneld's rules (which flanneld left), a deleted rule back after one
// resync (and counted), the subnet file saying FLANNEL_IPMASQ=true; a
// restart without --ip-masq removes the masquerade chain and keeps the
// FORWARD one; cleanup leaves none.
func TestIPTablesDutiesAcrossResyncAndRestart(t *testing.T) {
	e := newAgentEnv(t)
	cfg := e.config(DatapathRoutes)
	cfg.IPMasq = true
	cfg.SubnetFile = filepath.Join(t.TempDir(), "subnet.env")
	masqRule := `-A FLANNEL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully`
	n := e.node(t, cfg, probes{})
	e.do(t, func() {
		// flanneld's chain as flanneld left it.
		iptablesRestore(t, "*nat\n:FLANNEL-POSTRTG - [0:0]\n"+
			`-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG`+"\n"+masqRule+"\nCOMMIT\n")
		if err := n.startIPTables(); err != nil {
			t.Fatal(err)
		}
		expectRules(t, "after start", 7, 3) // masquerade: the jump and six rules
		iptablesRestore(t, "*nat\n-D"+strings.TrimPrefix(masqRule, "-A")+"\nCOMMIT\n")
		n.check()
		if got := countRules(t, "nat", "FLANNEL-POSTRTG"); got != 7 {
			t.Errorf("nat: %d lines mention FLANNEL-POSTRTG one resync after a rule was deleted, want 7", got)
		}
		if got := promtest.ToFloat64(n.metrics.IPTablesRepairs); got != 1 {
			t.Errorf("hgw_iptables_repairs_total = %v, want 1", got)
		}
	})
	if err := n.writeSubnetFile(); err != nil {
		t.Fatal(err)
	}
	if env, err := subnetfile.Read(cfg.SubnetFile); err != nil || !env.IPMasq {
		t.Errorf("subnet file with --ip-masq: %+v, %v; want FLANNEL_IPMASQ=true", env, err)
	}

	cfg.IPMasq = false
	restarted := e.node(t, cfg, probes{})
	e.do(t, func() {
		if err := restarted.startIPTables(); err != nil {
			t.Fatal(err)
		}
		expectRules(t, "after a start without --ip-masq", 0, 3)
		if err := restarted.removeIPTables(); err != nil {
			t.Fatal(err)
		}
		expectRules(t, "after cleanup", 0, 0)
	})
}

func iptablesRestore(t *testing.T, in string) {
	t.Helper()
	cmd := exec.Command("iptables-restore", "--noflush")
	cmd.Stdin = strings.NewReader(in)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("iptables-restore: %v\n%s\n%s", err, out, in)
	}
}

// expectRules checks how many lines of the nat and filter tables mention
// flanneld's masquerade and forward chains.
func expectRules(t *testing.T, when string, masq, fwd int) {
	t.Helper()
	if got := countRules(t, "nat", "FLANNEL-POSTRTG"); got != masq {
		t.Errorf("nat: %d lines mention FLANNEL-POSTRTG %s, want %d", got, when, masq)
	}
	if got := countRules(t, "filter", "FLANNEL-FWD"); got != fwd {
		t.Errorf("filter: %d lines mention FLANNEL-FWD %s, want %d", got, when, fwd)
	}
}

// countRules counts iptables-save lines of table that mention chain
// (rules in it and jumps to it; not its declaration).
func countRules(t *testing.T, table, chain string) int {
	t.Helper()
	out, err := exec.Command("iptables-save", "-t", table).CombinedOutput()
	if err != nil {
		t.Fatalf("iptables-save: %v\n%s", err, out)
	}
	n := 0
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "-A ") && strings.Contains(l, chain) {
			n++
		}
	}
	return n
}
