package netfilter

import (
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netns"

	"github.com/hgw-ebpf/hgw-ebpf/internal/testutil"
)

// Every test here runs iptables inside a namespace of its own, on a thread
// that stays there (testutil.Do): never in the machine's own namespace.

// nfNS returns a fresh namespace to run iptables in.
func nfNS(t *testing.T) netns.NsHandle {
	t.Helper()
	testutil.RequireRoot(t)
	_, h := testutil.NetNS(t, "nf")
	return h
}

// run runs an iptables tool on the calling thread (inside testutil.Do).
func run(t *testing.T, stdin string, argv ...string) string {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(argv, " "), err, out)
	}
	return string(out)
}

// save is the table as iptables-save prints it, rules only.
func save(t *testing.T, table string) []string { return saveWith(t, "iptables-save", table) }

// saveWith is save with another tool (ip6tables-save).
func saveWith(t *testing.T, tool, table string) []string {
	t.Helper()
	var rules []string
	for _, l := range strings.Split(run(t, "", tool, "-t", table), "\n") {
		if strings.HasPrefix(l, "-A ") {
			rules = append(rules, l)
		}
	}
	return rules
}

// count is how often line occurs in rules.
func count(rules []string, line string) int {
	n := 0
	for _, r := range rules {
		if r == line {
			n++
		}
	}
	return n
}

// assertExactlyOnce checks that each of want's lines is in table once, our
// chain holds nothing else, and the chain's rules are in want's order.
func assertExactlyOnce(t *testing.T, table, chain, want string) {
	t.Helper()
	rules := save(t, table)
	var ours []string
	for _, r := range rules {
		if strings.HasPrefix(r, "-A "+chain+" ") {
			ours = append(ours, r)
		}
	}
	wantLines := strings.Split(want, "\n")
	for _, w := range wantLines {
		if n := count(rules, w); n != 1 {
			t.Errorf("%s: %d copies of %q, want 1", table, n, w)
		}
	}
	if !slices.Equal(ours, wantLines[1:]) {
		t.Errorf("%s %s holds\n%s\nwant\n%s", table, chain, strings.Join(ours, "\n"), strings.Join(wantLines[1:], "\n"))
	}
}

// flanneldWrites puts rules into table the way flanneld v0.28 does:
// ClearChain (iptables -N, or -F if it exists), then one iptables-restore
// --noflush that deletes each rule that exists and appends it again.
func flanneldWrites(t *testing.T, table, chain, rules string) {
	t.Helper()
	if exec.Command("iptables", "-t", table, "-N", chain).Run() != nil {
		run(t, "", "iptables", "-t", table, "-F", chain)
	}
	var lines []string
	for _, l := range strings.Split(rules, "\n") {
		spec := strings.Fields(l)[1:]
		if exec.Command("iptables", append([]string{"-t", table, "-C"}, unquote(spec)...)...).Run() == nil {
			lines = append(lines, "-D"+strings.TrimPrefix(l, "-A"))
		}
		lines = append(lines, l)
	}
	run(t, "*"+table+"\n"+strings.Join(lines, "\n")+"\nCOMMIT\n", "iptables-restore", "--noflush", "--wait")
}

// unquote turns the fields of a restore line back into arguments.
func unquote(fields []string) []string {
	var out []string
	for i := 0; i < len(fields); i++ {
		f := fields[i]
		if strings.HasPrefix(f, `"`) {
			for !strings.HasSuffix(f, `"`) || len(f) == 1 {
				i++
				f += " " + fields[i]
			}
			f = strings.Trim(f, `"`)
		}
		out = append(out, f)
	}
	return out
}

// Other software's rules in the same built-in chains, which must survive.
const kubeRules = `*nat
:KUBE-POSTROUTING - [0:0]
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
COMMIT
*filter
:KUBE-FORWARD - [0:0]
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
COMMIT
`

func newKeeper(t *testing.T) (*IPTables, *Keeper) {
	t.Helper()
	ipt, err := IPv4.Open()
	if err != nil {
		t.Fatal(err)
	}
	if !ipt.RandomFully() {
		t.Fatal("this iptables lacks --random-fully; the expected rules assume it")
	}
	return ipt, NewKeeper(ipt)
}

func ensure(t *testing.T, k *Keeper, cs ChainSet) string {
	t.Helper()
	why, err := k.Ensure(cs)
	if err != nil {
		t.Fatalf("ensure %s: %v", cs.Chain, err)
	}
	return why
}

