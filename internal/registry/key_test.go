package registry_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/hgw-ebpf/hgw-ebpf/internal/registry"
)

func TestParseSubnetKey(t *testing.T) {
	tests := []struct {
		key    string
		v4, v6 string // "" = zero prefix
		ok     bool
	}{
		{key: "10.244.1.0-24", v4: "10.244.1.0/24", ok: true},
		{key: "10.244.0.0-16", v4: "10.244.0.0/16", ok: true},
		{key: "0.0.0.0-0", v4: "0.0.0.0/0", ok: true},
		{key: "10.244.1.7-32", v4: "10.244.1.7/32", ok: true},
		{key: "10.244.1.0-24&fd00:10:244:1::-64", v4: "10.244.1.0/24", v6: "fd00:10:244:1::/64", ok: true},
		{key: "10.244.1.0-24&fd00:10:244:1::-128", v4: "10.244.1.0/24", v6: "fd00:10:244:1::/128", ok: true},

		{key: "10.244.1.1-24"},                          // host bits set
		{key: "10.244.1.0-16"},                          // host bits set for the length
		{key: "10.244.1.0-24&fd00:10:244:1::1-64"},      // v6 host bits
		{key: "10.244.1.0-33"},                          // too long
		{key: "10.244.1.0--1"},                          // negative
		{key: "10.244.1.0-024"},                         // not canonical
		{key: "10.244.1.0-+24"},                         // not canonical
		{key: "10.244.1.0-"},                            // no length
		{key: "10.244.1.0"},                             // no separator
		{key: "10.244.1.0/24"},                          // CIDR, not key form
		{key: "fd00:10:244:1::-64"},                     // v6 in the v4 slot
		{key: "::ffff:10.244.1.0-120"},                  // v4-mapped is not v4
		{key: "10.244.1.0-24&10.244.2.0-24"},            // v4 in the v6 slot
		{key: "10.244.1.0-24&fd00:10:244:1::-129"},      // v6 too long
		{key: "10.244.1.0-24&"},                         // empty v6 part
		{key: "10.244.1.0-24&fd00::%eth0-64"},           // zone
		{key: "010.244.1.0-24"},                         // leading zero
		{key: "10.244.1-24"},                            // short address
		{key: "garbage"},                                // garbage
		{key: ""},                                       // empty
		{key: "10.244.1.0-24&fd00::-64&fd01::-64"},      // two v6 parts
		{key: " 10.244.1.0-24"},                         // whitespace
		{key: "10.244.1.0-24&FD00:10:244:1::-64"},       // upper case: flanneld's key pattern has none
		{key: "10.244.1.0-24&fd00:10:244:1:0:0:0:0-64"}, // not RFC 5952: another key than flanneld's
		{key: "10.244.1.0-24&fd00:0010:244:1::-64"},     // leading zeros
	}
	for _, tt := range tests {
		t.Run(tt.key, func(t *testing.T) {
			v4, v6, err := registry.ParseSubnetKey(tt.key)
			if !tt.ok {
				if err == nil {
					t.Fatalf("ParseSubnetKey(%q) = %s, %s; want an error", tt.key, v4, v6)
				}
				if v4.IsValid() || v6.IsValid() {
					t.Errorf("ParseSubnetKey(%q) returned prefixes %s, %s along with error %v", tt.key, v4, v6, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseSubnetKey(%q): %v", tt.key, err)
			}
			if want := mustPrefix(t, tt.v4); v4 != want {
				t.Errorf("v4 = %s, want %s", v4, want)
			}
			if want := mustPrefix(t, tt.v6); v6 != want {
				t.Errorf("v6 = %s, want %s", v6, want)
			}
		})
	}
}

func TestParseSubnetKeyErrorNamesKey(t *testing.T) {
	_, _, err := registry.ParseSubnetKey("10.244.1.1-24")
	if err == nil || !strings.Contains(err.Error(), "10.244.1.1-24") {
		t.Fatalf("error %v does not name the key", err)
	}
}

func TestSubnetKeyRoundTrip(t *testing.T) {
	for _, s := range []string{"10.244.0.0/16", "10.244.1.0/24", "10.244.255.128/25", "192.168.0.0/30", "0.0.0.0/0"} {
		p := netip.MustParsePrefix(s)
		key := registry.SubnetKey(p)
		v4, v6, err := registry.ParseSubnetKey(key)
		if err != nil || v4 != p || v6.IsValid() {
			t.Errorf("ParseSubnetKey(SubnetKey(%s) = %q) = %s, %s, %v", p, key, v4, v6, err)
		}
	}
	if got := registry.SubnetKey(netip.MustParsePrefix("10.244.1.0/24")); got != "10.244.1.0-24" {
		t.Errorf("SubnetKey = %q, want flannel's 10.244.1.0-24", got)
	}
}

// DualStackKey writes what flanneld's MakeSubnetKey writes; the first
// case is the key the real flanneld v0.28.9 wrote (see flanneld_test.go).
func TestDualStackKey(t *testing.T) {
	for _, tt := range []struct{ v4, v6, want string }{
		{"10.244.60.0/24", "fd00:10:244:48::/64", "10.244.60.0-24&fd00:10:244:48::-64"},
		{"10.244.1.0/24", "", "10.244.1.0-24"},
		{"10.244.1.0/24", "fd00:0:0:1::/64", "10.244.1.0-24&fd00:0:0:1::-64"},
		{"10.244.1.0/24", "fd00::10:4/126", "10.244.1.0-24&fd00::10:4-126"},
		{"10.244.1.0/24", "2001:db8:0:1:1:1:1:0/112", "10.244.1.0-24&2001:db8:0:1:1:1:1:0-112"},
		{"10.244.1.0/24", "2001:db8:0:0:1::/80", "10.244.1.0-24&2001:db8:0:0:1::-80"},        // the longest run of zeros
		{"10.244.1.0/24", "2001:db8:0:0:1:0:0:1/128", "10.244.1.0-24&2001:db8::1:0:0:1-128"}, // the first of equal runs
	} {
		got := registry.DualStackKey(mustPrefix(t, tt.v4), mustPrefix(t, tt.v6))
		if got != tt.want {
			t.Errorf("DualStackKey(%s, %s) = %q, want %q", tt.v4, tt.v6, got, tt.want)
		}
		v4, v6, err := registry.ParseSubnetKey(got)
		if err != nil || v4 != mustPrefix(t, tt.v4) || v6 != mustPrefix(t, tt.v6) {
			t.Errorf("ParseSubnetKey(%q) = %s, %s, %v", got, v4, v6, err)
		}
	}
}

func FuzzParseSubnetKey(f *testing.F) {
	for _, s := range []string{
		"10.244.1.0-24", "10.244.1.0-24&fd00:10:244:1::-64", "10.244.1.1-24", "fd00::-64",
		"10.244.1.0-024", "1.2.3.4-32&::-0", "10.244.1.0-24&", "&", "-", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v4, v6, err := registry.ParseSubnetKey(s)
		if err != nil {
			return
		}
		if !v4.Addr().Is4() || v4.Masked() != v4 {
			t.Fatalf("accepted %q as v4 %s", s, v4)
		}
		if v6.IsValid() && (!v6.Addr().Is6() || v6.Addr().Is4In6() || v6.Masked() != v6) {
			t.Fatalf("accepted %q with v6 %s", s, v6)
		}
		// Keys are canonical: exactly what DualStackKey writes.
		key := registry.DualStackKey(v4, v6)
		if key != s {
			t.Fatalf("accepted %q, but DualStackKey writes %q", s, key)
		}
		r4, r6, err := registry.ParseSubnetKey(key)
		if err != nil || r4 != v4 || r6 != v6 {
			t.Fatalf("%q -> %s, %s -> %q -> %s, %s, %v", s, v4, v6, key, r4, r6, err)
		}
	})
}

func mustPrefix(t *testing.T, s string) netip.Prefix {
	t.Helper()
	if s == "" {
		return netip.Prefix{}
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
