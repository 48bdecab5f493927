package bench

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/hgw-ebpf/hgw-ebpf/internal/lab"
)

// Node profiles: real nodes are not empty.
const (
	ProfileBare = "bare" // no netfilter rule in the nodes
	ProfileKube = "kube" // kube-proxy (iptables mode) and flannel rules, conntrack active
)

// AllProfiles is the default order; bare runs first because nothing takes
// the kube rules out again (a node that once had them would not be bare).
var AllProfiles = []string{ProfileBare, ProfileKube}

const bridgeNFKey = "net/bridge/bridge-nf-call-iptables"

// applyKube loads the kube profile into every node of every lab: the
// generated kube-proxy rules and flanneld's (with --ip-masq) through iptables-restore inside the
// node's namespace, and bridge-nf-call-iptables=1 there (per namespace on
// kernels >= 5.3). It returns notes for the report.
func applyKube(ctx context.Context, states []lab.State, services int) ([]string, error) {
	var notes []string
	cluster := netip.MustParsePrefix("10.244.0.0/16")
	for _, st := range states {
		var subnets []netip.Prefix
		for _, n := range st.Nodes {
			s, err := netip.ParsePrefix(n.Subnet)
			if err != nil {
				return nil, fmt.Errorf("node %s subnet %q: %w", n.Name, n.Subnet, err)
			}
			subnets = append(subnets, s)
		}
		for i, n := range st.Nodes {
			rules, err := lab.KubeProxyRules(lab.KubeNode{
				Synthetic: services, ClusterCIDR: cluster, NodeSubnet: subnets[i], PodSubnets: subnets,
			})
			if err != nil {
				return nil, err
			}
			rules += lab.RestoreInput(lab.FlannelRules(cluster, subnets[i], true))
			if err := iptablesRestore(ctx, st, n.Name, rules); err != nil {
				return nil, err
			}
			note, err := setBridgeNF(st, n.Name)
			if err != nil {
				return nil, err
			}
			if note != "" {
				notes = append(notes, note)
			}
		}
	}
	return notes, nil
}

func iptablesRestore(ctx context.Context, st lab.State, node, rules string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	var out lab.LimitedBuffer
	err := st.Exec(ctx, node, []string{"iptables-restore", "--noflush"}, strings.NewReader(rules), &out, &out)
	if err != nil {
		return fmt.Errorf("iptables-restore in %s: %w: %s", node, err, out.String())
	}
	return nil
}

// setBridgeNF sets bridge-nf-call-iptables=1 in the node's namespace, or
// says why it could not (no br_netfilter in this kernel).
func setBridgeNF(st lab.State, node string) (string, error) {
	var note string
	err := st.Do(node, func() error {
		path := "/proc/sys/" + bridgeNFKey
		err := os.WriteFile(path, []byte("1"), 0o644)
		if errors.Is(err, os.ErrNotExist) {
			note = fmt.Sprintf("%s: no %s (br_netfilter not in this kernel): bridged packets skip iptables", node, path)
			return nil
		}
		if err != nil {
			return fmt.Errorf("sysctl %s=1 in %s: %w", bridgeNFKey, node, err)
		}
		return nil
	})
	return note, err
}

// readBridgeNF reads the node's bridge-nf-call-iptables, "n/a" if absent.
func readBridgeNF(st lab.State, node string) string {
	val := "n/a"
	_ = st.Do(node, func() error {
		if b, err := os.ReadFile("/proc/sys/" + bridgeNFKey); err == nil {
			val = strings.TrimSpace(string(b))
		}
		return nil
	})
	return val
}

// conntrackCount is the number of conntrack entries in the node's
// namespace (the proof that conntrack is active there), -1 if unknown.
func conntrackCount(st lab.State, node string) int {
	n := -1
	_ = st.Do(node, func() error {
		b, err := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_count")
		if err == nil {
			fmt.Sscanf(strings.TrimSpace(string(b)), "%d", &n)
		}
		return nil
	})
	return n
}

// ParseChainPackets sums the packet counters of the rules in an
// `iptables -L <chain> -n -v -x` listing: how many packets the chain's
// rules evaluated.
func ParseChainPackets(listing string) (int64, error) {
	var sum int64
	var rules int
	for _, line := range strings.Split(listing, "\n") {
		f := strings.Fields(line)
		if len(f) < 3 || f[0] == "Chain" || f[0] == "pkts" {
			continue
		}
		var n int64
		if _, err := fmt.Sscanf(f[0], "%d", &n); err != nil {
			return 0, fmt.Errorf("iptables counter %q: %w", f[0], err)
		}
		sum += n
		rules++
	}
	if rules == 0 {
		return 0, fmt.Errorf("no rule in the listing")
	}
	return sum, nil
}

// natPrerouting is how many packets went through the nat table's
// PREROUTING chain of a node (kube-proxy's KUBE-SERVICES jump). The nat
// table sees only packets conntrack calls NEW, so this counts the
// packets that paid for a walk of the service rules.
func natPrerouting(ctx context.Context, st lab.State, node string) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := st.Output(ctx, node, "iptables", "-t", "nat", "-L", "PREROUTING", "-n", "-v", "-x")
	if err != nil {
		return 0, fmt.Errorf("iptables -t nat -L PREROUTING in %s: %w: %s", node, err, out)
	}
	return ParseChainPackets(out)
}
