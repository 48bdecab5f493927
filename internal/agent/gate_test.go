package agent

import (
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"github.com/hgw-ebpf/hgw-ebpf/internal/metrics"
	"github.com/hgw-ebpf/hgw-ebpf/internal/netfilter"
	"github.com/hgw-ebpf/hgw-ebpf/internal/registry"
)

var knp = netfilter.Engine{Name: netfilter.EngineKubeNetworkPolicies, Found: "nftables table inet kube-network-policies"}

func TestDecideFastPath(t *testing.T) {
	for _, tc := range []struct {
		name                 string
		ct, ignore, bypass   bool
		engines              []netfilter.Engine
		state                string
		conntrack, stepAside bool
		underlay             bool
		describes            string
	}{
		{"plain node", true, false, false, nil, "active", true, false, true, "fast path: active"},
		{"no conntrack: closed", false, false, false, nil, "closed_no_conntrack", false, false, false, "nf_conntrack is gone"},
		{"no conntrack, ignored", false, true, false, nil, "active", false, false, true, "fast path: active"},
		{"conntrack there but ignored", true, true, false, nil, "active", false, false, true, "fast path: active"},
		{"engine: step aside", true, false, false, []netfilter.Engine{knp}, "step_aside", true, true, true, "stepping aside for NetworkPolicy engine kube-network-policies"},
		{"engine, bypass allowed", true, false, true, []netfilter.Engine{knp}, "active", true, false, true, "BYPASSING NetworkPolicy engine kube-network-policies"},
		{"engine and no conntrack", false, false, false, []netfilter.Engine{knp}, "step_aside", false, true, false, "stepping aside"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := decideFastPath(tc.ct, "nf_conntrack is gone", tc.ignore, tc.engines, tc.bypass)
			if f.State() != tc.state || f.Conntrack != tc.conntrack || f.StepAside != tc.stepAside ||
				f.IgnoreConntrack != tc.ignore || f.Underlay() != tc.underlay {
				t.Errorf("got %+v (state %s, underlay %v), want state %s conntrack %v step aside %v underlay %v",
					f, f.State(), f.Underlay(), tc.state, tc.conntrack, tc.stepAside, tc.underlay)
			}
			if f.Active() != (tc.state == "active") {
				t.Errorf("Active() = %v in state %s", f.Active(), f.State())
			}
			if !strings.Contains(f.Describe(), tc.describes) {
				t.Errorf("Describe() = %q, want it to say %q", f.Describe(), tc.describes)
			}
		})
	}
}

// testNodeNoRoot is a node with what the event handlers need, nothing that
// touches the machine.
func testNodeNoRoot(own string) *node {
	n := &node{log: slog.New(slog.DiscardHandler), metrics: metrics.New(nil), ready: metrics.NewReadiness()}
	n.setOwn(registry.Lease{Subnet: netip.MustParsePrefix(own)})
	return n
}

