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

	"github.com/hgw-ebpf/hgw-ebpf/internal/kubeapi/kubeapitest"
	"github.com/hgw-ebpf/hgw-ebpf/internal/lab"
	"github.com/hgw-ebpf/hgw-ebpf/internal/testutil"
)

func TestSyntheticLeasesAreDistinctAndClear(t *testing.T) {
	own := netip.MustParsePrefix("10.244.0.0/16")
	ls := SyntheticLeases(MaxSyntheticLeases, own)
	if len(ls) != MaxSyntheticLeases {
		t.Fatalf("%d leases, want %d", len(ls), MaxSyntheticLeases)
	}
	labUnderlay := netip.MustParsePrefix("198.18.0.0/24")
	subnets, ips := map[netip.Prefix]bool{}, map[netip.Addr]bool{}
	peerNet := cpNodeAddr.Masked()
	for _, l := range ls {
		switch {
		case subnets[l.Subnet] || ips[l.PublicIP]:
			t.Fatalf("%+v repeats a subnet or a peer", l)
		case l.Subnet.Bits() != 25 || !cpNetwork.Contains(l.Subnet.Addr()) || l.Subnet.Masked() != l.Subnet:
			t.Errorf("%s is not a /25 of %s", l.Subnet, cpNetwork)
		case own.Overlaps(l.Subnet) || cpNewLeases.Overlaps(l.Subnet):
			t.Errorf("%s overlaps the node's network or the new leases' range", l.Subnet)
		case !peerNet.Contains(l.PublicIP) || l.PublicIP == cpNodeAddr.Addr() || labUnderlay.Contains(l.PublicIP):
			t.Errorf("peer %s is off %s, the node's own address or in the lab's underlay", l.PublicIP, peerNet)
		}
		subnets[l.Subnet], ips[l.PublicIP] = true, true
	}
	for k := range 256 {
		if nl := newLease(k); subnets[nl.Subnet] || ips[nl.PublicIP] || !cpNewLeases.Contains(nl.Subnet.Addr()) || !peerNet.Contains(nl.PublicIP) {
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

// runSmall runs o in labs of its own (a random prefix, the built
// binaries), failing the test with the progress it wrote if it fails,
// and checks that no namespace of them is left.
func runSmall(t *testing.T, o ControlPlaneOptions) (*ControlPlaneResult, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	prefix := "hgwtcp" + testutil.RandHex(t, 2)
	var progress bytes.Buffer
	o.LabOptions = LabOptions{Prefix: prefix, StateRoot: t.TempDir(), BinDir: testutil.BinDir(), CNIPath: testutil.CNIPath(), Progress: &progress}
	res, err := RunControlPlane(ctx, o)
	if err != nil {
		t.Fatalf("%v\n%s", err, progress.String())
	}
	if names, _ := filepath.Glob("/var/run/netns/" + prefix + "*"); len(names) != 0 {
		t.Errorf("namespaces left behind: %v", names)
	}
	return res, progress.String()
}

// A whole small run: the lab comes up, the leases land in the kernel and
// the map, new leases are timed, the table states the targets, and the
// lab is gone afterwards.
func TestRunControlPlaneSmall(t *testing.T) {
	testutil.RequireRoot(t)
	res, _ := runSmall(t, ControlPlaneOptions{Rounds: 1, Leases: []int{300, 100}, NewLeases: 5})
	if len(res.Samples) != 4 {
		t.Fatalf("%d samples, want 2 lease counts x 2 forms", len(res.Samples))
	}
	for _, s := range res.Samples {
		if !(s.MapSeconds > 0) || !(s.RoutesSeconds > 0) || !(s.CPUSeconds >= 0) || len(s.NewLeaseMapMs) != 5 ||
			len(s.NewLeaseKernelMs) != 5 || s.RSSBytes == 0 {
			t.Errorf("sample %+v: want map and route times, CPU, 5 new-lease times each and an RSS", s)
		}
	}
	if res.Leases[0] != 100 {
		t.Errorf("lease counts %v: want them in order", res.Leases)
	}
	var table bytes.Buffer
	if err := res.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"map complete [s]", "< 2 s", "new lease -> kernel p99 [ms]", "< 20 ms", "growth 100 -> 300", "plain"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, table.String())
		}
	}
	if path, err := res.WriteChart(t.TempDir()); err != nil {
		t.Errorf("chart: %v", err)
	} else if st, err := os.Stat(path); err != nil || st.Size() == 0 {
		t.Errorf("chart %s: %v", path, err)
	}
}

// The same on Kubernetes Nodes: the peers are Nodes of a real
// kube-apiserver, every one routed (map and kernel) by an agent with
// --kube-subnet-mgr, new Nodes timed, and the files named apart from the
// etcd run's.
func TestRunControlPlaneKubeSmall(t *testing.T) {
	testutil.RequireRoot(t)
	for _, b := range []string{"kube-apiserver", "kubectl"} {
		kubeapitest.Require(t, b)
	}
	res, progress := runSmall(t, ControlPlaneOptions{Leases: []int{200}, Forms: []string{FormNexthop}, NewLeases: 5, Registry: lab.RegistryKube})
	if len(res.Samples) != 1 || res.Registry != lab.RegistryKube {
		t.Fatalf("%d samples of registry %q", len(res.Samples), res.Registry)
	}
	if s := res.Samples[0]; !(s.MapSeconds > 0) || !(s.RoutesSeconds > 0) || len(s.NewLeaseMapMs) != 5 || s.RSSBytes == 0 {
		t.Errorf("sample %+v: want map and route times, 5 new-lease times and an RSS", s)
	}
	if !strings.Contains(progress, "writing 199 peers' leases into kube") {
		t.Errorf("progress does not say the leases went into Nodes:\n%s", progress)
	}
	dir := t.TempDir()
	if path, err := res.WriteJSON(dir); err != nil || filepath.Base(path) != "controlplane-kube.json" {
		t.Errorf("samples written to %s: %v", path, err)
	}
}
