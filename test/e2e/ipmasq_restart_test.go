package e2e

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hgw-ebpf/hgw-ebpf/internal/lab"
)

// masqueradeRules counts the copies of flanneld's --ip-masq MASQUERADE
// rules in node.
func masqueradeRules(t *testing.T, st lab.State, node string) int {
	t.Helper()
	copies, err := st.FlannelRuleCopies(node, true)
	if err != nil {
		t.Fatal(err)
	}
	masq := 0
	for r, c := range copies {
		if strings.Contains(r.Rule, "MASQUERADE") {
			masq += c
		}
	}
	return masq
}

// An operator turns --ip-masq on and restarts the agents (as the
// benchmark's kube profile does): each agent adds flanneld's masquerade
// rules once, tells the CNI plugin FLANNEL_IPMASQ=true, and the pods still
// talk to each other.
func TestRestartAgentsWithIPMasq(t *testing.T) {
	l, ctx := startLabFor(t, 2*time.Minute, 2, 1, lab.DatapathEBPF)
	st := l.State()
	for _, n := range st.Nodes {
		if masq := masqueradeRules(t, st, n.Name); masq != 0 {
			t.Fatalf("%s: %d masquerade rules before --ip-masq", n.Name, masq)
		}
	}
	if err := l.RestartAgents(ctx, func(c *lab.Config) { c.IPMasq = true }, time.Minute); err != nil {
		t.Fatal(err)
	}
	for _, n := range st.Nodes {
		if !waitFlannelRules(ctx, st, n.Name, true, 10*time.Second) {
			t.Errorf("%s: flanneld's --ip-masq rules not in place after the restart", n.Name)
		}
		expectFlannelRules(t, st, n.Name, true, 1)
		env, err := os.ReadFile(n.SubnetFile)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(env), "FLANNEL_IPMASQ=true") {
			t.Errorf("%s: subnet file after the restart:\n%s", n.Name, env)
		}
	}
	pingAll(t, ctx, st)
}
