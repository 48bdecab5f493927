package main

import (
	"log/slog"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/hgw-ebpf/hgw-ebpf/internal/lab"
)

// globals are the flags every verb shares.
type globals struct {
	prefix    string
	stateRoot string
	binDir    string
	verbose   bool
}

func (g *globals) logger() *slog.Logger {
	level := slog.LevelWarn
	if g.verbose {
		level = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

// defaultBinDir is the directory of this executable: `make build` puts
// hgw-lab, hgw-ebpf and cni/ side by side in bin/.
func defaultBinDir() string {
	exe, err := os.Executable()
	if err != nil {
		return "bin"
	}
	return filepath.Dir(exe)
}

// New builds the hgw-lab command tree.
func New() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:   "hgw-lab",
		Short: "A whole hgw-ebpf cluster on one machine, in network namespaces",
		Long: `hgw-lab builds a flannel host-gw cluster on this machine out of network
namespaces, all named with one prefix:

  <prefix>-ul        the underlay: bridge br0 (198.18.0.1/24) and the lab's etcd
  <prefix>-n<k>      node k: eth0 = 198.18.0.(10+k) on br0, 'hgw-ebpf run', cni0
  <prefix>-n<k>-p<j> pod j of node k, attached by the CNI bridge + host-local plugins
  <prefix>-inet      with 'up --internet': 198.18.0.254, the world outside the cluster

Nothing is added to the host's own network namespace, so no lab packet can
leave the machine. The lab's state lives in <state-dir>/<prefix>, so every
verb works from any shell while 'up' runs.`,
		Example: `  hgw-lab up --nodes 3 --pods 2 --detach
  hgw-lab ping
  hgw-lab exec n1-p1 -- ping -c 3 10.244.2.2
  hgw-lab status
  hgw-lab down`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	f := root.PersistentFlags()
	f.StringVar(&g.prefix, "prefix", lab.DefaultPrefix,
		`names the lab's namespaces, pins (/sys/fs/bpf/<prefix>) and state; "hgw" + up to 17 [a-z0-9]`)
	f.StringVar(&g.stateRoot, "state-dir", lab.DefaultStateRoot, "directory holding one state directory per lab prefix")
	f.StringVar(&g.binDir, "bin", defaultBinDir(), "directory holding hgw-ebpf (and cni/ with the CNI plugins)")
	f.BoolVarP(&g.verbose, "verbose", "v", false, "log every step")
	root.AddCommand(newUpCmd(g), newDownCmd(g), newStatusCmd(g), newExecCmd(g), newPingCmd(g), newDemoCmd(g), newBenchCmd(g))
	return root
}
