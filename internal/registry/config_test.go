package registry_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/hgw-ebpf/hgw-ebpf/internal/registry"
)

func TestParseConfig(t *testing.T) {
	net16 := v4("10.244.0.0/16", 24, "10.244.1.0", "10.244.255.0") // its defaults
	tests := []struct {
		name, json string
		want       registry.Config
	}{
		{"defaults for a /16", `{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}`, hostGW(net16)},
		{"defaults for a /8, no backend", `{"Network":"10.0.0.0/8"}`, v4("10.0.0.0/8", 24, "10.0.1.0", "10.255.255.0")},
		// flannel's CheckNetworkConfig: /24 down to a /22, then four subnets.
		{"a /22 network still gets /24 subnets", `{"Network":"192.168.4.0/22"}`, v4("192.168.4.0/22", 24, "192.168.5.0", "192.168.7.0")},
		{"a /23 network is cut in four like flanneld does", `{"Network":"192.168.6.0/23"}`, v4("192.168.6.0/23", 25, "192.168.6.128", "192.168.7.128")},
		{"a /28 network is the smallest flanneld accepts", `{"Network":"192.168.7.0/28"}`, v4("192.168.7.0/28", 30, "192.168.7.4", "192.168.7.12")},
		{"explicit values", `{"Network":"10.244.0.0/16","SubnetLen":26,"SubnetMin":"10.244.10.0","SubnetMax":"10.244.20.192","Backend":{"Type":"host-gw"}}`,
			hostGW(v4("10.244.0.0/16", 26, "10.244.10.0", "10.244.20.192"))},
		{"the most subnets allowed: 65536", `{"Network":"10.240.0.0/14","SubnetLen":30}`, v4("10.240.0.0/14", 30, "10.240.0.4", "10.243.255.252")},
		{"network with host bits is masked", `{"Network":"10.244.3.4/16"}`, net16},
		{"flanneld's extra fields are ignored", `{"Network":"10.244.0.0/16","EnableIPv6":false,"Backend":{"Type":"host-gw","DirectRouting":true}}`, hostGW(net16)},
		// flannel's CheckNetworkConfig for IPv6: /64 subnets, the first
		// one skipped, the last one the maximum.
		{"dual stack defaults for a /56", `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"host-gw"}}`,
			hostGW(dual(net16, "fd00:10:244::/56", 64, "fd00:10:244:1::", "fd00:10:244:ff::"))},
		{"dual stack, EnableIPv4 spelt out, a /64 network cut in four like flanneld does",
			`{"EnableIPv4":true,"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244:7::/64"}`,
			dual(net16, "fd00:10:244:7::/64", 66, "fd00:10:244:7:4000::", "fd00:10:244:7:c000::")},
		{"dual stack, a /124 network is the smallest flanneld accepts", `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::10:0/124"}`,
			dual(net16, "fd00::10:0/124", 126, "fd00::10:4", "fd00::10:c")},
		{"dual stack, explicit values, host bits masked; a /8 has room for 2^72 subnets",
			`{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd12:3456::1/8","IPv6SubnetLen":80,` +
				`"IPv6SubnetMin":"fd00:0:0:10:1::","IPv6SubnetMax":"fdff:ffff:ffff:ffff:ffff::"}`,
			dual(net16, "fd00::/8", 80, "fd00:0:0:10:1::", "fdff:ffff:ffff:ffff:ffff::")},
		{"the IPv6 fields are not read without EnableIPv6, as in flanneld", `{"Network":"10.244.0.0/16","IPv6Network":"not even an address","IPv6SubnetLen":3}`, net16},
		{"flanneld takes 0.0.0.0 and :: for an unset bound",
			`{"Network":"10.244.0.0/16","SubnetMin":"0.0.0.0","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","IPv6SubnetMax":"::"}`,
			dual(net16, "fd00:10:244::/56", 64, "fd00:10:244:1::", "fd00:10:244:ff::")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := registry.ParseConfig([]byte(tt.json))
			if err != nil {
				t.Fatalf("ParseConfig(%s): %v", tt.json, err)
			}
			if got != tt.want {
				t.Errorf("ParseConfig(%s)\n got %+v\nwant %+v", tt.json, got, tt.want)
			}
		})
	}
}

