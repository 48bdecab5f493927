package netfilter

import (
	"os/exec"
	"slices"
	"testing"

	"github.com/google/nftables"
	"github.com/vishvananda/netns"

	"github.com/hgw-ebpf/hgw-ebpf/internal/testutil"
)

func detect(t *testing.T, h netns.NsHandle) []Engine {
	t.Helper()
	var got []Engine
	testutil.Do(t, h, func() {
		var err error
		if got, err = (Detector{NetNS: int(h)}).Detect(); err != nil {
			t.Fatalf("Detect: %v", err)
		}
	})
	return got
}

// kubeNetworkPolicies creates (or deletes) the table flannel's netpol
// option runs, over netlink as kube-network-policies itself does.
func kubeNetworkPolicies(t *testing.T, h netns.NsHandle, present bool) {
	t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(int(h)))
	if err != nil {
		t.Fatal(err)
	}
	table := &nftables.Table{Family: nftables.TableFamilyINet, Name: EngineKubeNetworkPolicies}
	if present {
		c.AddTable(table)
		c.AddChain(&nftables.Chain{Name: "forward", Table: table, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter})
	} else {
		c.DelTable(table)
	}
	if err := c.Flush(); err != nil {
		t.Fatalf("nftables (present=%v): %v", present, err)
	}
}

func TestDetectEachEngineAndItsAbsence(t *testing.T) {
	testutil.RequireRoot(t)
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, h netns.NsHandle) // runs on a thread inside h
		want  []Engine
	}{
		{"nothing", func(*testing.T, netns.NsHandle) {}, nil},
		{"rules that are no policy engine", func(t *testing.T, _ netns.NsHandle) {
			run(t, kubeRules, "iptables-restore", "--noflush")
			run(t, "", "iptables", "-t", "nat", "-N", "cali-nat-outgoing") // Calico's NAT alone enforces nothing
			run(t, "", "iptables", "-t", "filter", "-N", "KUBE-ROUTERX")
		}, nil},
		{"kube-network-policies", func(t *testing.T, h netns.NsHandle) { kubeNetworkPolicies(t, h, true) },
			[]Engine{{EngineKubeNetworkPolicies, "nftables table inet kube-network-policies"}}},
		{"kube-router", func(t *testing.T, _ netns.NsHandle) {
			run(t, "", "iptables", "-t", "filter", "-N", "KUBE-ROUTER-FORWARD")
		}, []Engine{{EngineKubeRouter, "iptables-nft chain filter KUBE-ROUTER-FORWARD"}}},
		{"calico in raw", func(t *testing.T, _ netns.NsHandle) {
			run(t, "", "iptables", "-t", "raw", "-N", "cali-PREROUTING")
		}, []Engine{{EngineCalico, "iptables-nft chain raw cali-PREROUTING"}}},
		{"calico with iptables-legacy", func(t *testing.T, _ netns.NsHandle) {
			run(t, "", "iptables-legacy", "-t", "mangle", "-N", "cali-PREROUTING")
		}, []Engine{{EngineCalico, "iptables-legacy chain mangle cali-PREROUTING"}}},
		{"two at once", func(t *testing.T, h netns.NsHandle) {
			kubeNetworkPolicies(t, h, true)
			run(t, "", "iptables-legacy", "-t", "filter", "-N", "KUBE-ROUTER-INPUT")
		}, []Engine{
			{EngineKubeNetworkPolicies, "nftables table inet kube-network-policies"},
			{EngineKubeRouter, "iptables-legacy chain filter KUBE-ROUTER-INPUT"},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, h := testutil.NetNS(t, "pol")
			testutil.Do(t, h, func() { tc.setup(t, h) })
			if got := detect(t, h); !slices.Equal(got, tc.want) {
				t.Errorf("Detect = %+v, want %+v", got, tc.want)
			}
		})
	}
}

// An engine that goes away is no longer reported.
func TestDetectFollowsRemoval(t *testing.T) {
	testutil.RequireRoot(t)
	_, h := testutil.NetNS(t, "pol")
	kubeNetworkPolicies(t, h, true)
	testutil.Do(t, h, func() { run(t, "", "iptables", "-t", "filter", "-N", "cali-FORWARD") })
	if got := detect(t, h); len(got) != 2 {
		t.Fatalf("Detect = %+v, want two engines", got)
	}
	kubeNetworkPolicies(t, h, false)
	testutil.Do(t, h, func() {
		if err := exec.Command("iptables", "-t", "filter", "-X", "cali-FORWARD").Run(); err != nil {
			t.Fatal(err)
		}
	})
	if got := detect(t, h); got != nil {
		t.Errorf("Detect after removal = %+v, want none", got)
	}
}
