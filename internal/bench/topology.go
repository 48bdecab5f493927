package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"

	"github.com/hgw-ebpf/hgw-ebpf/internal/lab"
)

// The datapaths a run compares.
const (
	DatapathHost   = "host"   // node eth0 to node eth0: the physical limit of this setup
	DatapathRoutes = "routes" // pod to pod, `hgw-ebpf run --datapath routes` (plain host-gw)
	DatapathEBPF   = "ebpf"   // pod to pod, `hgw-ebpf run` (this project)
	DatapathVXLAN  = "vxlan"  // pod to pod over flannel.1, as flannel's vxlan backend sets it up
	// DatapathEBPFNoCT is ebpf with the conntrack check off
	// (--unsafe-ignore-conntrack): what the check costs.
	DatapathEBPFNoCT = "ebpf-noct"
	// host, routes and ebpf over IPv6, in the same (then dual-stack)
	// labs: their ratios are to host6 and routes6.
	DatapathHost6   = "host6"
	DatapathRoutes6 = "routes6"
	DatapathEBPF6   = "ebpf6"
)

// AllDatapaths is the default set, in table order.
var AllDatapaths = []string{DatapathHost, DatapathRoutes, DatapathEBPF, DatapathEBPFNoCT, DatapathVXLAN,
	DatapathHost6, DatapathRoutes6, DatapathEBPF6}

// ipv4Of is the IPv4 datapath each IPv6 one measures over IPv6.
var ipv4Of = map[string]string{DatapathHost6: DatapathHost, DatapathRoutes6: DatapathRoutes, DatapathEBPF6: DatapathEBPF}

// family is a datapath's IPv4 twin (itself if it is one) and whether it
// runs over IPv6.
func family(dp string) (ipv4 string, ipv6 bool) {
	if v4, ok := ipv4Of[dp]; ok {
		return v4, true
	}
	return dp, false
}

// baselines are the datapaths a datapath's ratios are to: host and
// routes of its family.
func baselines(dp string) (host, routes string) {
	if _, v6 := family(dp); v6 {
		return DatapathHost6, DatapathRoutes6
	}
	return DatapathHost, DatapathRoutes
}

// labRole names one of the labs a run brings up; each lab has its own
// underlay namespace, so their 198.18.0.x addresses never meet.
type labRole struct {
	suffix    string // appended to the base prefix: hgwb + r = hgwbr
	datapath  string // the lab's datapath
	agentFlag string // one extra flag for the lab's agents, if any
}

var (
	routesLab   = labRole{"r", lab.DatapathRoutes, ""}
	ebpfLab     = labRole{"e", lab.DatapathEBPF, ""}
	ebpfNoCTLab = labRole{"n", lab.DatapathEBPF, "--unsafe-ignore-conntrack"}
	vxlanLab    = labRole{"x", lab.DatapathStatic, ""} // static routes, then replaced by flannel.1 (vxlan.go)
	allLabs     = []labRole{routesLab, ebpfLab, ebpfNoCTLab, vxlanLab}
)

// roleOf is the lab a datapath is measured in: host runs between the
// routes lab's nodes, whose eth0s carry no pod traffic at that moment.
func roleOf(datapath string) labRole {
	switch datapath, _ = family(datapath); datapath {
	case DatapathEBPF:
		return ebpfLab
	case DatapathEBPFNoCT:
		return ebpfNoCTLab
	case DatapathVXLAN:
		return vxlanLab
	default:
		return routesLab
	}
}

// path is one datapath's client and server: namespaces and the server's
// address as the client sees it.
type path struct {
	Datapath string
	St       lab.State
	Client   string // netns
	Server   string // netns
	ServerIP string
	Nodes    []string // the namespaces that carry the kube profile's rules
}

// testbed is the set of running labs and the path of every datapath.
type testbed struct {
	labs  map[string]*lab.Lab // by prefix
	paths []path
	notes []string
}

