package lab

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	types100 "github.com/containernetworking/cni/pkg/types/100"

	"github.com/hgw-ebpf/hgw-ebpf/pkg/namedns"
)

// subnetEnv is the part of a flanneld subnet file the pods need.
type subnetEnv struct {
	Network netip.Prefix // FLANNEL_NETWORK
	Subnet  netip.Prefix // FLANNEL_SUBNET: the gateway address with the subnet's length
	MTU     int          // FLANNEL_MTU
	IPMasq  bool         // FLANNEL_IPMASQ
}

// readSubnetEnv parses a subnet file in flanneld's format.
func readSubnetEnv(path string) (subnetEnv, error) {
	f, err := os.Open(path)
	if err != nil {
		return subnetEnv{}, err
	}
	defer f.Close()
	var env subnetEnv
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), "=")
		if !ok {
			continue
		}
		switch k {
		case "FLANNEL_NETWORK":
			env.Network, err = netip.ParsePrefix(v)
		case "FLANNEL_SUBNET":
			env.Subnet, err = netip.ParsePrefix(v)
		case "FLANNEL_MTU":
			env.MTU, err = strconv.Atoi(v)
		case "FLANNEL_IPMASQ":
			env.IPMasq, err = strconv.ParseBool(v)
		}
		if err != nil {
			return subnetEnv{}, fmt.Errorf("%s: %s: %w", path, k, err)
		}
	}
	if err := sc.Err(); err != nil {
		return subnetEnv{}, fmt.Errorf("read %s: %w", path, err)
	}
	if !env.Subnet.IsValid() || env.MTU == 0 {
		return subnetEnv{}, fmt.Errorf("%s: FLANNEL_SUBNET or FLANNEL_MTU missing", path)
	}
	return env, nil
}

// writeSubnetEnv writes a subnet file as flanneld does (where the lab
// stands in for an agent, or for what flanneld left behind).
func writeSubnetEnv(path string, env subnetEnv) error {
	s := fmt.Sprintf("FLANNEL_NETWORK=%s\nFLANNEL_SUBNET=%s\nFLANNEL_MTU=%d\nFLANNEL_IPMASQ=%t\n",
		env.Network, env.Subnet, env.MTU, env.IPMasq)
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		return fmt.Errorf("write subnet file: %w", err)
	}
	return nil
}

// waitSubnetEnv waits until the agent has written a complete subnet file
// (in place of old, the one it found, if not nil: both flanneld and
// hgw-ebpf replace the file by a rename, and only once they are ready).
func waitSubnetEnv(ctx context.Context, path string, old os.FileInfo, timeout time.Duration) (subnetEnv, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		env, err := readSubnetEnv(path)
		if err == nil && old != nil {
			if fi, serr := os.Stat(path); serr == nil && os.SameFile(fi, old) && fi.ModTime().Equal(old.ModTime()) {
				err = errors.New("still the file the agent found")
			}
		}
		if err == nil {
			return env, nil
		}
		select {
		case <-ctx.Done():
			return subnetEnv{}, fmt.Errorf("wait for subnet file %s: %w (last: %v)", path, ctx.Err(), err)
		case <-tick.C:
		}
	}
}

// cniNetwork is the pod network of one node: the real `bridge` plugin
// (cni0 as the pods' gateway, no masquerade, as flannel's CNI plugin
// delegates it) with `host-local` IPAM on the node's subnet. IPAM state goes
// under the lab's state directory, not /var/lib/cni.
type cniNetwork struct {
	cni      *libcni.CNIConfig
	conf     *libcni.NetworkConfigList
	nodeNS   string
	cacheDir string
}

// conflist says which plugins a node's conflist holds around bridge.
type conflist struct {
	flannelDir string    // if set, the flannel plugin there delegates to bridge
	bandwidth  bool      // the bandwidth plugin follows (see bandwidthPlugin)
	chain      *hgwChain // hgw-cni comes last, as CNI chaining expects
}

