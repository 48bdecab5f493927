package lab

import (
	"errors"
	"fmt"
	"path/filepath"
)

// hgwCNIPlugin is the chained plugin that puts each pod on the endpoint
// fast path (cmd/hgw-cni); `make build` puts it next to hgw-ebpf.
const hgwCNIPlugin = "hgw-cni"

// hgwChain is how a node's conflist chains hgw-cni after bridge.
type hgwChain struct {
	dir        string // holds the hgw-cni binary
	pinRoot    string // the node agent's --bpffs-root
	attachMode string // the agent's --attach-mode, "" for its default
}

// chainsHgwCNI reports whether pods attach through bridge + hgw-cni: on
// nodes running the ebpf datapath, unless the plain conflist was asked for.
func (c *Config) chainsHgwCNI() bool { return c.Datapath == DatapathEBPF && !c.PlainBridgeCNI }

// hgwCNIDir finds the hgw-cni plugin: in the CNI path, else in the bin dir.
func (c *Config) hgwCNIDir() (string, error) {
	var errs []error
	for _, dir := range []string{c.CNIPath, c.BinDir} {
		err := checkExecutable(filepath.Join(dir, hgwCNIPlugin))
		if err == nil {
			return dir, nil
		}
		errs = append(errs, err)
	}
	return "", fmt.Errorf("CNI plugin %s (run `make build`, or set PlainBridgeCNI): %w", hgwCNIPlugin, errors.Join(errs...))
}

// chainFor returns node n's hgw-cni link of the chain, or nil when its pods
// attach without it (flanneld nodes run no agent of ours to share pins
// with).
func (l *Lab) chainFor(n Node) *hgwChain {
	l.mu.Lock()
	defer l.mu.Unlock()
	if n.Agent != AgentHgw || l.hgwCNIDir == "" || !l.cfg.chainsHgwCNI() {
		return nil
	}
	return &hgwChain{dir: l.hgwCNIDir, pinRoot: n.PinRoot, attachMode: l.cfg.AttachMode}
}

// conf is the plugin's entry in the conflist; its attachment records stay
// in the node's directory, so that `down` leaves nothing in /run.
func (h *hgwChain) conf(nodeDir string) map[string]any {
	c := map[string]any{"type": hgwCNIPlugin, "bpffsRoot": h.pinRoot, "dataDir": nodeDir + "/hgw-cni"}
	if h.attachMode != "" {
		c["attachMode"] = h.attachMode
	}
	return c
}
