package metrics

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
)

type fakeStats struct {
	counters []datapath.Counter
	err      error
}

func (f *fakeStats) Stats() ([]datapath.Counter, error) { return f.counters, f.err }

func TestFastPathCountersFollowTheMapAtScrapeTime(t *testing.T) {
	s := &fakeStats{counters: []datapath.Counter{
		{Family: "ipv4", Program: "from_pods", Reason: "redirect", Packets: 3, Bytes: 300},
		{Family: "ipv4", Program: "from_underlay", Reason: "no_route", Packets: 1, Bytes: 60},
		{Family: "ipv6", Program: "from_pods", Reason: "redirect", Packets: 5, Bytes: 700},
	}}
	m := New(s)
	want := `
# HELP hgw_fastpath_packets_total Packets seen by the TC programs, by family (ipv4, ipv6, other: not IP), program and the reason for their path (redirect = fast path).
# TYPE hgw_fastpath_packets_total counter
hgw_fastpath_packets_total{family="ipv4",program="from_pods",reason="redirect"} 3
hgw_fastpath_packets_total{family="ipv4",program="from_underlay",reason="no_route"} 1
hgw_fastpath_packets_total{family="ipv6",program="from_pods",reason="redirect"} 5
`
	if err := testutil.GatherAndCompare(m.Registry, strings.NewReader(want), "hgw_fastpath_packets_total"); err != nil {
		t.Fatal(err)
	}
	s.counters[0].Packets = 10
	want = strings.Replace(want, `reason="redirect"} 3`, `reason="redirect"} 10`, 1)
	if err := testutil.GatherAndCompare(m.Registry, strings.NewReader(want), "hgw_fastpath_packets_total"); err != nil {
		t.Fatalf("second scrape must read the map again: %v", err)
	}
	s.err = errors.New("map gone")
	if err := testutil.GatherAndCompare(m.Registry, strings.NewReader(`
# HELP hgw_fastpath_stats_read_errors 1 if the stats map could not be read at this scrape.
# TYPE hgw_fastpath_stats_read_errors gauge
hgw_fastpath_stats_read_errors 1
`), "hgw_fastpath_stats_read_errors"); err != nil {
		t.Fatal(err)
	}
}

func TestReadinessNamesWhatIsMissing(t *testing.T) {
	r := NewReadiness("registry synced", "programs attached")
	if why := r.Ready(); !strings.Contains(why, "registry synced") || !strings.Contains(why, "programs attached") {
		t.Fatalf("Ready() = %q, want both conditions named", why)
	}
	r.Set("registry synced", true)
	if why := r.Ready(); strings.Contains(why, "registry synced") || !strings.Contains(why, "programs attached") {
		t.Fatalf("Ready() = %q, want only the attach condition", why)
	}
	r.Set("programs attached", true)
	if why := r.Ready(); why != "" {
		t.Fatalf("Ready() = %q, want ready", why)
	}
	r.Set("programs attached", false)
	if r.Ready() == "" {
		t.Fatal("a condition set back to unmet must make it unready again")
	}
}

// /readyz answers with its verdict on the first line and the notes after
// it, ready or not: a node whose fast path steps aside is still ready.
func TestReadyzCarriesNotes(t *testing.T) {
	ln, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	r := NewReadiness("routes applied")
	go func() { done <- Serve(ctx, ln, New(nil), r, slog.New(slog.DiscardHandler)) }()
	defer func() { cancel(); <-done }()
	get := func() (int, string) {
		t.Helper()
		resp, err := http.Get("http://" + ln.Addr().String() + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	r.SetNote("fast path", "fast path: stepping aside")
	r.SetNote("conntrack", "conntrack check: on")
	if code, body := get(); code != 503 || body != "not ready: waiting for [routes applied]\nfast path: stepping aside\nconntrack check: on\n" {
		t.Errorf("unready: %d %q", code, body)
	}
	r.Set("routes applied", true)
	r.SetNote("fast path", "fast path: active")
	if code, body := get(); code != 200 || body != "ready\nfast path: active\nconntrack check: on\n" {
		t.Errorf("ready: %d %q", code, body)
	}
	r.SetNote("fast path", "")
	if code, body := get(); code != 200 || body != "ready\nconntrack check: on\n" {
		t.Errorf("note removed: %d %q", code, body)
	}
}
