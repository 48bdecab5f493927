package bench

import (
	"bytes"
	"context"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hgw-ebpf/hgw-ebpf/pkg/testutil"
)

func TestSyntheticLeasesAreDistinctAndClear(t *testing.T) {
	own := netip.MustParsePrefix("10.244.0.0/16")
	ls := SyntheticLeases(5000, own)
	if len(ls) != 5000 {
		t.Fatalf("%d leases, want 5000", len(ls))
	}
	subnets, ips := map[netip.Prefix]bool{}, map[netip.Addr]bool{}
	peerNet := cpNodeAddr.Masked()
	for _, l := range ls {
		switch {
		case subnets[l.Subnet] || ips[l.PublicIP]:
			t.Fatalf("%+v repeats a subnet or a peer", l)
		case l.Subnet.Bits() != 24 || !cpNetwork.Contains(l.Subnet.Addr()):
			t.Errorf("%s is not a /24 of %s", l.Subnet, cpNetwork)
		case own.Overlaps(l.Subnet) || cpNewLeases.Overlaps(l.Subnet):
			t.Errorf("%s overlaps the node's network or the new leases' range", l.Subnet)
		case !peerNet.Contains(l.PublicIP) || l.PublicIP == cpNodeAddr.Addr():
			t.Errorf("peer %s is off %s or the node's own address", l.PublicIP, peerNet)
		}
		subnets[l.Subnet], ips[l.PublicIP] = true, true
	}
	for k := range 256 {
		if nl := newLease(k); subnets[nl.Subnet] || ips[nl.PublicIP] || !cpNewLeases.Contains(nl.Subnet.Addr()) {
			t.Fatalf("new lease %d %+v clashes with the synthetic ones", k, nl)
		}
	}
}

func TestPercentile(t *testing.T) {
	v := []float64{5, 1, 4, 2, 3, math.NaN(), 10, 9, 8, 7, 6}
	for p, want := range map[float64]float64{50: 5, 99: 10, 100: 10, 10: 1, 0: 1} {
		if got := Percentile(v, p); got != want {
			t.Errorf("p%v = %v, want %v", p, got, want)
		}
	}
	if !math.IsNaN(Percentile(nil, 50)) {
		t.Error("empty input must give NaN")
	}
}

// A whole small run: the lab comes up, the leases land in the kernel and
// the map, new leases are timed, the table states the targets, and the
// lab is gone afterwards.
func TestRunControlPlaneSmall(t *testing.T) {
	testutil.RequireRoot(t)
	bin := os.Getenv("HGW_BIN")
	if bin == "" {
		bin = filepath.Join("..", "..", "bin")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	prefix := "hgwtcp" + testutil.RandHex(t, 2)
	var progress bytes.Buffer
	res, err := RunControlPlane(ctx, ControlPlaneOptions{Prefix: prefix, StateRoot: t.TempDir(), BinDir: bin,
		CNIPath: os.Getenv("CNI_PATH"), Rounds: 1, Leases: 300, NewLeases: 5, Progress: &progress})
	if err != nil {
		t.Fatalf("%v\n%s", err, progress.String())
	}
	s := res.Samples[0]
	if !(s.ProgramSeconds > 0) || len(s.NewLeaseMs) != 5 || s.RSSBytes == 0 {
		t.Errorf("sample %+v: want a program time, 5 new-lease times and an RSS", s)
	}
	var table bytes.Buffer
	if err := res.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"300 leases programmed [s]", "< 2 s", "new lease -> map p99 [ms]", "< 100 ms"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, table.String())
		}
	}
	if names, _ := filepath.Glob("/var/run/netns/" + prefix + "*"); len(names) != 0 {
		t.Errorf("namespaces left behind: %v", names)
	}
}
