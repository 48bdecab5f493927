package netfilter

import (
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/coreos/go-iptables/iptables"
)

// lockWait bounds, in seconds, how long each command waits for the xtables
// lock (flanneld passes --wait too): a stuck lock holder then shows as an
// error at the next resync instead of a resync that never ends.
const lockWait = 10

// IPTables runs iptables and iptables-restore, or for IPv6 ip6tables and
// ip6tables-restore (whichever backend the node's `iptables` is, nf_tables
// or legacy, as flanneld does), in the network namespace of the calling
// thread.
type IPTables struct {
	ipt     *iptables.IPTables
	restore string
	wait    bool // iptables-restore takes --wait (>= 1.6.2)
}

// Command is the iptables command of one address family, by its name.
type Command string

// The two commands flanneld writes its chains with: ip6tables for a
// dual-stack network's IPv6 side.
const (
	IPv4 Command = "iptables"
	IPv6 Command = "ip6tables"
)

// Open finds the command and its -restore on PATH.
func (c Command) Open() (*IPTables, error) {
	proto := iptables.ProtocolIPv4
	if c == IPv6 {
		proto = iptables.ProtocolIPv6
	}
	return newIPTables(proto, string(c))
}

func newIPTables(proto iptables.Protocol, name string) (*IPTables, error) {
	ipt, err := iptables.New(iptables.IPFamily(proto), iptables.Timeout(lockWait))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	restore, err := exec.LookPath(name + "-restore")
	if err != nil {
		return nil, fmt.Errorf("%s-restore: %w", name, err)
	}
	v1, v2, v3 := ipt.GetIptablesVersion()
	wait := v1 > 1 || v1 == 1 && (v2 > 6 || v2 == 6 && v3 >= 2)
	return &IPTables{ipt: ipt, restore: restore, wait: wait}, nil
}

// RandomFully says whether MASQUERADE takes --random-fully here.
func (t *IPTables) RandomFully() bool { return t.ipt.HasRandomFully() }

// chainState is what a table holds of one chain set: the chain's rules and
// the jumps to it, as `iptables -S` prints them.
type chainState struct {
	exists bool
	rules  []string // "-A <chain> ..." lines
	jumps  []string // "-A <from> ... -j <chain>" lines
}

func (t *IPTables) state(table, from, chain string) (chainState, error) {
	var st chainState
	lines, err := t.ipt.List(table, chain)
	var ierr *iptables.Error
	switch {
	case err == nil:
		st.exists = true
		st.rules = appendLines(lines, chain)
	case errors.As(err, &ierr) && ierr.ExitStatus() == 1:
		// No such chain (iptables-nft calls a chain of a table that
		// does not exist yet "incompatible"); exit status 1 as
		// go-iptables' ChainExists reads it.
	default:
		return st, fmt.Errorf("list %s %s: %w", table, chain, err)
	}
	lines, err = t.ipt.List(table, from)
	if err != nil {
		return st, fmt.Errorf("list %s %s: %w", table, from, err)
	}
	for _, l := range appendLines(lines, from) {
		if jumpsTo(l, chain) {
			st.jumps = append(st.jumps, l)
		}
	}
	return st, nil
}

// appendLines keeps the rules of chain from an `iptables -S` listing
// (dropping -N/-P lines and iptables-nft's warnings).
func appendLines(lines []string, chain string) []string {
	var out []string
	for _, l := range lines {
		if strings.HasPrefix(l, "-A "+chain+" ") {
			out = append(out, l)
		}
	}
	return out
}

func jumpsTo(line, chain string) bool {
	f := strings.Fields(line)
	for i := 0; i+1 < len(f); i++ {
		if (f[i] == "-j" || f[i] == "-g") && f[i+1] == chain {
			return true
		}
	}
	return false
}

// write replaces the chain set in one iptables-restore transaction, so that
// no packet ever meets half of it (a MASQUERADE without the RETURNs before
// it would masquerade pod-to-pod traffic): the chain is created or flushed,
// every jump to it is deleted, and then the jump and the rules are
// appended, as flanneld does at start.
func (t *IPTables) write(cs ChainSet, st chainState) error {
	lines := []string{fmt.Sprintf(":%s - [0:0]", cs.Chain)} // with --noflush: create or flush
	for _, j := range st.jumps {
		lines = append(lines, "-D"+strings.TrimPrefix(j, "-A"))
	}
	lines = append(lines, ruleLine(cs.From, cs.Jump))
	for _, r := range cs.Rules {
		lines = append(lines, ruleLine(cs.Chain, r))
	}
	return t.apply(cs.Table, lines)
}

