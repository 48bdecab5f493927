package main

import (
	"bytes"
	"encoding/json"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
	"github.com/hgw-ebpf/hgw-ebpf/internal/testutil"
)

// status, routes and stats show both families: the IPv6 pod subnet, the
// routes6 map's peers, pods' IPv6 addresses and the ipv6 counters. Run in a
// namespace of its own, over a pin root of its own.
func TestInspectionShowsBothFamilies(t *testing.T) {
	testutil.RequireRoot(t)
	_, ns := testutil.NetNS(t, "inspect")
	root := filepath.Join("/sys/fs/bpf", "hgwt-inspect-"+testutil.RandHex(t, 4))
	t.Cleanup(func() {
		testutil.Do(t, ns, func() {
			if err := datapath.Cleanup(root); err != nil {
				t.Error(err)
			}
		})
	})
	run := func(args ...string) string {
		t.Helper()
		var out bytes.Buffer
		cmd := newRoot()
		cmd.SetOut(&out)
		cmd.SetArgs(append(args, "--bpffs-root", root))
		if err := cmd.Execute(); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out.String())
		}
		return out.String()
	}
	testutil.Do(t, ns, func() {
		dp, err := datapath.Load(datapath.Options{PinRoot: root})
		if err != nil {
			t.Fatal(err)
		}
		defer dp.Close()
		if err := dp.SetConfig(datapath.NodeConfig{
			PodSubnet: netip.MustParsePrefix("10.244.1.0/24"), Gateway: netip.MustParseAddr("10.244.1.1"),
			PodSubnet6: netip.MustParsePrefix("fd00:10:244:1::/64"), Gateway6: netip.MustParseAddr("fd00:10:244:1::1"),
			BridgeIfindex: 1, UnderlayIfindex: 1, Conntrack: true,
		}); err != nil {
			t.Fatal(err)
		}
		for _, r := range []datapath.Route{
			{Subnet: netip.MustParsePrefix("10.244.2.0/24"), NextHop: netip.MustParseAddr("198.18.0.12"), Ifindex: 1},
			{Subnet: netip.MustParsePrefix("fd00:10:244:2::/64"), NextHop: netip.MustParseAddr("fd00:198:18::12"), Ifindex: 1},
		} {
			put := dp.Routes().Put
			if r.Subnet.Addr().Is6() {
				put = dp.Routes6().Put
			}
			if err := put(r); err != nil {
				t.Fatal(err)
			}
		}
		if err := dp.Endpoints().Put(datapath.Endpoint{IP: netip.MustParseAddr("fd00:10:244:1::5"), Ifindex: 77,
			PodMAC: net.HardwareAddr{2, 0, 0, 0, 0, 5}, GatewayMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}}); err != nil {
			t.Fatal(err)
		}

		status := run("status", "--all")
		for _, want := range []string{
			"IPv6 pod subnet:  fd00:10:244:1::/64 (gateway fd00:10:244:1::1)",
			"fd00:10:244:2::/64  fd00:198:18::12",
			"10.244.2.0/24",
			"fd00:10:244:1::5",
			"ipv6    from_underlay  redirect",
		} {
			if !strings.Contains(status, want) {
				t.Errorf("status lacks %q:\n%s", want, status)
			}
		}
		var rep struct {
			Config struct {
				PodSubnet6 string `json:"pod_subnet6"`
				Gateway6   string `json:"gateway6"`
			} `json:"config"`
			Routes   []datapath.Route   `json:"routes"`
			Counters []datapath.Counter `json:"counters"`
		}
		if err := json.Unmarshal([]byte(run("status", "-o", "json")), &rep); err != nil {
			t.Fatal(err)
		}
		if rep.Config.PodSubnet6 != "fd00:10:244:1::/64" || rep.Config.Gateway6 != "fd00:10:244:1::1" || len(rep.Routes) != 2 {
			t.Errorf("status -o json: config %+v, routes %+v", rep.Config, rep.Routes)
		}
		families := map[string]bool{}
		for _, c := range rep.Counters {
			families[c.Family] = true
		}
		if !families["ipv4"] || !families["ipv6"] || !families["other"] {
			t.Errorf("status -o json counters by family: %v", families)
		}

		routes := run("routes")
		if !strings.Contains(routes, "fd00:10:244:2::/64") || !strings.Contains(routes, "10.244.2.0/24") {
			t.Errorf("routes lacks a family:\n%s", routes)
		}
		if stats := run("stats", "--all"); !strings.Contains(stats, "FAMILY") || !strings.Contains(stats, "ipv6") {
			t.Errorf("stats lacks the family column or ipv6 rows:\n%s", stats)
		}
		// Freshly loaded, nothing moved: both commands say so in the same words.
		for _, cmd := range []string{"status", "stats"} {
			if out := run(cmd); !strings.Contains(out, "(all zero)") {
				t.Errorf("%s without --all on zero counters lacks \"(all zero)\":\n%s", cmd, out)
			}
		}
	})
}
