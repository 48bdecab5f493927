package registry_test

import (
	"testing"

	"github.com/hgw-ebpf/hgw-ebpf/internal/registry"
)

// NextPrefix steps to the next prefix of the same length, carrying
// across bytes, in both families.
func TestNextPrefix(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"10.244.0.0/25", "10.244.0.128/25"},
		{"10.244.0.128/25", "10.244.1.0/25"},
		{"10.244.255.128/25", "10.245.0.0/25"},
		{"10.0.0.0/8", "11.0.0.0/8"},
		{"10.244.3.7/32", "10.244.3.8/32"},
		{"fd00:10:244:ff::/64", "fd00:10:244:100::/64"},
		{"fd00::ffff:ffff:0:0/96", "fd00:0:0:1::/96"},
		{"fd00:10:244:1::/62", "fd00:10:244:5::/62"},
		{"fd00::ffff:ffff:ffff:ffff/128", "fd00:0:0:1::/128"},
	} {
		if got := registry.NextPrefix(pfx(tt.in)); got != pfx(tt.want) {
			t.Errorf("NextPrefix(%s) = %s, want %s", tt.in, got, tt.want)
		}
	}
}
