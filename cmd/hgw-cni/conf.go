package main

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/utils"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
)

// netConf is the plugin's network configuration.
type netConf struct {
	types.PluginConf
	BPFFSRoot  string `json:"bpffsRoot,omitempty"`
	AttachMode string `json:"attachMode,omitempty"`
	DataDir    string `json:"dataDir,omitempty"`
}

// defaultDataDir holds the attachment records. On tmpfs, like the pins
// they describe: both are gone after a reboot.
const defaultDataDir = "/run/hgw-cni"

// parseConf decodes stdin data and, when present, the previous plugin's
// result, converted to the 1.0 result type the plugin reads.
func parseConf(stdin []byte) (*netConf, *types100.Result, error) {
	conf := &netConf{}
	if err := json.Unmarshal(stdin, conf); err != nil {
		return nil, nil, fmt.Errorf("parse network configuration: %w", err)
	}
	if conf.BPFFSRoot == "" {
		conf.BPFFSRoot = datapath.DefaultPinRoot
	}
	if conf.DataDir == "" {
		conf.DataDir = defaultDataDir
	}
	// The network's name names its records' directory.
	if err := utils.ValidateNetworkName(conf.Name); err != nil {
		return nil, nil, err
	}
	if conf.AttachMode == "" {
		conf.AttachMode = string(datapath.ModeAuto)
	}
	if _, err := datapath.ParseMode(conf.AttachMode); err != nil {
		return nil, nil, fmt.Errorf("attachMode: %w", err)
	}
	if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
		return nil, nil, fmt.Errorf("prevResult: %w", err)
	}
	if conf.PrevResult == nil {
		return conf, nil, nil
	}
	res, err := types100.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return nil, nil, fmt.Errorf("convert prevResult: %w", err)
	}
	return conf, res, nil
}

// request is one call of the plugin: the runtime's arguments and the
// network configuration parsed from them.
type request struct {
	*skel.CmdArgs
	conf *netConf
	prev *types100.Result // the previous plugin's result, as 1.0; nil if none
}

// withConf makes verb a CNI command that parses the network configuration
// first.
func withConf(verb func(req request) error) func(*skel.CmdArgs) error {
	return func(args *skel.CmdArgs) error {
		conf, prev, err := parseConf(args.StdinData)
		if err != nil {
			return err
		}
		return verb(request{CmdArgs: args, conf: conf, prev: prev})
	}
}

var errNoPrevResult = errors.New("no prevResult: hgw-cni must be chained after the bridge plugin")