// A node handed over from flanneld (--ip-masq) carries its rules: the agent
// starting there ends with exactly one copy of each, in flanneld's order,
// also when a second jump had crept in, and leaves other rules alone.
func TestFlanneldRulesPresentGiveOneCopyAfterStart(t *testing.T) {
	h := nfNS(t)
	testutil.Do(t, h, func() {
		run(t, kubeRules, "iptables-restore", "--noflush")
		flanneldWrites(t, "nat", MasqChain, flanneldMasq)
		flanneldWrites(t, "filter", ForwardChain, flanneldForward)
		flanneldWrites(t, "filter", ForwardChain, flanneldForward) // a flanneld restart
		// A jump added by hand on top.
		run(t, "", "iptables", "-t", "nat", "-A", "POSTROUTING", "-m", "comment", "--comment", masqComment, "-j", MasqChain)
		if n := count(save(t, "nat"), strings.Split(flanneldMasq, "\n")[0]); n != 2 {
			t.Fatalf("setup: %d jumps to %s, want 2", n, MasqChain)
		}

		_, k := newKeeper(t)
		if why := ensure(t, k, MasqRules(network, subnet, true)); why == "" {
			t.Error("first Ensure wrote nothing: it must rewrite at start as flanneld does")
		}
		ensure(t, k, ForwardRules(network))
		assertExactlyOnce(t, "nat", MasqChain, flanneldMasq)
		assertExactlyOnce(t, "filter", ForwardChain, flanneldForward)
		for table, line := range map[string]string{
			"nat":    `-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING`,
			"filter": `-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP`,
		} {
			if count(save(t, table), line) != 1 {
				t.Errorf("%s: other software's rule %q touched", table, line)
			}
		}
		// In place now: the next resync writes nothing.
		if why := ensure(t, k, MasqRules(network, subnet, true)); why != "" {
			t.Errorf("second Ensure rewrote the rules (%s) though nothing changed", why)
		}
	})
}

// Whatever happens to a rule of ours between two resyncs, the next Ensure
// says what and puts exactly flanneld's rules back, in order.
func TestDriftRestoredByNextEnsure(t *testing.T) {
	h := nfNS(t)
	masqJump := strings.Split(flanneldMasq, "\n")[0]
	masqRule := strings.Split(flanneldMasq, "\n")[3]
	for _, tc := range []struct {
		name, why string
		change    string // iptables-restore input applied to nat
	}{
		{"rule deleted", "1 of 6 rules missing", "-D" + strings.TrimPrefix(masqRule, "-A")},
		{"jump deleted", "jump from POSTROUTING missing", "-D" + strings.TrimPrefix(masqJump, "-A")},
		{"second jump", "2 jumps from POSTROUTING", masqJump},
		{"chain deleted", "chain missing", "-D" + strings.TrimPrefix(masqJump, "-A") + "\n-F " + MasqChain + "\n-X " + MasqChain},
		{"foreign rule inserted", "1 rules added", "-I " + MasqChain + " 1 -j ACCEPT"},
		{"rules reordered", "rules changed", "-D" + strings.TrimPrefix(masqRule, "-A") + "\n-I " + MasqChain + " 1" + strings.TrimPrefix(masqRule, "-A "+MasqChain)},
		{"chain flushed", "6 of 6 rules missing", "-F " + MasqChain},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testutil.Do(t, h, func() {
				_, k := newKeeper(t)
				cs := MasqRules(network, subnet, true)
				ensure(t, k, cs)
				run(t, "*nat\n"+tc.change+"\nCOMMIT\n", "iptables-restore", "--noflush")
				if why := ensure(t, k, cs); why != tc.why {
					t.Errorf("Ensure after %s: reason %q, want %q", tc.name, why, tc.why)
				}
				assertExactlyOnce(t, "nat", MasqChain, flanneldMasq)
				if why := ensure(t, k, cs); why != "" {
					t.Errorf("Ensure right after the repair rewrote again: %s", why)
				}
			})
		})
	}
}

