package e2e

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/hgw-ebpf/hgw-ebpf/pkg/lab"
)

// --datapath routes is plain flannel host-gw: the same all-pairs
// connectivity, with no BPF program attached to any device of any node.
func TestRoutesDatapath(t *testing.T) {
	l := startLab(t, 3, 1, lab.DatapathRoutes)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st := l.State()
	pingAll(t, ctx, st)
	for _, n := range st.Nodes {
		out, err := st.Output(ctx, n.Name, "bpftool", "--json", "net", "show")
		if err != nil {
			t.Fatalf("bpftool net show in %s: %v: %s", n.Name, err, out)
		}
		var shown []map[string]json.RawMessage
		if err := json.Unmarshal([]byte(out), &shown); err != nil {
			t.Fatalf("parse bpftool output %q: %v", out, err)
		}
		for _, section := range shown {
			for kind, list := range section {
				var progs []json.RawMessage
				if err := json.Unmarshal(list, &progs); err == nil && len(progs) > 0 {
					t.Errorf("%s has %s programs attached: %s", n.Name, kind, list)
				}
			}
		}
	}
}