// newCNINetwork builds a node's conflist: bridge + host-local, or the
// flannel plugin that delegates to them (reading the node's subnet file, as
// kube-flannel's conflist does), then the plugins c chains after it.
func newCNINetwork(cniPath, nodeNS, nodeDir string, env subnetEnv, c conflist) (*cniNetwork, error) {
	paths := []string{cniPath}
	plugins := []any{map[string]any{
		"type":             "bridge",
		"bridge":           podBridge,
		"isGateway":        true,
		"isDefaultGateway": true,
		"ipMasq":           false,
		"mtu":              env.MTU,
		"ipam": map[string]any{
			"type":    "host-local",
			"ranges":  [][]map[string]string{{{"subnet": env.Subnet.Masked().String(), "gateway": env.Subnet.Addr().String()}}},
			"dataDir": nodeDir + "/ipam",
		},
	}}
	if c.flannelDir != "" {
		// kube-flannel's delegate; the plugin adds bridge's ipMasq (NOT
		// FLANNEL_IPMASQ), mtu, isGateway and the host-local ranges. Its
		// state and IPAM's stay in the lab's state directory.
		plugins[0] = map[string]any{
			"type":       flannelCNIPlugin,
			"subnetFile": nodeDir + "/subnet.env",
			"dataDir":    nodeDir + "/flannel",
			"ipam":       map[string]any{"dataDir": nodeDir + "/ipam"},
			"delegate":   map[string]any{"bridge": podBridge, "hairpinMode": true, "isDefaultGateway": true},
		}
		paths = append(paths, c.flannelDir)
	}
	if c.bandwidth {
		plugins = append(plugins, bandwidthConf())
	}
	if c.chain != nil {
		plugins = append(plugins, c.chain.conf(nodeDir))
		paths = append(paths, c.chain.dir)
	}
	conf := map[string]any{"cniVersion": "1.0.0", "name": "hgw-lab", "plugins": plugins}
	b, err := json.Marshal(conf)
	if err != nil {
		return nil, fmt.Errorf("encode CNI config: %w", err)
	}
	list, err := libcni.ConfListFromBytes(b)
	if err != nil {
		return nil, fmt.Errorf("parse CNI config: %w", err)
	}
	cacheDir := nodeDir + "/cni-cache"
	// The plugins' stderr (the flannel plugin prints its delegate's config
	// there on every ADD) goes to the node's cni.log, not the lab's output.
	exec := &invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: appendFile(nodeDir + "/cni.log")}}
	return &cniNetwork{
		cni:      libcni.NewCNIConfigWithCacheDir(paths, cacheDir, exec),
		conf:     list,
		nodeNS:   nodeNS,
		cacheDir: cacheDir,
	}, nil
}

// attach runs the plugins' ADD for a pod namespace and returns its IPv4.
// The plugins are forked from a thread inside the node namespace, as a
// container runtime on that node would run them, so cni0 and the host end
// of the pod's veth are created there.
func (n *cniNetwork) attach(ctx context.Context, pod string, capArgs map[string]any) (netip.Addr, error) {
	rt := &libcni.RuntimeConf{ContainerID: pod, NetNS: namedns.Path(pod), IfName: podIface, CapabilityArgs: capArgs}
	var res *types100.Result
	err := inNetns(n.nodeNS, func() error {
		r, err := n.cni.AddNetworkList(ctx, n.conf, rt)
		if err != nil {
			return err
		}
		res, err = types100.NewResultFromResult(r)
		return err
	})
	if err != nil {
		return netip.Addr{}, fmt.Errorf("CNI ADD %s on %s: %w", pod, n.nodeNS, err)
	}
	for _, ipc := range res.IPs {
		if a, ok := netip.AddrFromSlice(ipc.Address.IP.To4()); ok && ipc.Address.IP.To4() != nil {
			return a, nil
		}
	}
	return netip.Addr{}, errors.New("CNI ADD " + pod + ": result has no IPv4 address")
}

// appendFile is a writer that appends to a file, opened for each write: a
// log that holds no descriptor between the rare plugin runs.
type appendFile string

func (f appendFile) Write(p []byte) (int, error) {
	fh, err := os.OpenFile(string(f), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return 0, err
	}
	defer fh.Close()
	return fh.Write(p)
}
