package datapath_test

import (
	"slices"
	"testing"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
)

// Packets sums one program's reason over the families; Redirected counts
// both kinds of redirect as the fast path; OfFamily keeps one family.
func TestCounterSums(t *testing.T) {
	cs := []datapath.Counter{
		{Family: "ipv4", Program: "from_pods", Reason: "redirect", Packets: 10},
		{Family: "ipv6", Program: "from_pods", Reason: "redirect", Packets: 4},
		{Family: "ipv4", Program: "from_underlay", Reason: "redirect", Packets: 3},
		{Family: "ipv4", Program: "from_underlay", Reason: "redirect_peer", Packets: 7},
		{Family: "ipv4", Program: "from_underlay", Reason: "no_route", Packets: 5},
		{Family: "other", Program: "from_pods", Reason: "not_ip", Packets: 2},
	}
	if got := datapath.Packets(cs, "from_pods", "redirect"); got != 14 {
		t.Errorf("from_pods/redirect %d, want 14", got)
	}
	if got := datapath.Redirected(cs, "from_underlay"); got != 10 {
		t.Errorf("from_underlay redirected %d, want 10", got)
	}
	if got := datapath.Redirected(datapath.OfFamily(cs, "ipv6"), "from_pods"); got != 4 {
		t.Errorf("from_pods redirected %d over IPv6, want 4", got)
	}
	if got := len(datapath.OfFamily(cs, "other")); got != 1 {
		t.Errorf("%d counters of family other, want 1", got)
	}
}

// Delta subtracts cell by cell, matched by family, program and reason
// (not by position); a cell the first reading lacks counts from zero.
func TestCounterDelta(t *testing.T) {
	before := []datapath.Counter{
		{Family: "ipv6", Program: "from_pods", Reason: "redirect", Packets: 4, Bytes: 400},
		{Family: "ipv4", Program: "from_pods", Reason: "redirect", Packets: 10, Bytes: 1000},
	}
	after := []datapath.Counter{
		{Family: "ipv4", Program: "from_pods", Reason: "redirect", Packets: 15, Bytes: 1600},
		{Family: "ipv6", Program: "from_pods", Reason: "redirect", Packets: 4, Bytes: 400},
		{Family: "ipv4", Program: "from_underlay", Reason: "redirect_peer", Packets: 7, Bytes: 700},
	}
	moved := datapath.Delta(before, after)
	want := []datapath.Counter{
		{Family: "ipv4", Program: "from_pods", Reason: "redirect", Packets: 5, Bytes: 600},
		{Family: "ipv6", Program: "from_pods", Reason: "redirect"},
		{Family: "ipv4", Program: "from_underlay", Reason: "redirect_peer", Packets: 7, Bytes: 700},
	}
	if !slices.Equal(moved, want) {
		t.Errorf("Delta = %+v, want %+v", moved, want)
	}
}