// labConfig is what every bench lab has in common: two nodes, one pod
// each; dual-stack when an IPv6 datapath is measured in it.
func (o *Options) labConfig(role labRole) lab.Config {
	cfg := lab.Config{
		Prefix: o.Prefix + role.suffix, StateRoot: o.StateRoot, BinDir: o.BinDir, CNIPath: o.CNIPath,
		Nodes: 2, PodsPerNode: 1, Datapath: role.datapath, Log: o.Log,
	}
	for _, dp := range o.Datapaths {
		if _, v6 := family(dp); v6 && roleOf(dp) == role {
			cfg.DualStack = true
		}
	}
	if role.agentFlag != "" {
		cfg.AgentArgs = []string{role.agentFlag}
	}
	return cfg
}

// removeLeftovers tears down every bench lab of this base prefix, also
// those of datapaths this run does not measure (a crashed earlier run).
func (o *Options) removeLeftovers(ctx context.Context) error {
	var errs []error
	for _, role := range allLabs {
		errs = append(errs, lab.Down(ctx, lab.DownOptions{
			Prefix: o.Prefix + role.suffix, StateRoot: o.StateRoot, BinDir: o.BinDir, Log: o.Log,
		}))
	}
	return errors.Join(errs...)
}

// setUp brings up the labs the chosen datapaths need and resolves each
// datapath's endpoints. On error the caller still closes what exists.
func setUp(ctx context.Context, o *Options, tb *testbed, progress func(string, ...any)) error {
	var roles []labRole
	for _, dp := range o.Datapaths {
		if r := roleOf(dp); !slices.Contains(roles, r) {
			roles = append(roles, r)
		}
	}
	states := map[labRole]lab.State{}
	for _, role := range roles {
		cfg := o.labConfig(role)
		stack := ""
		if cfg.DualStack {
			stack = " (dual stack)"
		}
		progress("lab %s: bringing up 2 nodes x 1 pod, datapath %s%s %s", cfg.Prefix, cfg.Datapath, stack, role.agentFlag)
		l, err := lab.Up(ctx, cfg)
		if err != nil {
			return fmt.Errorf("lab %s: %w", cfg.Prefix, err)
		}
		tb.labs[cfg.Prefix] = l
		states[role] = l.State()
		if role == vxlanLab {
			if err := setUpVXLAN(states[role], o.Log); err != nil {
				return fmt.Errorf("lab %s: vxlan: %w", cfg.Prefix, err)
			}
		}
	}
	for _, dp := range o.Datapaths {
		st := states[roleOf(dp)]
		if len(st.Nodes) < 2 || len(st.PodsOf(st.Nodes[0].Name)) < 1 || len(st.PodsOf(st.Nodes[1].Name)) < 1 {
			return fmt.Errorf("lab %s: want 2 nodes with a pod each", st.Prefix)
		}
		n1, n2 := st.Nodes[0], st.Nodes[1]
		p := path{Datapath: dp, St: st, Nodes: []string{n1.Name, n2.Name}}
		v4, v6 := family(dp)
		if v4 == DatapathHost {
			p.Client, p.Server, p.ServerIP = n1.Name, n2.Name, pick(v6, n2.IP, n2.IP6)
		} else {
			c, s := st.PodsOf(n1.Name)[0], st.PodsOf(n2.Name)[0]
			p.Client, p.Server, p.ServerIP = c.Name, s.Name, pick(v6, s.IP, s.IP6)
		}
		if out, err := st.Output(ctx, p.Client, "ping", "-c", "1", "-W", "2", p.ServerIP); err != nil {
			return fmt.Errorf("%s: %s cannot reach %s: %w\n%s", dp, p.Client, p.ServerIP, err, out)
		}
		o.Log.Info("path ready", "datapath", dp, "client", p.Client, "server", p.Server, "addr", p.ServerIP)
		tb.paths = append(tb.paths, p)
	}
	return nil
}

func pick(v6 bool, ip4, ip6 string) string {
	if v6 {
		return ip6
	}
	return ip4
}

// close removes every lab, whatever happened.
func (tb *testbed) close() error {
	var errs []error
	for prefix, l := range tb.labs {
		if err := l.Close(); err != nil {
			errs = append(errs, fmt.Errorf("remove lab %s: %w", prefix, err))
		}
	}
	return errors.Join(errs...)
}

func newTestbed() *testbed { return &testbed{labs: map[string]*lab.Lab{}} }

// discard is a logger for callers that pass none.
func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }
