package registry

import (
	"fmt"
	"testing"
)

// A snapshot lists leases and skipped entries in key order whatever the
// map's order, and nothing (nil) for an empty map.
func TestSnapshotInKeyOrder(t *testing.T) {
	leases, skipped := map[string]Lease{}, map[string]Skipped{}
	for i := 300; i > 0; i-- {
		k := fmt.Sprintf("/coreos.com/network/subnets/10.%d.%d.0-24", i/256, i%256)
		leases[k] = Lease{Key: k, ModRevision: int64(i)}
		if i%7 == 0 {
			skipped[k+"x"] = Skipped{Key: k + "x", Reason: "bad_key"}
		}
	}
	s := snapshot(42, leases, skipped)
	if s.Revision != 42 || len(s.Leases) != len(leases) || len(s.Skipped) != len(skipped) {
		t.Fatalf("revision %d, %d leases, %d skipped: want 42, %d, %d", s.Revision, len(s.Leases), len(s.Skipped), len(leases), len(skipped))
	}
	for i := 1; i < len(s.Leases); i++ {
		if s.Leases[i-1].Key >= s.Leases[i].Key {
			t.Fatalf("leases %d and %d out of order: %q, %q", i-1, i, s.Leases[i-1].Key, s.Leases[i].Key)
		}
	}
	for _, l := range s.Leases {
		if leases[l.Key].ModRevision != l.ModRevision {
			t.Fatalf("lease %q is not the map's %+v", l.Key, leases[l.Key])
		}
	}
	for i := 1; i < len(s.Skipped); i++ {
		if s.Skipped[i-1].Key >= s.Skipped[i].Key {
			t.Fatalf("skipped %d and %d out of order: %q, %q", i-1, i, s.Skipped[i-1].Key, s.Skipped[i].Key)
		}
	}
	if e := snapshot(1, nil, map[string]Skipped{}); e.Leases != nil || e.Skipped != nil {
		t.Errorf("empty snapshot %+v: want nil slices", e)
	}
}