// ruleLine renders an append of spec to chain in iptables-restore syntax.
func ruleLine(chain string, spec []string) string {
	parts := []string{"-A", chain}
	for _, s := range spec {
		if strings.ContainsAny(s, " \t\"") {
			s = strconv.Quote(s)
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, " ")
}

func (t *IPTables) apply(table string, lines []string) error {
	args := []string{"--noflush"}
	if t.wait {
		args = append(args, "--wait", strconv.Itoa(lockWait))
	}
	cmd := exec.Command(t.restore, args...)
	cmd.Stdin = strings.NewReader("*" + table + "\n" + strings.Join(lines, "\n") + "\nCOMMIT\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s into %s: %w: %s", filepath.Base(t.restore), table, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Removed says what Remove took out of one table.
type Removed struct {
	Table, From, Chain string
	Jumps              int  // jumps deleted from From
	Rules              int  // rules the chain held
	ChainDeleted       bool // the chain existed and was deleted
}

// Any says whether anything was there.
func (r Removed) Any() bool { return r.Jumps > 0 || r.ChainDeleted }

func (r Removed) String() string {
	return fmt.Sprintf("%s: %d jump(s) from %s, chain %s with %d rule(s)", r.Table, r.Jumps, r.From, r.Chain, r.Rules)
}

// Remove deletes every jump from cs.From to cs.Chain and the chain itself,
// whoever wrote them (flanneld or hgw-ebpf), in one transaction.
func (t *IPTables) Remove(cs ChainSet) (Removed, error) {
	rm := Removed{Table: cs.Table, From: cs.From, Chain: cs.Chain}
	st, err := t.state(cs.Table, cs.From, cs.Chain)
	if err != nil {
		return rm, err
	}
	var lines []string
	for _, j := range st.jumps {
		lines = append(lines, "-D"+strings.TrimPrefix(j, "-A"))
	}
	if st.exists {
		lines = append(lines, "-F "+cs.Chain, "-X "+cs.Chain)
	}
	if len(lines) == 0 {
		return rm, nil
	}
	if err := t.apply(cs.Table, lines); err != nil {
		return rm, fmt.Errorf("remove %s %s: %w", cs.Table, cs.Chain, err)
	}
	rm.Jumps, rm.Rules, rm.ChainDeleted = len(st.jumps), len(st.rules), st.exists
	return rm, nil
}

// RemoveFlannel removes flanneld's masquerade and FORWARD chains and the
// jumps to them, whoever wrote them: what `hgw-ebpf cleanup` does. It
// returns what it found, table by table.
func (t *IPTables) RemoveFlannel() ([]Removed, error) {
	var out []Removed
	var errs []error
	for _, cs := range []ChainSet{masqChains, forwardChains} {
		rm, err := t.Remove(cs)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, rm)
	}
	return out, errors.Join(errs...)
}

// Keeper keeps chain sets in place, exactly once each and in order.
type Keeper struct {
	ipt     *IPTables
	written map[string]written // by table and chain
}

// written is a chain set as iptables listed it right after we wrote it:
// any later difference (a rule deleted, added, reordered, a second jump)
// is drift, whatever the iptables version's way of printing rules.
type written struct {
	spec  string // the ChainSet written, to notice a changed configuration
	rules []string
	jump  string
}

// NewKeeper returns a Keeper that has written nothing yet: its first
// Ensure of each chain set rewrites it, as flanneld does at start.
func NewKeeper(ipt *IPTables) *Keeper {
	return &Keeper{ipt: ipt, written: map[string]written{}}
}

// Ensure makes cs present exactly once and unchanged since this Keeper
// last wrote it, rewriting it otherwise. It returns why it wrote ("" when
// everything was in place).
func (k *Keeper) Ensure(cs ChainSet) (string, error) {
	key := cs.Table + "/" + cs.Chain
	st, err := k.ipt.state(cs.Table, cs.From, cs.Chain)
	if err != nil {
		return "", err
	}
	reason := drift(k.written[key], fmt.Sprint(cs), st, cs.From)
	if reason == "" {
		return "", nil
	}
	if err := k.ipt.write(cs, st); err != nil {
		return "", fmt.Errorf("write %s %s (%s): %w", cs.Table, cs.Chain, reason, err)
	}
	after, err := k.ipt.state(cs.Table, cs.From, cs.Chain)
	if err != nil {
		return "", err
	}
	if len(after.jumps) != 1 || len(after.rules) != len(cs.Rules) {
		return "", fmt.Errorf("%s %s after writing it: %d jump(s) from %s and %d rule(s), want 1 and %d",
			cs.Table, cs.Chain, len(after.jumps), cs.From, len(after.rules), len(cs.Rules))
	}
	k.written[key] = written{spec: fmt.Sprint(cs), rules: after.rules, jump: after.jumps[0]}
	return reason, nil
}

// Forget makes the next Ensure of cs rewrite it (after it was removed on
// purpose).
func (k *Keeper) Forget(cs ChainSet) { delete(k.written, cs.Table+"/"+cs.Chain) }

func drift(w written, spec string, st chainState, from string) string {
	switch {
	case w.spec == "":
		return "first write by this agent"
	case w.spec != spec:
		return "configuration changed"
	case !st.exists:
		return "chain missing"
	case len(st.jumps) == 0:
		return "jump from " + from + " missing"
	case len(st.jumps) > 1:
		return fmt.Sprintf("%d jumps from %s", len(st.jumps), from)
	case len(st.rules) < len(w.rules):
		return fmt.Sprintf("%d of %d rules missing", len(w.rules)-len(st.rules), len(w.rules))
	case len(st.rules) > len(w.rules):
		return fmt.Sprintf("%d rules added", len(st.rules)-len(w.rules))
	case !slices.Equal(st.rules, w.rules):
		return "rules changed"
	case st.jumps[0] != w.jump:
		return "jump changed"
	}
	return ""
}
