package kube

import (
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Annotation keys come out as flanneld builds them from the prefix, and
// prefixes flanneld refuses are refused with the flag named.
func TestAnnotations(t *testing.T) {
	for prefix, want := range map[string]string{
		"flannel.alpha.coreos.com":       "flannel.alpha.coreos.com/public-ip",
		"example.com/":                   "example.com/public-ip",
		"example.com/net":                "example.com/net-public-ip",
		"example.com/net-":               "example.com/net-public-ip",
		"a_b.example-1.com/hgw_ebpf-two": "a_b.example-1.com/hgw_ebpf-two-public-ip",
	} {
		a, err := newAnnotations(prefix)
		if err != nil || a.publicIP != want {
			t.Errorf("prefix %q: public-ip key %q, %v; want %q", prefix, a.publicIP, err, want)
		}
	}
	for _, bad := range []string{"", "nodots", "a/b/c", "Example.com", "example.com/Net", "example.com/a.b", ".example.com"} {
		if _, err := newAnnotations(bad); err == nil {
			t.Errorf("prefix %q accepted", bad)
		}
	}
	a, _ := newAnnotations(DefaultAnnotationPrefix)
	for got, want := range map[string]string{
		a.managed: "flannel.alpha.coreos.com/kube-subnet-manager", a.backendType: "flannel.alpha.coreos.com/backend-type",
		a.backendData: "flannel.alpha.coreos.com/backend-data", a.backendV6Data: "flannel.alpha.coreos.com/backend-v6-data",
		a.publicIPv6: "flannel.alpha.coreos.com/public-ipv6", a.publicIPOverride: "flannel.alpha.coreos.com/public-ip-overwrite",
		a.publicIPv6Over: "flannel.alpha.coreos.com/public-ipv6-overwrite",
	} {
		if got != want {
			t.Errorf("key %q, want %q", got, want)
		}
	}
}

// podCIDRs reads spec.podCIDRs (one per family), else spec.podCIDR, and
// refuses more than one per family or more than two.
func TestPodCIDRs(t *testing.T) {
	node := func(single string, multi ...string) *corev1.Node {
		return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n"}, Spec: corev1.NodeSpec{PodCIDR: single, PodCIDRs: multi}}
	}
	for _, tc := range []struct {
		n      *corev1.Node
		v4, v6 string
		bad    bool
	}{
		{n: node("")},
		{n: node("10.244.1.0/24"), v4: "10.244.1.0/24"},
		{n: node("10.244.1.5/24"), v4: "10.244.1.0/24"},
		{n: node("fd00::/64"), v6: "fd00::/64"},
		{n: node("10.244.1.0/24", "10.244.1.0/24", "fd00:1::/64"), v4: "10.244.1.0/24", v6: "fd00:1::/64"},
		{n: node("fd00:1::/64", "fd00:1::/64", "10.244.1.0/24"), v4: "10.244.1.0/24", v6: "fd00:1::/64"},
		{n: node("", "10.244.1.0/24", "10.244.2.0/24"), bad: true},
		{n: node("", "10.244.1.0/24", "fd00::/64", "10.244.2.0/24"), bad: true},
		{n: node("10.244.1.0"), bad: true},
		{n: node("::ffff:10.244.1.0/120"), bad: true},
	} {
		v4, v6, err := podCIDRs(tc.n)
		if (err != nil) != tc.bad {
			t.Errorf("%+v: err %v, want bad %v", tc.n.Spec, err, tc.bad)
			continue
		}
		if tc.bad {
			continue
		}
		if want, _ := netip.ParsePrefix(tc.v4); v4 != want {
			t.Errorf("%+v: v4 %s, want %q", tc.n.Spec, v4, tc.v4)
		}
		if want, _ := netip.ParsePrefix(tc.v6); v6 != want {
			t.Errorf("%+v: v6 %s, want %q", tc.n.Spec, v6, tc.v6)
		}
	}
}
