package lab

import (
	"net/netip"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/hgw-ebpf/hgw-ebpf/internal/testutil"
)

var (
	testCluster = netip.MustParsePrefix("10.244.0.0/16")
	testSubnets = []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("10.244.2.0/24")}
	declRE      = regexp.MustCompile(`(?m)^:(\S+) `)
	targetRE    = regexp.MustCompile(`-j (\S+)`)
)

// testServices: NodePorts of both traffic policies backed by a pod on
// node 2 (10.244.2.0/24), seen from node 1, which has no local endpoint.
func testServices() []ServicePort {
	ep := []netip.AddrPort{netip.MustParseAddrPort("10.244.2.2:8080")}
	return []ServicePort{
		{Name: "hgw/web:http", Protocol: "tcp", ClusterIP: netip.MustParseAddr("10.96.0.10"), Port: 80, NodePort: 30080, Endpoints: ep},
		{Name: "hgw/web-local:http", Protocol: "tcp", ClusterIP: netip.MustParseAddr("10.96.0.11"), Port: 80, NodePort: 30081, LocalOnly: true, Endpoints: ep},
	}
}

func kubeNode(synthetic int) KubeNode {
	return KubeNode{Synthetic: synthetic, ClusterCIDR: testCluster, NodeSubnet: testSubnets[0], PodSubnets: testSubnets, Services: testServices()}
}

func TestKubeProxyRulesShape(t *testing.T) {
	const synthetic = 300
	rules, err := KubeProxyRules(kubeNode(synthetic))
	if err != nil {
		t.Fatal(err)
	}
	count := func(re string) int { return len(regexp.MustCompile(re).FindAllString(rules, -1)) }
	if n := count(`(?m)^:KUBE-SVC-[A-Z2-7]{16} `); n != synthetic+2 {
		t.Errorf("%d KUBE-SVC chains, want %d", n, synthetic+2)
	}
	if n := count(`(?m)^:KUBE-SEP-[A-Z2-7]{16} `); n != 2*synthetic+2 {
		t.Errorf("%d KUBE-SEP chains, want %d", n, 2*synthetic+2)
	}
	if n := count(`(?m)^-A KUBE-SERVICES -d 10\.\d+\.\d+\.\d+/32 .* -j KUBE-SVC-`); n != synthetic+2 {
		t.Errorf("%d service portals in KUBE-SERVICES, want %d", n, synthetic+2)
	}
	if n := count(`-j DNAT --to-destination 10\.244\.[12]\.\d+:8080`); n != 2*synthetic+2 {
		t.Errorf("%d DNAT rules to pod endpoints, want %d", n, 2*synthetic+2)
	}
	for _, want := range []string{
		"-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
		"-I FORWARD 2 -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD",
		"-I POSTROUTING 1 -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING",
		"-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully",
		"-m statistic --mode random --probability 0.50000000000",
		// eTP=Cluster: the node masquerades what it sends to another node's backend.
		"-A KUBE-NODEPORTS -p tcp -m comment --comment \"hgw/web:http\" -m tcp --dport 30080 -j KUBE-EXT-",
		"-m comment --comment \"masquerade traffic for hgw/web:http external destinations\" -j KUBE-MARK-MASQ",
		// eTP=Local on a node with no local endpoint: dropped, not forwarded.
		"-A KUBE-EXTERNAL-SERVICES -p tcp -m comment --comment \"hgw/web-local:http has no local endpoints\" -m addrtype --dst-type LOCAL -m tcp --dport 30081 -j DROP",
	} {
		if !strings.Contains(rules, want) {
			t.Errorf("rules lack %q", want)
		}
	}
	if strings.Contains(rules, "FLANNEL") {
		t.Error("kube-proxy rules carry flanneld's chains; those are FlannelRules")
	}
	// Every jump goes to a builtin target or a chain the tables declare,
	// and every chain name fits iptables' 28 characters.
	declared := map[string]bool{}
	for _, m := range declRE.FindAllStringSubmatch(rules, -1) {
		declared[m[1]] = true
		if len(m[1]) > 28 {
			t.Errorf("chain %s is longer than 28 characters", m[1])
		}
	}
	builtin := map[string]bool{"ACCEPT": true, "DROP": true, "RETURN": true, "DNAT": true, "MASQUERADE": true, "MARK": true}
	for _, m := range targetRE.FindAllStringSubmatch(rules, -1) {
		if !builtin[m[1]] && !declared[m[1]] {
			t.Errorf("jump to undeclared chain %s", m[1])
		}
	}
	// Same input, same rules: chain names are hashes, not random.
	again, _ := KubeProxyRules(kubeNode(synthetic))
	if again != rules {
		t.Error("rule generation is not deterministic")
	}
	// On the backend's node the eTP=Local NodePort leads to its endpoint.
	local := kubeNode(0)
	local.NodeSubnet = testSubnets[1]
	lr, _ := KubeProxyRules(local)
	if strings.Contains(lr, "has no local endpoints") || !regexp.MustCompile(`(?m)^-A KUBE-SVL-\S+ -m comment --comment "hgw/web-local:http -> 10.244.2.2:8080" -j KUBE-SEP-`).MatchString(lr) {
		t.Errorf("eTP=Local on the backend's node does not lead to the local endpoint:\n%s", lr)
	}

	for _, bad := range []KubeNode{
		{Synthetic: 10},
		{Synthetic: 10, ClusterCIDR: testCluster, NodeSubnet: testSubnets[0]},
		{ClusterCIDR: testCluster, NodeSubnet: testSubnets[0], Services: []ServicePort{{Name: "x", Protocol: "sctp", ClusterIP: netip.MustParseAddr("10.96.0.1"), Port: 1}}},
		{ClusterCIDR: testCluster, NodeSubnet: testSubnets[0], Services: []ServicePort{{Name: "x", Protocol: "tcp", ClusterIP: netip.MustParseAddr("10.96.0.1"), Port: 1}}},
	} {
		if _, err := KubeProxyRules(bad); err == nil {
			t.Errorf("rules generated for %+v", bad)
		}
	}
}

