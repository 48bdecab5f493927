package netfilter

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"

	"github.com/coreos/go-iptables/iptables"
	"github.com/google/nftables"
)

// Engine is a NetworkPolicy engine found on the node: its rules live in
// netfilter, which the fast path skips.
type Engine struct {
	Name  string `json:"name"`  // "kube-network-policies", "kube-router", "calico"
	Found string `json:"found"` // what gave it away, e.g. "nftables table inet kube-network-policies"
}

func (e Engine) String() string { return e.Name + " (" + e.Found + ")" }

// EngineList lists engines for a log line or a status.
func EngineList(es []Engine) string {
	parts := make([]string, 0, len(es))
	for _, e := range es {
		parts = append(parts, e.String())
	}
	return strings.Join(parts, ", ")
}

// Names of the engines Detect knows.
const (
	EngineKubeNetworkPolicies = "kube-network-policies"
	EngineKubeRouter          = "kube-router"
	EngineCalico              = "calico"
	// EngineUnknown stands for what detection could not rule out.
	EngineUnknown = "unknown"
)

// policyTables are the iptables tables where kube-router and Calico keep
// their policy chains (filter for the verdicts, raw and mangle for
// Calico's untracked and pre-DNAT policy).
var policyTables = []string{"filter", "raw", "mangle"}

// engineOfChain names the engine an iptables chain belongs to, "" if none.
func engineOfChain(chain string) string {
	switch {
	case strings.HasPrefix(chain, "KUBE-ROUTER-"):
		return EngineKubeRouter
	case strings.HasPrefix(chain, "cali-"):
		return EngineCalico
	}
	return ""
}

// Detector looks for NetworkPolicy engines in one network namespace:
// nftables (and iptables-nft's tables) through netlink, and iptables-legacy
// tables, where the namespace has any, through iptables-legacy.
type Detector struct {
	// NetNS is an open handle of the namespace to look at for nftables;
	// 0 means the calling thread's. iptables-legacy always runs in the
	// calling thread's namespace.
	NetNS int
}

// Detect returns the engines present, one entry per engine, by name.
func (d Detector) Detect() ([]Engine, error) {
	found := map[string]string{}
	add := func(name, what string) {
		if _, ok := found[name]; !ok {
			found[name] = what
		}
	}
	if err := d.nftables(add); err != nil {
		return nil, err
	}
	if err := legacyChains(add); err != nil {
		return nil, err
	}
	var out []Engine
	for name, what := range found {
		out = append(out, Engine{Name: name, Found: what})
	}
	slices.SortFunc(out, func(a, b Engine) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// Present is Detect for deciding: when it cannot tell whether an engine is
// there, it assumes one (EngineUnknown, saying why), so that a failed
// check never turns into a silent bypass.
func (d Detector) Present() []Engine {
	es, err := d.Detect()
	if err != nil {
		return []Engine{{Name: EngineUnknown, Found: "detection failed: " + err.Error()}}
	}
	return es
}

// nftables reads the tables and chains over netlink: no nft binary is
// needed, and iptables-nft's filter/raw/mangle chains are seen too.
func (d Detector) nftables(add func(name, what string)) error {
	var opts []nftables.ConnOption
	if d.NetNS != 0 {
		opts = append(opts, nftables.WithNetNSFd(d.NetNS))
	}
	conn, err := nftables.New(opts...)
	if err != nil {
		return fmt.Errorf("nftables netlink: %w", err)
	}
	tables, err := conn.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return fmt.Errorf("list nftables inet tables: %w", err)
	}
	for _, t := range tables {
		if t.Name == EngineKubeNetworkPolicies {
			add(EngineKubeNetworkPolicies, "nftables table inet "+t.Name)
		}
	}
	for _, fam := range []nftables.TableFamily{nftables.TableFamilyIPv4, nftables.TableFamilyIPv6} {
		chains, err := conn.ListChainsOfTableFamily(fam)
		if err != nil {
			return fmt.Errorf("list nftables chains: %w", err)
		}
		for _, c := range chains {
			if c.Table == nil || !slices.Contains(policyTables, c.Table.Name) {
				continue
			}
			if e := engineOfChain(c.Name); e != "" {
				add(e, fmt.Sprintf("iptables-nft chain %s %s", c.Table.Name, c.Name))
			}
		}
	}
	return nil
}

// legacyTablesFile lists the iptables-legacy tables of the reading
// thread's network namespace (/proc/net would be the main thread's).
const legacyTablesFile = "/proc/thread-self/net/ip_tables_names"

// legacyChains lists the chains of the policy tables iptables-legacy
// holds. It reads only tables that exist: listing one would create it.
func legacyChains(add func(name, what string)) error {
	b, err := os.ReadFile(legacyTablesFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil // no legacy iptables in this kernel
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", legacyTablesFile, err)
	}
	var tables []string
	for _, t := range strings.Fields(string(b)) {
		if slices.Contains(policyTables, t) {
			tables = append(tables, t)
		}
	}
	if len(tables) == 0 {
		return nil
	}
	path, err := exec.LookPath("iptables-legacy")
	if err != nil {
		return fmt.Errorf("iptables-legacy tables %v present but cannot be read: %w", tables, err)
	}
	ipt, err := iptables.New(iptables.Path(path), iptables.Timeout(lockWait))
	if err != nil {
		return fmt.Errorf("iptables-legacy: %w", err)
	}
	for _, t := range tables {
		chains, err := ipt.ListChains(t)
		if err != nil {
			return fmt.Errorf("list iptables-legacy %s chains: %w", t, err)
		}
		for _, c := range chains {
			if e := engineOfChain(c); e != "" {
				add(e, fmt.Sprintf("iptables-legacy chain %s %s", t, c))
			}
		}
	}
	return nil
}
