package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/hgw-ebpf/hgw-ebpf/pkg/lab"
)

// tcProgram is one TC program attachment as the kernel reports it.
type tcProgram struct {
	Dev  string `json:"devname"`
	Kind string `json:"kind"` // "tcx/ingress", "clsact/ingress", ...
	Name string `json:"name"`
	ID   int    `json:"prog_id"`
}

// attachedTC asks the kernel (bpftool net show, inside the node) which TC
// programs are attached to the node's devices: the truth, not the pins.
func attachedTC(ctx context.Context, st lab.State, node string) ([]tcProgram, error) {
	out, err := st.Output(ctx, node, "bpftool", "--json", "net", "show")
	if err != nil {
		return nil, fmt.Errorf("bpftool net show in %s: %w: %s", node, err, out)
	}
	var sections []struct {
		TC []tcProgram `json:"tc"`
	}
	if err := json.Unmarshal([]byte(out), &sections); err != nil {
		return nil, fmt.Errorf("parse bpftool output %q: %w", out, err)
	}
	var progs []tcProgram
	for _, s := range sections {
		progs = append(progs, s.TC...)
	}
	return progs, nil
}

// fastPathAttached reports whether from_pods sits on cni0 and
// from_underlay on eth0.
func fastPathAttached(t *testing.T, ctx context.Context, st lab.State, node string) bool {
	progs, err := attachedTC(ctx, st, node)
	if err != nil {
		t.Log(err)
		return false
	}
	var pods, underlay bool
	for _, p := range progs {
		pods = pods || (p.Dev == "cni0" && p.Name == "from_pods")
		underlay = underlay || (p.Dev == "eth0" && p.Name == "from_underlay")
	}
	return pods && underlay
}
