package lab

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Where the real flannel binaries are looked for besides ../shared/tools.
const (
	FlanneldEnv   = "FLANNELD"    // a directory holding flanneld
	FlannelCNIEnv = "FLANNEL_CNI" // a directory holding the flannel CNI plugin
)

// FlannelTools finds the real flanneld and the directory of the flannel
// CNI plugin: in the directories $FLANNELD and $FLANNEL_CNI name, else in
// ../shared/tools beside projectRoot, where the project keeps them (they
// are not served by the Go module proxy). The error says what is missing
// and where it was looked for.
func FlannelTools(projectRoot string) (flanneld, cniDir string, err error) {
	shared := filepath.Join(projectRoot, "..", "shared", "tools")
	find := func(env, name string) (string, error) {
		dirs := []string{shared}
		if d := os.Getenv(env); d != "" {
			dirs = []string{d}
		}
		for _, d := range dirs {
			if checkExecutable(filepath.Join(d, name)) == nil {
				return filepath.Abs(d)
			}
		}
		return "", fmt.Errorf("no executable %s in %v (set $%s to its directory)", name, dirs, env)
	}
	dir, err1 := find(FlanneldEnv, "flanneld")
	cniDir, err2 := find(FlannelCNIEnv, flannelCNIPlugin)
	if err := errors.Join(err1, err2); err != nil {
		return "", "", err
	}
	return filepath.Join(dir, "flanneld"), cniDir, nil
}

// checkFlannel validates the options that run the real flannel binaries.
func (c *Config) checkFlannel() error {
	if len(c.FlanneldNodes) > 0 && c.Flanneld == "" {
		return fmt.Errorf("flanneld nodes %v: no flanneld binary given", c.FlanneldNodes)
	}
	if c.Flanneld != "" {
		if c.Datapath == DatapathStatic {
			return fmt.Errorf("flanneld: a %s lab runs no agents", DatapathStatic)
		}
		var err error
		if c.Flanneld, err = filepath.Abs(c.Flanneld); err != nil {
			return fmt.Errorf("flanneld binary: %w", err)
		}
		if err := checkExecutable(c.Flanneld); err != nil {
			return fmt.Errorf("flanneld binary: %w", err)
		}
	}
	for _, k := range c.FlanneldNodes {
		if k < 1 || k > c.Nodes {
			return fmt.Errorf("flanneld node %d: want 1..%d", k, c.Nodes)
		}
	}
	if c.FlannelCNI != "" {
		var err error
		if c.FlannelCNI, err = filepath.Abs(c.FlannelCNI); err != nil {
			return fmt.Errorf("flannel CNI dir: %w", err)
		}
		if err := checkExecutable(filepath.Join(c.FlannelCNI, flannelCNIPlugin)); err != nil {
			return fmt.Errorf("flannel CNI plugin: %w", err)
		}
	}
	return nil
}

// flanneldArgs run flanneld as kube-flannel's manifest does (in kube
// labs with --kube-subnet-mgr, else against the lab's etcd): host-gw comes
// from the network config.
func (l *Lab) flanneldArgs(n Node) []string {
	args := append(l.registryArgs(),
		"--iface", nodeUplink,
		"--public-ip", n.IP,
		"--subnet-file", n.SubnetFile,
	)
	if n.IP6 != "" {
		args = append(args, "--public-ipv6", n.IP6)
	}
	if l.cfg.IPMasq {
		args = append(args, "--ip-masq")
	}
	return args
}