// The generated kube-proxy rules and flanneld's, fed to the real
// iptables-restore in a throw-away namespace: iptables accepts the shapes,
// and iptables-save prints flanneld's rules exactly as FlannelRules has
// them, once each.
func TestRulesLoadIntoIPTables(t *testing.T) {
	testutil.RequireRoot(t)
	if _, err := exec.LookPath("iptables-restore"); err != nil {
		t.Skip("no iptables-restore (make deps installs it)")
	}
	ns, _ := testutil.NetNS(t, "kp")
	rules, err := KubeProxyRules(kubeNode(50))
	if err != nil {
		t.Fatal(err)
	}
	flannel := FlannelRules(testCluster, testSubnets[0], true)
	// flanneld first, as on a node where kube-proxy starts later.
	if err := setForwardDrop(ns); err != nil {
		t.Fatal(err)
	}
	for _, in := range []string{RestoreInput(flannel), rules} {
		if out, err := iptablesRestore(ns, in); err != nil {
			t.Fatalf("iptables-restore: %v\n%s", err, out)
		}
	}
	save, err := iptablesSave(ns)
	if err != nil {
		t.Fatal(err)
	}
	// kube-proxy's jumps come first, and nobody reset the policy.
	if !strings.Contains(save, ":FORWARD DROP") {
		t.Error("FORWARD policy no longer DROP after loading the rules")
	}
	kube, fl := strings.Index(save, "-A FORWARD -m comment --comment \"kubernetes forwarding rules\""), strings.Index(save, "-A FORWARD -m comment --comment \"flanneld forward\"")
	if kube < 0 || fl < 0 || kube > fl {
		t.Errorf("FORWARD: kube-proxy's jump at %d, flanneld's at %d: want kube-proxy's first (it prepends)", kube, fl)
	}
	if n := strings.Count(save, "-j DNAT --to-destination"); n != 102 {
		t.Errorf("%d DNAT rules loaded, want 102", n)
	}
	for r, n := range CountRules(save, flannel) {
		if n != 1 {
			t.Errorf("%s %q: %d copies after loading, want 1", r.Table, r.Rule, n)
		}
	}
	if len(flannel) != 10 {
		t.Errorf("%d flanneld rules with --ip-masq, want 10 (7 nat, 3 filter)", len(flannel))
	}
	if n := len(FlannelRules(testCluster, testSubnets[0], false)); n != 3 {
		t.Errorf("%d flanneld rules without --ip-masq, want the 3 forward rules", n)
	}
}
