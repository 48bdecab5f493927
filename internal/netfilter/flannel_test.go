package netfilter

import (
	"net/netip"
	"strings"
	"testing"
)

var (
	network = netip.MustParsePrefix("10.244.0.0/16")
	subnet  = netip.MustParsePrefix("10.244.7.0/24")
)

// flanneldMasq is what flanneld v0.28.9 appends with --ip-masq for pod
// subnet 10.244.7.0/24 (pkg/trafficmngr/iptables masqRules, iptables with
// --random-fully), jump first, in its order, in iptables-restore syntax.
const flanneldMasq = `-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG
-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.244.7.0/24 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.244.0.0/16 -d 10.244.7.0/24 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.7.0/24 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully
-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully`

// flanneldForward is flanneld's forwardRules for the same network.
const flanneldForward = `-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD
-A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT
-A FLANNEL-FWD -d 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT`

// render lists a chain set as flanneld's rule list: the jump, then the rules.
func render(cs ChainSet) string {
	lines := []string{ruleLine(cs.From, cs.Jump)}
	for _, r := range cs.Rules {
		lines = append(lines, ruleLine(cs.Chain, r))
	}
	return strings.Join(lines, "\n")
}

func TestRulesAreFlanneldsRules(t *testing.T) {
	// A host address in the subnet or network must not leak into a rule.
	masq := MasqRules(netip.MustParsePrefix("10.244.1.9/16"), netip.MustParsePrefix("10.244.7.1/24"), true)
	if got := render(masq); got != flanneldMasq {
		t.Errorf("masquerade rules:\n%s\nwant flanneld's:\n%s", got, flanneldMasq)
	}
	if masq.Table != "nat" {
		t.Errorf("masquerade table %q, want nat", masq.Table)
	}
	noRandom := render(MasqRules(network, subnet, false))
	if want := strings.ReplaceAll(flanneldMasq, " --random-fully", ""); noRandom != want {
		t.Errorf("without --random-fully:\n%s\nwant:\n%s", noRandom, want)
	}
	fwd := ForwardRules(network)
	if got := render(fwd); got != flanneldForward {
		t.Errorf("forward rules:\n%s\nwant flanneld's:\n%s", got, flanneldForward)
	}
	if fwd.Table != "filter" {
		t.Errorf("forward table %q, want filter", fwd.Table)
	}
}

func TestJumpsTo(t *testing.T) {
	for line, want := range map[string]bool{
		`-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG`: true,
		`-A POSTROUTING -g FLANNEL-POSTRTG`:                                      true,
		`-A POSTROUTING -j FLANNEL-POSTRTG-OTHER`:                                false,
		`-A POSTROUTING -m comment --comment "to FLANNEL-POSTRTG" -j RETURN`:     false,
	} {
		if got := jumpsTo(line, MasqChain); got != want {
			t.Errorf("jumpsTo(%q) = %v, want %v", line, got, want)
		}
	}
}
