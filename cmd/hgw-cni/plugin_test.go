package main

// The plugin as a container runtime runs it: chained after the real bridge
// and host-local plugins by the CNI library, in a throw-away node namespace,
// with a pod namespace to attach.

import (
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/hgw-ebpf/hgw-ebpf/pkg/datapath"
	"github.com/hgw-ebpf/hgw-ebpf/pkg/testutil"
)

// pluginDir holds a fresh build of hgw-cni next to the bridge and
// host-local plugins of `make deps`.
func pluginDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	out, err := exec.Command("go", "build", "-o", filepath.Join(dir, "hgw-cni"), ".").CombinedOutput()
	if err != nil {
		t.Fatalf("build hgw-cni: %v\n%s", err, out)
	}
	cniPath := os.Getenv("CNI_PATH")
	if cniPath == "" {
		cniPath = filepath.Join("..", "..", "bin", "cni")
	}
	for _, p := range []string{"bridge", "host-local"} {
		b, err := os.ReadFile(filepath.Join(cniPath, p))
		if err != nil {
			t.Fatalf("CNI plugin %s (run `make deps`): %v", p, err)
		}
		if err := os.WriteFile(filepath.Join(dir, p), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

type cniEnv struct {
	cni     *libcni.CNIConfig
	chain   *libcni.NetworkConfigList
	alone   *libcni.NetworkConfigList // hgw-cni without bridge before it
	node    netns.NsHandle
	rt      *libcni.RuntimeConf
	pinRoot string
}

func newCNIEnv(t *testing.T) *cniEnv {
	t.Helper()
	testutil.RequireRoot(t)
	dir := pluginDir(t)
	_, node := testutil.NetNS(t, "cni-node")
	podName, _ := testutil.NetNS(t, "cni-pod")
	pinRoot := filepath.Join("/sys/fs/bpf", "hgwt-cni-"+testutil.RandHex(t, 4))
	t.Cleanup(func() {
		testutil.Do(t, node, func() {
			if err := datapath.Cleanup(pinRoot); err != nil {
				t.Errorf("cleanup %s: %v", pinRoot, err)
			}
		})
	})
	hgw := map[string]any{"type": "hgw-cni", "bpffsRoot": pinRoot}
	chain := map[string]any{"cniVersion": "1.0.0", "name": "hgwt", "plugins": []any{
		map[string]any{
			"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
			"ipam": map[string]any{"type": "host-local", "dataDir": t.TempDir(),
				"ranges": [][]map[string]string{{{"subnet": "10.244.1.0/24", "gateway": "10.244.1.1"}}}},
		},
		hgw,
	}}
	alone := map[string]any{"cniVersion": "1.0.0", "name": "hgwt-alone", "plugins": []any{hgw}}
	return &cniEnv{
		cni:     libcni.NewCNIConfigWithCacheDir([]string{dir}, t.TempDir(), nil),
		chain:   confList(t, chain),
		alone:   confList(t, alone),
		node:    node,
		rt:      &libcni.RuntimeConf{ContainerID: "hgwt-pod", NetNS: "/run/netns/" + podName, IfName: "eth0"},
		pinRoot: pinRoot,
	}
}

func confList(t *testing.T, v any) *libcni.NetworkConfigList {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	l, err := libcni.ConfListFromBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// in runs fn inside the node namespace, where a runtime would run the
// plugins (the fork happens on the locked thread).
func (e *cniEnv) in(t *testing.T, fn func()) {
	t.Helper()
	testutil.Do(t, e.node, fn)
}

func (e *cniEnv) endpoint(t *testing.T, ip netip.Addr) (datapath.Endpoint, bool) {
	t.Helper()
	maps, err := datapath.OpenPinned(e.pinRoot)
	if err != nil {
		t.Fatal(err)
	}
	defer maps.Close()
	ep, ok, err := maps.Endpoints().Get(ip)
	if err != nil {
		t.Fatal(err)
	}
	return ep, ok
}

func TestPluginAddCheckDel(t *testing.T) {
	e := newCNIEnv(t)
	ctx := context.Background()

	var res *types100.Result
	e.in(t, func() {
		r, err := e.cni.AddNetworkList(ctx, e.chain, e.rt)
		if err != nil {
			t.Fatalf("ADD: %v", err)
		}
		if res, err = types100.NewResultFromResult(r); err != nil {
			t.Fatal(err)
		}
	})
	// The result is the bridge plugin's, passed on unchanged.
	var podIP netip.Addr
	var podMAC, vethName string
	for _, ipc := range res.IPs {
		podIP, _ = netip.AddrFromSlice(ipc.Address.IP.To4())
	}
	for _, iface := range res.Interfaces {
		if iface.Sandbox != "" {
			podMAC = iface.Mac
		} else if iface.Name != "cni0" {
			vethName = iface.Name
		}
	}
	if !podIP.IsValid() || podMAC == "" || vethName == "" {
		t.Fatalf("result lacks the pod's address, MAC or veth: %+v", res)
	}

	var veth, br netlink.Link
	e.in(t, func() {
		var err error
		if veth, err = netlink.LinkByName(vethName); err != nil {
			t.Fatal(err)
		}
		if br, err = netlink.LinkByName("cni0"); err != nil {
			t.Fatal(err)
		}
	})
	ep, ok := e.endpoint(t, podIP)
	if !ok {
		t.Fatalf("ADD wrote no endpoint for %s", podIP)
	}
	if int(ep.Ifindex) != veth.Attrs().Index || ep.PodMAC.String() != podMAC || ep.GatewayMAC.String() != br.Attrs().HardwareAddr.String() {
		t.Errorf("endpoint %+v, want ifindex %d, pod MAC %s, gateway MAC %s", ep, veth.Attrs().Index, podMAC, br.Attrs().HardwareAddr)
	}
	e.in(t, func() {
		if !attached(t, e.pinRoot, vethName) {
			t.Errorf("from_pods not attached to %s after ADD", vethName)
		}
		if err := e.cni.CheckNetworkList(ctx, e.chain, e.rt); err != nil {
			t.Errorf("CHECK after ADD: %v", err)
		}
	})

	// CHECK notices a missing entry.
	maps, err := datapath.OpenPinned(e.pinRoot)
	if err != nil {
		t.Fatal(err)
	}
	if err := maps.Endpoints().Delete(podIP); err != nil {
		t.Fatal(err)
	}
	maps.Close()
	e.in(t, func() {
		if err := e.cni.CheckNetworkList(ctx, e.chain, e.rt); err == nil || !strings.Contains(err.Error(), "missing") {
			t.Errorf("CHECK with the entry gone = %v, want a missing-endpoint error", err)
		}
	})

	// DEL removes entry and attachment; a second DEL is fine.
	maps, err = datapath.OpenPinned(e.pinRoot)
	if err != nil {
		t.Fatal(err)
	}
	if err := maps.Endpoints().Put(ep); err != nil {
		t.Fatal(err)
	}
	maps.Close()
	e.in(t, func() {
		if err := e.cni.DelNetworkList(ctx, e.chain, e.rt); err != nil {
			t.Fatalf("DEL: %v", err)
		}
		if attached(t, e.pinRoot, vethName) {
			t.Errorf("from_pods still attached to %s after DEL", vethName)
		}
		if err := e.cni.DelNetworkList(ctx, e.chain, e.rt); err != nil {
			t.Errorf("second DEL: %v", err)
		}
	})
	if _, ok := e.endpoint(t, podIP); ok {
		t.Errorf("endpoint %s still there after DEL", podIP)
	}
	if _, err := os.Stat(filepath.Join(e.pinRoot, "links", "from_pods@"+vethName)); err == nil {
		t.Errorf("link pin of %s left after DEL", vethName)
	}
}

// Not chained after a plugin that made an interface, ADD has nothing to
// read and says so; DEL without a previous result succeeds.
func TestPluginNeedsAPreviousResult(t *testing.T) {
	e := newCNIEnv(t)
	ctx := context.Background()
	e.in(t, func() {
		_, err := e.cni.AddNetworkList(ctx, e.alone, e.rt)
		if err == nil || !strings.Contains(err.Error(), "prevResult") {
			t.Errorf("ADD without prevResult = %v, want an error naming prevResult", err)
		}
		if err := e.cni.DelNetworkList(ctx, e.alone, e.rt); err != nil {
			t.Errorf("DEL without prevResult: %v", err)
		}
	})
}

func attached(t *testing.T, root, dev string) bool {
	t.Helper()
	atts, err := datapath.Attachments(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range atts {
		if a.Dev == dev && a.Program == datapath.FromPods && a.Ifindex != 0 {
			return true
		}
	}
	return false
}
