package registry_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/hgw-ebpf/hgw-ebpf/internal/registry"
)

func TestParseConfig(t *testing.T) {
	tests := []struct {
		name, json string
		want       registry.Config
	}{{
		name: "defaults for a /16",
		json: `{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}`,
		want: registry.Config{EnableIPv4: true, Network: pfx("10.244.0.0/16"), SubnetLen: 24,
			SubnetMin: addr("10.244.1.0"), SubnetMax: addr("10.244.255.0"), BackendType: "host-gw"},
	}, {
		name: "defaults for a /8, no backend",
		json: `{"Network":"10.0.0.0/8"}`,
		want: registry.Config{EnableIPv4: true, Network: pfx("10.0.0.0/8"), SubnetLen: 24,
			SubnetMin: addr("10.0.1.0"), SubnetMax: addr("10.255.255.0")},
	}, {
		// flannel's CheckNetworkConfig: /24 down to a /22, then four subnets.
		name: "a /22 network still gets /24 subnets",
		json: `{"Network":"192.168.4.0/22"}`,
		want: registry.Config{EnableIPv4: true, Network: pfx("192.168.4.0/22"), SubnetLen: 24,
			SubnetMin: addr("192.168.5.0"), SubnetMax: addr("192.168.7.0")},
	}, {
		name: "a /23 network is cut in four like flanneld does",
		json: `{"Network":"192.168.6.0/23"}`,
		want: registry.Config{EnableIPv4: true, Network: pfx("192.168.6.0/23"), SubnetLen: 25,
			SubnetMin: addr("192.168.6.128"), SubnetMax: addr("192.168.7.128")},
	}, {
		name: "a /28 network is the smallest flanneld accepts",
		json: `{"Network":"192.168.7.0/28"}`,
		want: registry.Config{EnableIPv4: true, Network: pfx("192.168.7.0/28"), SubnetLen: 30,
			SubnetMin: addr("192.168.7.4"), SubnetMax: addr("192.168.7.12")},
	}, {
		name: "explicit values",
		json: `{"Network":"10.244.0.0/16","SubnetLen":26,"SubnetMin":"10.244.10.0","SubnetMax":"10.244.20.192","Backend":{"Type":"host-gw"}}`,
		want: registry.Config{EnableIPv4: true, Network: pfx("10.244.0.0/16"), SubnetLen: 26,
			SubnetMin: addr("10.244.10.0"), SubnetMax: addr("10.244.20.192"), BackendType: "host-gw"},
	}, {
		name: "the most subnets allowed: 65536",
		json: `{"Network":"10.240.0.0/14","SubnetLen":30}`,
		want: registry.Config{EnableIPv4: true, Network: pfx("10.240.0.0/14"), SubnetLen: 30,
			SubnetMin: addr("10.240.0.4"), SubnetMax: addr("10.243.255.252")},
	}, {
		name: "network with host bits is masked",
		json: `{"Network":"10.244.3.4/16"}`,
		want: registry.Config{EnableIPv4: true, Network: pfx("10.244.0.0/16"), SubnetLen: 24,
			SubnetMin: addr("10.244.1.0"), SubnetMax: addr("10.244.255.0")},
	}, {
		name: "flanneld's extra fields are ignored",
		json: `{"Network":"10.244.0.0/16","EnableIPv6":false,"Backend":{"Type":"host-gw","DirectRouting":true}}`,
		want: registry.Config{EnableIPv4: true, Network: pfx("10.244.0.0/16"), SubnetLen: 24,
			SubnetMin: addr("10.244.1.0"), SubnetMax: addr("10.244.255.0"), BackendType: "host-gw"},
	}, {
		// flannel's CheckNetworkConfig for IPv6: /64 subnets, the first
		// one skipped, the last one the maximum.
		name: "dual stack defaults for a /56",
		json: `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"host-gw"}}`,
		want: registry.Config{EnableIPv4: true, EnableIPv6: true, Network: pfx("10.244.0.0/16"), SubnetLen: 24,
			SubnetMin: addr("10.244.1.0"), SubnetMax: addr("10.244.255.0"),
			IPv6Network: pfx("fd00:10:244::/56"), IPv6SubnetLen: 64,
			IPv6SubnetMin: addr("fd00:10:244:1::"), IPv6SubnetMax: addr("fd00:10:244:ff::"), BackendType: "host-gw"},
	}, {
		name: "dual stack, EnableIPv4 spelt out, a /64 network cut in four like flanneld does",
		json: `{"EnableIPv4":true,"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244:7::/64"}`,
		want: registry.Config{EnableIPv4: true, EnableIPv6: true, Network: pfx("10.244.0.0/16"), SubnetLen: 24,
			SubnetMin: addr("10.244.1.0"), SubnetMax: addr("10.244.255.0"),
			IPv6Network: pfx("fd00:10:244:7::/64"), IPv6SubnetLen: 66,
			IPv6SubnetMin: addr("fd00:10:244:7:4000::"), IPv6SubnetMax: addr("fd00:10:244:7:c000::")},
	}, {
		name: "dual stack, a /124 network is the smallest flanneld accepts",
		json: `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::10:0/124"}`,
		want: registry.Config{EnableIPv4: true, EnableIPv6: true, Network: pfx("10.244.0.0/16"), SubnetLen: 24,
			SubnetMin: addr("10.244.1.0"), SubnetMax: addr("10.244.255.0"),
			IPv6Network: pfx("fd00::10:0/124"), IPv6SubnetLen: 126,
			IPv6SubnetMin: addr("fd00::10:4"), IPv6SubnetMax: addr("fd00::10:c")},
	}, {
		name: "dual stack, explicit values, host bits masked; a /8 has room for 2^72 subnets",
		json: `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd12:3456::1/8","IPv6SubnetLen":80,` +
			`"IPv6SubnetMin":"fd00:0:0:10:1::","IPv6SubnetMax":"fdff:ffff:ffff:ffff:ffff::"}`,
		want: registry.Config{EnableIPv4: true, EnableIPv6: true, Network: pfx("10.244.0.0/16"), SubnetLen: 24,
			SubnetMin: addr("10.244.1.0"), SubnetMax: addr("10.244.255.0"),
			IPv6Network: pfx("fd00::/8"), IPv6SubnetLen: 80,
			IPv6SubnetMin: addr("fd00:0:0:10:1::"), IPv6SubnetMax: addr("fdff:ffff:ffff:ffff:ffff::")},
	}, {
		name: "the IPv6 fields are not read without EnableIPv6, as in flanneld",
		json: `{"Network":"10.244.0.0/16","IPv6Network":"not even an address","IPv6SubnetLen":3}`,
		want: registry.Config{EnableIPv4: true, Network: pfx("10.244.0.0/16"), SubnetLen: 24,
			SubnetMin: addr("10.244.1.0"), SubnetMax: addr("10.244.255.0")},
	}, {
		name: "flanneld takes 0.0.0.0 and :: for an unset bound",
		json: `{"Network":"10.244.0.0/16","SubnetMin":"0.0.0.0","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","IPv6SubnetMax":"::"}`,
		want: registry.Config{EnableIPv4: true, EnableIPv6: true, Network: pfx("10.244.0.0/16"), SubnetLen: 24,
			SubnetMin: addr("10.244.1.0"), SubnetMax: addr("10.244.255.0"),
			IPv6Network: pfx("fd00:10:244::/56"), IPv6SubnetLen: 64,
			IPv6SubnetMin: addr("fd00:10:244:1::"), IPv6SubnetMax: addr("fd00:10:244:ff::")},
	}}
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
	cfg, err := registry.ParseConfig([]byte(`{"Network":"10.244.0.0/16","SubnetMin":"10.244.10.0","SubnetMax":"10.244.12.0"}`))
	if err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]bool{
		"10.244.10.0/24": true, "10.244.11.0/24": true, "10.244.12.0/24": true,
		"10.244.9.0/24": false, "10.244.13.0/24": false, // outside Min..Max
		"10.244.10.0/25": false, "10.245.10.0/24": false, // wrong length, wrong network
	} {
		if got := cfg.InRange(pfx(p)); got != want {
			t.Errorf("InRange(%s) = %v, want %v", p, got, want)
		}
	}
}

func TestConfigInRangeIPv6(t *testing.T) {
	cfg, err := registry.ParseConfig([]byte(`{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56",` +
		`"IPv6SubnetMin":"fd00:10:244:10::","IPv6SubnetMax":"fd00:10:244:12::"}`))
	if err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]bool{
		"fd00:10:244:10::/64": true, "fd00:10:244:12::/64": true, "10.244.7.0/24": true,
		"fd00:10:244:f::/64": false, "fd00:10:244:13::/64": false, // outside Min..Max
		"fd00:10:244:10::/80": false, "fd00:10:245:10::/64": false, // wrong length, wrong network
	} {
		if got := cfg.InRange(pfx(p)); got != want {
			t.Errorf("InRange(%s) = %v, want %v", p, got, want)
		}
	}
	v4only, err := registry.ParseConfig([]byte(`{"Network":"10.244.0.0/16"}`))
	if err != nil {
		t.Fatal(err)
	}
	if v4only.InRange(pfx("fd00:10:244:10::/64")) {
		t.Error("a config without EnableIPv6 hands out IPv6 subnets")
	}
}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func addr(s string) netip.Addr  { return netip.MustParseAddr(s) }
