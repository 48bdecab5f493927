package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	types100 "github.com/containernetworking/cni/pkg/types/100"

	"github.com/hgw-ebpf/hgw-ebpf/internal/namedns"
	"github.com/hgw-ebpf/hgw-ebpf/internal/subnetfile"
)

// cniNetwork is the pod network of one node: the real `bridge` plugin
// (cni0 as the pods' gateway, no masquerade, as flannel's CNI plugin
// delegates it) with `host-local` IPAM on the node's subnet, and on its
// IPv6 subnet as a second range, as the flannel plugin makes it from the
// subnet file's IPv6 lines. IPAM state goes under the lab's state
// directory, not /var/lib/cni.
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
func newCNINetwork(cniPath, nodeNS, nodeDir string, env subnetfile.Env, c conflist) (*cniNetwork, error) {
	paths := []string{cniPath}
	ranges := [][]map[string]string{hostLocalRange(env.Subnet)}
	if env.IPv6Subnet.IsValid() {
		ranges = append(ranges, hostLocalRange(env.IPv6Subnet))
	}
	plugins := []any{map[string]any{
		"type":             "bridge",
		"bridge":           podBridge,
		"isGateway":        true,
		"isDefaultGateway": true,
		"ipMasq":           false,
		"mtu":              env.MTU,
		"ipam": map[string]any{
			"type":    "host-local",
			"ranges":  ranges,
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

// hostLocalRange is host-local's range for a subnet, its gateway the
// subnet's first address (the subnet file's, the bridge's).
func hostLocalRange(subnet netip.Prefix) []map[string]string {
	return []map[string]string{{"subnet": subnet.Masked().String(), "gateway": subnetfile.Gateway(subnet).String()}}
}

// attach runs the plugins' ADD for a pod namespace and returns its IPv4
// and, with an IPv6 range, its IPv6 address. The plugins are forked from
// a thread inside the node namespace, as a container runtime on that node
// would run them, so cni0 and the host end of the pod's veth are created
// there.
func (n *cniNetwork) attach(ctx context.Context, pod string, capArgs map[string]any) (ip4, ip6 netip.Addr, err error) {
	rt := &libcni.RuntimeConf{ContainerID: pod, NetNS: namedns.Path(pod), IfName: podIface, CapabilityArgs: capArgs}
	var res *types100.Result
	err = namedns.Do(n.nodeNS, func() error {
		r, err := n.cni.AddNetworkList(ctx, n.conf, rt)
		if err != nil {
			return err
		}
		res, err = types100.NewResultFromResult(r)
		return err
	})
	if err != nil {
		return ip4, ip6, fmt.Errorf("CNI ADD %s on %s: %w", pod, n.nodeNS, err)
	}
	for _, ipc := range res.IPs {
		a, ok := netip.AddrFromSlice(ipc.Address.IP)
		switch {
		case !ok:
		case a.Unmap().Is4() && !ip4.IsValid():
			ip4 = a.Unmap()
		case a.Is6() && !a.Is4In6() && !ip6.IsValid():
			ip6 = a
		}
	}
	if !ip4.IsValid() {
		return ip4, ip6, errors.New("CNI ADD " + pod + ": result has no IPv4 address")
	}
	return ip4, ip6, nil
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

// detach runs the plugins' DEL for a pod namespace (in reverse order, with
// the cached result, as a runtime would); running it twice is fine.
func (n *cniNetwork) detach(ctx context.Context, pod string) error {
	rt := &libcni.RuntimeConf{ContainerID: pod, NetNS: namedns.Path(pod), IfName: podIface}
	if err := namedns.Do(n.nodeNS, func() error { return n.cni.DelNetworkList(ctx, n.conf, rt) }); err != nil {
		return fmt.Errorf("CNI DEL %s on %s: %w", pod, n.nodeNS, err)
	}
	return nil
}

// check runs the plugins' CHECK for a pod namespace.
func (n *cniNetwork) check(ctx context.Context, pod string) error {
	rt := &libcni.RuntimeConf{ContainerID: pod, NetNS: namedns.Path(pod), IfName: podIface}
	if err := namedns.Do(n.nodeNS, func() error { return n.cni.CheckNetworkList(ctx, n.conf, rt) }); err != nil {
		return fmt.Errorf("CNI CHECK %s on %s: %w", pod, n.nodeNS, err)
	}
	return nil
}

// flannelCNIPlugin is the flannel CNI plugin's type and file name.
const flannelCNIPlugin = "flannel"

// setCNINetwork (re)builds node n's CNI network from its subnet file, for
// the agent it runs now.
func (l *Lab) setCNINetwork(n Node) error {
	env, err := readSubnetEnv(n.SubnetFile)
	if err != nil {
		return fmt.Errorf("node %s: %w", n.Name, err)
	}
	c := conflist{flannelDir: l.cfg.FlannelCNI, bandwidth: l.cfg.Bandwidth, chain: l.chainFor(n)}
	cni, err := newCNINetwork(l.cfg.CNIPath, n.Name, filepath.Dir(n.SubnetFile), env, c)
	if err != nil {
		return err
	}
	l.mu.Lock()
	l.cni[n.Name] = cni
	l.mu.Unlock()
	return nil
}