// RemoveFlannel (what `hgw-ebpf cleanup` runs) takes out flanneld's chains
// and every jump to them, whoever wrote them, and nothing else; a second
// run finds nothing.
func TestRemoveFlannelLeavesNone(t *testing.T) {
	h := nfNS(t)
	testutil.Do(t, h, func() {
		run(t, kubeRules, "iptables-restore", "--noflush")
		flanneldWrites(t, "nat", MasqChain, flanneldMasq)
		ipt, k := newKeeper(t)
		ensure(t, k, ForwardRules(network))
		before := map[string][]string{"nat": save(t, "nat"), "filter": save(t, "filter")}

		got, err := ipt.RemoveFlannel()
		if err != nil {
			t.Fatal(err)
		}
		want := []Removed{
			{Table: "nat", From: "POSTROUTING", Chain: MasqChain, Jumps: 1, Rules: 6, ChainDeleted: true},
			{Table: "filter", From: "FORWARD", Chain: ForwardChain, Jumps: 1, Rules: 2, ChainDeleted: true},
		}
		if !slices.Equal(got, want) {
			t.Errorf("RemoveFlannel = %+v, want %+v", got, want)
		}
		for _, cs := range []ChainSet{masqChains, forwardChains} {
			var left []string
			for _, r := range before[cs.Table] {
				if !strings.Contains(r, cs.Chain) {
					left = append(left, r)
				}
			}
			if got := save(t, cs.Table); !slices.Equal(got, left) {
				t.Errorf("%s after RemoveFlannel:\n%s\nwant\n%s", cs.Table, strings.Join(got, "\n"), strings.Join(left, "\n"))
			}
			if out := run(t, "", "iptables-save", "-t", cs.Table); strings.Contains(out, cs.Chain) {
				t.Errorf("%s still mentions %s:\n%s", cs.Table, cs.Chain, out)
			}
		}
		again, err := ipt.RemoveFlannel()
		if err != nil {
			t.Fatal(err)
		}
		for _, rm := range again {
			if rm.Any() {
				t.Errorf("second RemoveFlannel removed %s", rm)
			}
		}
	})
}

// flanneldMasq6 and flanneldForward6 are what flanneld v0.28 writes with
// ip6tables on a dual-stack node (masqIP6Rules, forwardRules) for IPv6
// subnet fd00:10:244:7::/64 of fd00:10:244::/56, as ip6tables-save
// prints them.
const (
	flanneldMasq6 = `-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG
-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s fd00:10:244:7::/64 -d fd00:10:244::/56 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s fd00:10:244::/56 -d fd00:10:244:7::/64 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG ! -s fd00:10:244::/56 -d fd00:10:244:7::/64 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s fd00:10:244::/56 ! -d ff00::/8 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully
-A FLANNEL-POSTRTG ! -s fd00:10:244::/56 -d fd00:10:244::/56 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully`
	flanneldForward6 = `-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD
-A FLANNEL-FWD -s fd00:10:244::/56 -m comment --comment "flanneld forward" -j ACCEPT
-A FLANNEL-FWD -d fd00:10:244::/56 -m comment --comment "flanneld forward" -j ACCEPT`
)

// A dual-stack node's IPv6 rules are flanneld's, in ip6tables, written and
// removed there without touching iptables' (IPv4) tables.
func TestIP6TablesAsFlanneld(t *testing.T) {
	h := nfNS(t)
	network6, subnet6 := netip.MustParsePrefix("fd00:10:244::/56"), netip.MustParsePrefix("fd00:10:244:7::/64")
	testutil.Do(t, h, func() {
		ipt, err := IPv6.Open()
		if err != nil {
			t.Fatal(err)
		}
		if !ipt.RandomFully() {
			t.Fatal("this ip6tables lacks --random-fully; the expected rules assume it")
		}
		k := NewKeeper(ipt)
		ensure(t, k, MasqRules(network6, subnet6, true))
		ensure(t, k, ForwardRules(network6))
		for table, want := range map[string]string{"nat": flanneldMasq6, "filter": flanneldForward6} {
			if got := saveWith(t, "ip6tables-save", table); strings.Join(got, "\n") != want {
				t.Errorf("ip6tables %s:\n%s\nwant flanneld's:\n%s", table, strings.Join(got, "\n"), want)
			}
			if got := save(t, table); len(got) != 0 {
				t.Errorf("iptables %s has %v: the IPv6 rules went to IPv4", table, got)
			}
		}
		removed, err := ipt.RemoveFlannel()
		if err != nil || len(removed) != 2 || !removed[0].Any() || !removed[1].Any() {
			t.Fatalf("RemoveFlannel = %+v, %v; want both chains removed", removed, err)
		}
		for _, table := range []string{"nat", "filter"} {
			if got := saveWith(t, "ip6tables-save", table); len(got) != 0 {
				t.Errorf("ip6tables %s after RemoveFlannel: %v", table, got)
			}
		}
	})
}