func TestParseConfigErrors(t *testing.T) {
	tests := []struct {
		name, json, mention string
	}{
		{"not JSON", `Network=10.244.0.0/16`, "JSON"},
		{"JSON but not an object", `["10.244.0.0/16"]`, "JSON"},
		{"no Network", `{"SubnetLen":24}`, "Network"},
		{"bad Network", `{"Network":"10.244.0.0"}`, "Network"},
		{"IPv6 Network", `{"Network":"fd00::/48"}`, "Network"},
		{"SubnetLen equal to the network", `{"Network":"10.244.0.0/16","SubnetLen":16}`, "SubnetLen"},
		{"SubnetLen leaves room for one subnet only", `{"Network":"10.244.0.0/16","SubnetLen":17}`, "SubnetLen"},
		{"SubnetLen shorter than the network", `{"Network":"10.244.0.0/16","SubnetLen":8}`, "SubnetLen"},
		{"SubnetLen too long", `{"Network":"10.244.0.0/16","SubnetLen":31}`, "SubnetLen"},
		{"negative SubnetLen", `{"Network":"10.244.0.0/16","SubnetLen":-24}`, "SubnetLen"},
		{"SubnetLen not a number", `{"Network":"10.244.0.0/16","SubnetLen":"24"}`, "JSON"},
		{"SubnetMin outside", `{"Network":"10.244.0.0/16","SubnetMin":"10.245.1.0"}`, "SubnetMin"},
		{"SubnetMax outside", `{"Network":"10.244.0.0/16","SubnetMax":"10.243.1.0"}`, "SubnetMax"},
		{"SubnetMin not an address", `{"Network":"10.244.0.0/16","SubnetMin":"ten"}`, "SubnetMin"},
		{"SubnetMin inside a subnet", `{"Network":"10.244.0.0/16","SubnetMin":"10.244.3.7"}`, "SubnetMin 10.244.3.7 is not on a /24 boundary"},
		{"SubnetMax inside a subnet", `{"Network":"10.244.0.0/16","SubnetLen":26,"SubnetMax":"10.244.9.32"}`, "SubnetMax 10.244.9.32 is not on a /26 boundary"},
		{"min above max", `{"Network":"10.244.0.0/16","SubnetMin":"10.244.20.0","SubnetMax":"10.244.10.0"}`, "above"},
		{"a /32 network has no subnets", `{"Network":"10.244.0.0/32"}`, "10.244.0.0/32"},
		{"a /29 network is too small for flanneld", `{"Network":"10.244.0.0/29"}`, "10.244.0.0/29"},
		{"the whole address space", `{"Network":"0.0.0.0/0"}`, "Network 0.0.0.0/0 is larger than a /8"},
		{"larger than a /8", `{"Network":"10.0.0.0/7"}`, "Network 10.0.0.0/7 is larger than a /8"},
		{"loopback", `{"Network":"127.0.0.0/16"}`, "Network 127.0.0.0/16 overlaps 127.0.0.0/8 (loopback)"},
		{"multicast", `{"Network":"224.1.0.0/16"}`, "Network 224.1.0.0/16 overlaps 224.0.0.0/4 (multicast)"},
		{"link-local", `{"Network":"169.254.0.0/16"}`, "Network 169.254.0.0/16 overlaps 169.254.0.0/16 (link-local)"},
		{"more than 65536 subnets", `{"Network":"10.0.0.0/8","SubnetLen":30}`, "SubnetLen 30 cuts Network 10.0.0.0/8 into 4194304 subnets"},
		{"one bit more than allowed", `{"Network":"10.0.0.0/8","SubnetLen":25}`, "SubnetLen 25 cuts Network 10.0.0.0/8 into 131072 subnets"},

		{"IPv6 only", `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56"}`, "IPv6-only network is not possible with etcd"},
		{"EnableIPv6 not a bool", `{"Network":"10.244.0.0/16","EnableIPv6":"true"}`, "JSON"},
		{"no IPv6Network", `{"Network":"10.244.0.0/16","EnableIPv6":true}`, "IPv6Network is missing"},
		{"IPv4 IPv6Network", `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"10.245.0.0/16"}`, `IPv6Network "10.245.0.0/16" is not an IPv6 prefix`},
		{"IPv6Network without length", `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::"}`, `IPv6Network "fd00::" is not an IPv6 prefix`},
		{"IPv6Network with a zone", `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fe80::%eth0/64"}`, "IPv6Network"},
		{"IPv6Network larger than a /8", `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/7"}`, "IPv6Network fc00::/7 is larger than a /8"},
		{"IPv6 everything", `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"::/0"}`, "IPv6Network ::/0 is larger than a /8"},
		{"IPv6 link-local", `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fe80::/56"}`, "IPv6Network fe80::/56 overlaps fe80::/10 (link-local)"},
		{"IPv6 multicast", `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"ff02::/56"}`, "IPv6Network ff02::/56 overlaps ff00::/8 (multicast)"},
		{"IPv4-mapped", `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"::ffff:10.245.0.0/112"}`, "overlaps ::/8"},
		{"a /125 IPv6 network is too small for flanneld", `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/125"}`, "IPv6Network fd00::/125 is too small: flannel needs at least a /124"},
		{"IPv6SubnetLen equal to the network", `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/56","IPv6SubnetLen":56}`, "IPv6SubnetLen 56 must be at least 2 longer than IPv6Network fd00::/56"},
		{"IPv6SubnetLen too long", `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/56","IPv6SubnetLen":127}`, "IPv6SubnetLen 127"},
		{"IPv6SubnetMin outside", `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/56","IPv6SubnetMin":"fd01::"}`, `IPv6SubnetMin "fd01::" is not an address in fd00::/56`},
		{"IPv6SubnetMax an IPv4 address", `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/56","IPv6SubnetMax":"10.244.1.0"}`, `IPv6SubnetMax "10.244.1.0" is not an address in fd00::/56`},
		{"IPv6SubnetMin inside a subnet", `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/56","IPv6SubnetMin":"fd00:0:0:3::1"}`, "IPv6SubnetMin fd00:0:0:3::1 is not on a /64 boundary (fd00:0:0:3:: is)"},
		{"IPv6 min above max", `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/56","IPv6SubnetMin":"fd00:0:0:20::","IPv6SubnetMax":"fd00:0:0:10::"}`, "IPv6SubnetMin fd00:0:0:20:: is above IPv6SubnetMax fd00:0:0:10::"},
		{"a bad IPv4 half of a dual-stack config", `{"Network":"10.244.0.0/16","SubnetLen":8,"EnableIPv6":true,"IPv6Network":"fd00::/56"}`, "SubnetLen 8"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := registry.ParseConfig([]byte(tt.json))
			if err == nil {
				t.Fatalf("ParseConfig(%s) = %+v, want an error", tt.json, cfg)
			}
			if !strings.Contains(err.Error(), tt.mention) {
				t.Errorf("ParseConfig(%s) error %q does not mention %q", tt.json, err, tt.mention)
			}
		})
	}
}