// A lease re-acquired with the node's own subnet changes nothing; with
// another subnet the agent stops with an error that names both, instead
// of routing its pods' subnet to the node that took it.
func TestSubnetChangeOnReacquireEndsTheAgent(t *testing.T) {
	n := testNodeNoRoot("10.244.3.0/24")
	var fatal error
	n.fatal = func(err error) { fatal = errors.Join(fatal, err) }

	n.onLeaseChange(registry.Lease{Subnet: netip.MustParsePrefix("10.244.3.0/24"), Key: "10.244.3.0-24"})
	if fatal != nil {
		t.Fatalf("same subnet again: %v", fatal)
	}
	n.onLeaseChange(registry.Lease{Subnet: netip.MustParsePrefix("10.244.9.0/24"), Key: "10.244.9.0-24"})
	if fatal == nil {
		t.Fatal("another subnet: the agent carried on")
	}
	for _, want := range []string{"10.244.3.0/24", "10.244.9.0/24", "recreated"} {
		if !strings.Contains(fatal.Error(), want) {
			t.Errorf("error %q does not say %q", fatal, want)
		}
	}
	if got := n.ownLease().Subnet; got != netip.MustParsePrefix("10.244.3.0/24") {
		t.Errorf("own subnet became %s: the old one must not be given up while the agent stops", got)
	}

	// Dual stack: the IPv6 subnet is the pods' too.
	dual := func(v4, v6 string) registry.Lease {
		return registry.Lease{Subnet: netip.MustParsePrefix(v4), IPv6Subnet: netip.MustParsePrefix(v6), Key: v4 + "&" + v6}
	}
	n = testNodeNoRoot("10.244.3.0/24")
	n.setOwn(dual("10.244.3.0/24", "fd00:10:244:3::/64"))
	fatal = nil
	n.fatal = func(err error) { fatal = errors.Join(fatal, err) }
	n.onLeaseChange(dual("10.244.3.0/24", "fd00:10:244:3::/64"))
	if fatal != nil {
		t.Fatalf("same subnets again: %v", fatal)
	}
	n.onLeaseChange(dual("10.244.3.0/24", "fd00:10:244:9::/64"))
	if fatal == nil || !strings.Contains(fatal.Error(), "fd00:10:244:3::/64") || !strings.Contains(fatal.Error(), "fd00:10:244:9::/64") {
		t.Errorf("another IPv6 subnet: %v; want the agent to stop naming both", fatal)
	}
	if got := n.ownLease().IPv6Subnet; got != netip.MustParsePrefix("fd00:10:244:3::/64") {
		t.Errorf("own IPv6 subnet became %s", got)
	}
}

// A lease re-acquired with the same subnet and another public IP (a
// public-ip-overwrite annotation set in Kubernetes) becomes the node's:
// the lease naming that IP is ours, not a peer claiming our subnet.
func TestPublicIPChangeOnReacquire(t *testing.T) {
	n := testNodeNoRoot("10.244.3.0/24")
	n.fatal = func(err error) { t.Errorf("fatal: %v", err) }
	ip := netip.MustParseAddr("198.18.0.99")
	n.onLeaseChange(registry.Lease{Subnet: netip.MustParsePrefix("10.244.3.0/24"), PublicIP: ip, Key: "node/n1"})
	if got := n.ownLease().PublicIP; got != ip {
		t.Errorf("own public IP %s after the lease changed to %s", got, ip)
	}
}

// The conntrack probe loads nf_conntrack when it is missing, and says why
// when the lookup stays unusable.
func TestConntrackLookupLoadsTheModule(t *testing.T) {
	for _, tc := range []struct {
		name           string
		kfunc, loaded  bool
		loadErr        error
		kfuncAfterLoad bool
		want           bool
		loads          int
		why            string
	}{
		{"there", true, true, nil, true, true, 0, ""},
		{"built in, kernel too old", false, true, nil, false, false, 0, "lacks the bpf_skb_ct_lookup kfunc"},
		{"module loaded by us", false, false, nil, true, true, 1, ""},
		{"modprobe fails", false, false, errors.New("modprobe: not found"), false, false, 1, "modprobe: not found"},
		{"module loaded, kfunc still missing", false, false, nil, false, false, 1, "still missing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			loads := 0
			p := probes{
				conntrack:       func() (bool, error) { return tc.kfunc || (loads > 0 && tc.kfuncAfterLoad), nil },
				conntrackLoaded: func() bool { return tc.loaded },
				loadConntrack:   func() error { loads++; return tc.loadErr },
			}
			ok, why := p.conntrackLookup()
			if ok != tc.want || loads != tc.loads || !strings.Contains(why, tc.why) || (ok && why != "") {
				t.Errorf("conntrackLookup() = %v %q after %d loads; want %v, %d loads, a reason with %q",
					ok, why, loads, tc.want, tc.loads, tc.why)
			}
		})
	}
}
