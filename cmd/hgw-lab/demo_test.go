package main

import (
	"bytes"
	"testing"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
)

// Both kinds of redirect count as the fast path, everything else as left
// to the kernel.
func TestPassed(t *testing.T) {
	cs := []datapath.Counter{
		{Program: "from_pods", Reason: "redirect", Packets: 10},
		{Program: "from_underlay", Reason: "redirect", Packets: 3},
		{Program: "from_underlay", Reason: "redirect_peer", Packets: 7},
		{Program: "from_underlay", Reason: "no_route", Packets: 5},
		{Program: "from_pods", Reason: "not_ip", Packets: 2},
	}
	if got := passed(cs); got != 7 {
		t.Errorf("passed %d, want 7", got)
	}
}

// Every line written through indent starts with two spaces, also when a
// line arrives in pieces.
func TestIndent(t *testing.T) {
	var b bytes.Buffer
	w := &indent{w: &b}
	for _, s := range []string{"one\ntw", "o\n", "\nthree"} {
		if n, err := w.Write([]byte(s)); err != nil || n != len(s) {
			t.Fatalf("Write(%q) = %d, %v", s, n, err)
		}
	}
	if want := "  one\n  two\n  \n  three"; b.String() != want {
		t.Errorf("got %q, want %q", b.String(), want)
	}
}