func TestConfigInRange(t *testing.T) {
	checkInRange(t, `{"Network":"10.244.0.0/16","SubnetMin":"10.244.10.0","SubnetMax":"10.244.12.0"}`, map[string]bool{
		"10.244.10.0/24": true, "10.244.11.0/24": true, "10.244.12.0/24": true,
		"10.244.9.0/24": false, "10.244.13.0/24": false, // outside Min..Max
		"10.244.10.0/25": false, "10.245.10.0/24": false, // wrong length, wrong network
	})
}

func TestConfigInRangeIPv6(t *testing.T) {
	checkInRange(t, `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56",`+
		`"IPv6SubnetMin":"fd00:10:244:10::","IPv6SubnetMax":"fd00:10:244:12::"}`, map[string]bool{
		"fd00:10:244:10::/64": true, "fd00:10:244:12::/64": true, "10.244.7.0/24": true,
		"fd00:10:244:f::/64": false, "fd00:10:244:13::/64": false, // outside Min..Max
		"fd00:10:244:10::/80": false, "fd00:10:245:10::/64": false, // wrong length, wrong network
	})
	// A config without EnableIPv6 hands out no IPv6 subnets.
	checkInRange(t, `{"Network":"10.244.0.0/16"}`, map[string]bool{"fd00:10:244:10::/64": false})
}

// checkInRange checks which prefixes the config json holds in range.
func checkInRange(t *testing.T, json string, inRange map[string]bool) {
	t.Helper()
	cfg, err := registry.ParseConfig([]byte(json))
	if err != nil {
		t.Fatal(err)
	}
	for p, want := range inRange {
		if got := cfg.InRange(pfx(p)); got != want {
			t.Errorf("config %s: InRange(%s) = %v, want %v", json, p, got, want)
		}
	}
}

// v4 is the config of IPv4 network cut into /subnetLen subnets, min to
// max.
func v4(network string, subnetLen int, min, max string) registry.Config {
	return registry.Config{EnableIPv4: true, Network: pfx(network), SubnetLen: subnetLen, SubnetMin: addr(min), SubnetMax: addr(max)}
}

// dual is c with IPv6 network too, cut into /subnetLen subnets, min to
// max.
func dual(c registry.Config, network string, subnetLen int, min, max string) registry.Config {
	c.EnableIPv6, c.IPv6Network, c.IPv6SubnetLen, c.IPv6SubnetMin, c.IPv6SubnetMax = true, pfx(network), subnetLen, addr(min), addr(max)
	return c
}

// hostGW is c with flannel's host-gw backend.
func hostGW(c registry.Config) registry.Config {
	c.BackendType = "host-gw"
	return c
}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func addr(s string) netip.Addr  { return netip.MustParseAddr(s) }
