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
	types100 "github.com/containernetworking/cni/pkg/types/100"

	"github.com/hgw-ebpf/hgw-ebpf/pkg/namedns"
)

// subnetEnv is the part of a flanneld subnet file the pods need.
type subnetEnv struct {
	Network netip.Prefix // FLANNEL_NETWORK
	Subnet  netip.Prefix // FLANNEL_SUBNET: the gateway address with the subnet's length
	MTU     int          // FLANNEL_MTU
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

// writeSubnetEnv writes a subnet file as flanneld does (datapath "static",
// where the lab stands in for the agent).
func writeSubnetEnv(path string, env subnetEnv) error {
	s := fmt.Sprintf("FLANNEL_NETWORK=%s\nFLANNEL_SUBNET=%s\nFLANNEL_MTU=%d\nFLANNEL_IPMASQ=false\n",
		env.Network, env.Subnet, env.MTU)
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		return fmt.Errorf("write subnet file: %w", err)
	}
	return nil
}

// waitSubnetEnv waits until the agent has written a complete subnet file.
func waitSubnetEnv(ctx context.Context, path string, timeout time.Duration) (subnetEnv, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		env, err := readSubnetEnv(path)
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

// newCNINetwork builds a node's conflist; with bandwidth set the bandwidth
// plugin follows bridge, and with chain set hgw-cni comes last, as CNI
// chaining expects (hgw-cni after bandwidth: see bandwidthPlugin).
func newCNINetwork(cniPath, nodeNS, nodeDir string, env subnetEnv, bandwidth bool, chain *hgwChain) (*cniNetwork, error) {
	gw := env.Subnet.Addr()
	plugins := []any{map[string]any{
		"type":             "bridge",
		"bridge":           podBridge,
		"isGateway":        true,
		"isDefaultGateway": true,
		"ipMasq":           false,
		"mtu":              env.MTU,
		"ipam": map[string]any{
			"type":    "host-local",
			"ranges":  [][]map[string]string{{{"subnet": env.Subnet.Masked().String(), "gateway": gw.String()}}},
			"dataDir": nodeDir + "/ipam",
		},
	}}
	paths := []string{cniPath}
	if bandwidth {
		plugins = append(plugins, bandwidthConf())
	}
	if chain != nil {
		plugins = append(plugins, chain.conf(nodeDir))
		paths = append(paths, chain.dir)
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
	return &cniNetwork{
		cni:      libcni.NewCNIConfigWithCacheDir(paths, cacheDir, nil),
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
