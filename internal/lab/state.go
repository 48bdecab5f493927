package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// DefaultStateRoot holds one state directory per lab prefix.
const DefaultStateRoot = "/run/hgw-lab"

const stateFileName = "state.json"

// State is what a running lab records on disk so that other processes
// (`hgw-lab status`, `exec`, `ping`, `down`) can find its parts.
type State struct {
	Prefix    string    `json:"prefix"`
	Dir       string    `json:"dir"`
	PID       int       `json:"pid"` // the process serving etcd and supervising the agents
	PIDStart  uint64    `json:"pid_start"`
	Started   time.Time `json:"started"`
	Ready     bool      `json:"ready"`
	Datapath  string    `json:"datapath"`
	DualStack bool      `json:"dual_stack,omitempty"` // IPv6 too (Config.DualStack)
	BinDir    string    `json:"bin_dir"`
	PinRoot   string    `json:"pin_root"` // every node pins below it
	Underlay  string    `json:"underlay_netns"`
	Internet  string    `json:"internet_netns,omitempty"` // Config.Internet's namespace
	Etcd      string    `json:"etcd_endpoint"`
	EtcdKeys  string    `json:"etcd_prefix"`
	Registry  string    `json:"registry,omitempty"` // RegistryEtcd or RegistryKube
	// A kube lab's API server URL (inside the lab) and its admin's
	// kubeconfig.
	KubeAPI    string `json:"kube_api,omitempty"`
	Kubeconfig string `json:"kubeconfig,omitempty"`
	Nodes      []Node `json:"nodes"`
	Pods       []Pod  `json:"pods"`
	NextIndex  int    `json:"next_node_index"`
	// Services are the ones kube-proxy's rules in the nodes implement
	// (Config.KubeProxy), synthetic ones left out.
	Services []ServicePort `json:"services,omitempty"`
}

// Node is one lab node: a network namespace with eth0 on the underlay.
type Node struct {
	Name       string `json:"name"` // also the netns name
	Index      int    `json:"index"`
	IP         string `json:"ip"`
	IP6        string `json:"ip6,omitempty"` // eth0's IPv6 address in a dual-stack lab
	PinRoot    string `json:"pin_root"`
	SubnetFile string `json:"subnet_file"`
	Agent      string `json:"agent,omitempty"` // AgentHgw, AgentFlanneld, or "" when the lab stands in for one
	AgentLog   string `json:"agent_log,omitempty"`
	AgentPID   int    `json:"agent_pid,omitempty"`
	AgentStart uint64 `json:"agent_start,omitempty"` // start time (clock ticks) against PID reuse
	Subnet     string `json:"subnet,omitempty"`      // from the subnet file, once written
	Subnet6    string `json:"subnet6,omitempty"`     // the IPv6 one, in a dual-stack lab
}

// Pod is one pod namespace attached to its node's cni0 by the CNI plugins.
type Pod struct {
	Name string `json:"name"` // also the netns name
	Node string `json:"node"`
	IP   string `json:"ip"`
	IP6  string `json:"ip6,omitempty"` // in a dual-stack lab
}

// Addrs is the node's eth0 address, and its IPv6 one after a comma in a
// dual-stack lab.
func (n Node) Addrs() string { return both(n.IP, n.IP6) }

// Subnets is the node's pod subnet, and its IPv6 one after a comma in a
// dual-stack lab.
func (n Node) Subnets() string { return both(n.Subnet, n.Subnet6) }

// Addrs is the pod's address, and its IPv6 one after a comma in a
// dual-stack lab.
func (p Pod) Addrs() string { return both(p.IP, p.IP6) }

func both(v4, v6 string) string {
	if v6 == "" {
		return v4
	}
	return v4 + "," + v6
}

// StateDir is the state directory of the lab with this prefix.
func StateDir(root, prefix string) string {
	if root == "" {
		root = DefaultStateRoot
	}
	return filepath.Join(root, prefix)
}

// ErrNoLab means no state file exists for the prefix.
var ErrNoLab = errors.New("no lab is running with this prefix")

// LoadState reads the state file of the lab with this prefix.
func LoadState(root, prefix string) (*State, error) {
	path := filepath.Join(StateDir(root, prefix), stateFileName)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w (no %s)", ErrNoLab, path)
	}
	if err != nil {
		return nil, fmt.Errorf("read lab state: %w", err)
	}
	var st State
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("parse lab state %s: %w", path, err)
	}
	return &st, nil
}

// save writes the state file atomically: readers never see half a file.
func (s State) save() error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("encode lab state: %w", err)
	}
	path := filepath.Join(s.Dir, stateFileName)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write lab state: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write lab state: %w", err)
	}
	return nil
}

// Node returns the node with this name.
func (s State) Node(name string) (Node, bool) {
	for _, n := range s.Nodes {
		if n.Name == name {
			return n, true
		}
	}
	return Node{}, false
}

// Pod returns the pod with this name.
func (s State) Pod(name string) (Pod, bool) {
	for _, p := range s.Pods {
		if p.Name == name {
			return p, true
		}
	}
	return Pod{}, false
}

// PodsOf lists the pods of one node.
func (s State) PodsOf(node string) []Pod {
	var out []Pod
	for _, p := range s.Pods {
		if p.Node == node {
			out = append(out, p)
		}
	}
	return out
}

// Alive reports whether the process that wrote the state still runs.
func (s State) Alive() bool {
	return running(s.PID, s.PIDStart)
}

func (s State) clone() State {
	c := s
	c.Nodes = append([]Node(nil), s.Nodes...)
	c.Pods = append([]Pod(nil), s.Pods...)
	c.Services = append([]ServicePort(nil), s.Services...)
	return c
}
