package e2e

import (
	"fmt"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/hgw-ebpf/hgw-ebpf/internal/lab"
	"github.com/hgw-ebpf/hgw-ebpf/internal/nldump"
)

// tcProgram is one TC program attachment as the kernel reports it.
type tcProgram struct {
	Dev  string
	Kind string // "tcx/ingress", "tcx/egress", "clsact/ingress", "clsact/egress"
	Name string
	ID   ebpf.ProgramID
}

// attachedTC asks the kernel which TC programs (tcx links and clsact
// filters) are attached to the node's devices: the truth, not the pins.
// (Debian's bpftool 7.1 does not list tcx attachments.) tcx queries take an
// ifindex, which the kernel resolves in the caller's namespace, so this
// runs inside the node.
func attachedTC(st lab.State, node string) ([]tcProgram, error) {
	var progs []tcProgram
	err := st.Do(node, func() error {
		links, err := nldump.Retry(netlink.LinkList)
		if err != nil {
			return fmt.Errorf("list devices: %w", err)
		}
		for _, l := range links {
			dev, idx := l.Attrs().Name, l.Attrs().Index
			for kind, at := range map[string]ebpf.AttachType{"tcx/ingress": ebpf.AttachTCXIngress, "tcx/egress": ebpf.AttachTCXEgress} {
				res, err := link.QueryPrograms(link.QueryOptions{Target: idx, Attach: at})
				if err != nil {
					return fmt.Errorf("query %s programs of %s: %w", kind, dev, err)
				}
				for _, p := range res.Programs {
					progs = append(progs, tcProgram{Dev: dev, Kind: kind, Name: progName(p.ID), ID: p.ID})
				}
			}
			for kind, parent := range map[string]uint32{"clsact/ingress": netlink.HANDLE_MIN_INGRESS, "clsact/egress": netlink.HANDLE_MIN_EGRESS} {
				filters, err := nldump.Retry(func() ([]netlink.Filter, error) { return netlink.FilterList(l, parent) })
				if err != nil {
					continue // no clsact qdisc on this device
				}
				for _, f := range filters {
					if bf, ok := f.(*netlink.BpfFilter); ok {
						progs = append(progs, tcProgram{Dev: dev, Kind: kind, Name: progName(ebpf.ProgramID(bf.Id)), ID: ebpf.ProgramID(bf.Id)})
					}
				}
			}
		}
		return nil
	})
	return progs, err
}

// mustAttachedTC is attachedTC failing t on an error.
func mustAttachedTC(t *testing.T, st lab.State, node string) []tcProgram {
	t.Helper()
	progs, err := attachedTC(st, node)
	if err != nil {
		t.Fatal(err)
	}
	return progs
}

// progName is the program's name, or its ID where the kernel does not
// tell.
func progName(id ebpf.ProgramID) string {
	if p, err := ebpf.NewProgramFromID(id); err == nil {
		defer p.Close()
		if info, err := p.Info(); err == nil {
			return info.Name
		}
	}
	return fmt.Sprintf("prog#%d", id)
}

// fastPathAttached reports whether from_pods sits on cni0 and
// from_underlay on eth0.
func fastPathAttached(t *testing.T, st lab.State, node string) bool {
	progs, err := attachedTC(st, node)
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
