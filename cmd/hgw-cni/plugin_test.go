package main

// The plugin as a container runtime runs it: chained after the real bridge
// and host-local plugins by the CNI library, in a throw-away node namespace,
// with a pod namespace to attach.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
	"github.com/hgw-ebpf/hgw-ebpf/internal/testutil"
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
	cniPath := testutil.CNIPath()
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
	dataDir string
	plugins string // the plugin dir
	stderr  *syncBuffer
}

// syncBuffer collects the plugins' stderr (their log).
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func newCNIEnv(t *testing.T) *cniEnv {
	t.Helper()
	return newCNIEnvRanges(t, [][]map[string]string{{{"subnet": "10.244.1.0/24", "gateway": "10.244.1.1"}}})
}

// newCNIEnvRanges is newCNIEnv with host-local's ranges (one per family
// for a dual-stack pod, as the flannel CNI plugin writes them).
func newCNIEnvRanges(t *testing.T, ranges [][]map[string]string) *cniEnv {
	t.Helper()
	testutil.RequireRoot(t)
	dir := pluginDir(t)
	_, node := testutil.NetNS(t, "cni-node")
	pinRoot := filepath.Join("/sys/fs/bpf", "hgwt-cni-"+testutil.RandHex(t, 4))
	t.Cleanup(func() {
		testutil.Do(t, node, func() {
			if err := datapath.Cleanup(pinRoot); err != nil {
				t.Errorf("cleanup %s: %v", pinRoot, err)
			}
		})
	})
	dataDir := t.TempDir()
	hgw := map[string]any{"type": "hgw-cni", "bpffsRoot": pinRoot, "dataDir": dataDir}
	chain := map[string]any{"cniVersion": "1.1.0", "name": "hgwt", "plugins": []any{
		map[string]any{
			"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
			"ipam": map[string]any{"type": "host-local", "dataDir": t.TempDir(),
				"ranges": ranges},
		},
		hgw,
	}}
	alone := map[string]any{"cniVersion": "1.1.0", "name": "hgwt-alone", "plugins": []any{hgw}}
	e := &cniEnv{
		chain:   confList(t, chain),
		alone:   confList(t, alone),
		node:    node,
		pinRoot: pinRoot,
		dataDir: dataDir,
		plugins: dir,
		stderr:  &syncBuffer{},
	}
	e.cni = e.runtime(t)
	e.rt = e.newPod(t, "hgwt-pod")
	return e
}

// runtime is a container runtime's view of the plugins, with a cache of
// its own: a fresh one has lost track of every attachment.
func (e *cniEnv) runtime(t *testing.T) *libcni.CNIConfig {
	t.Helper()
	exec := &invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: e.stderr}, PluginDecoder: version.PluginDecoder{}}
	return libcni.NewCNIConfigWithCacheDir([]string{e.plugins}, t.TempDir(), exec)
}

// newPod makes a pod namespace and the runtime's description of its
// attachment.
func (e *cniEnv) newPod(t *testing.T, id string) *libcni.RuntimeConf {
	t.Helper()
	name, _ := testutil.NetNS(t, "cni-pod")
	return &libcni.RuntimeConf{ContainerID: id, NetNS: "/run/netns/" + name, IfName: "eth0"}
}

// agentRan pins the maps as the node's agent does when it starts.
func (e *cniEnv) agentRan(t *testing.T) {
	t.Helper()
	dp, err := datapath.Load(datapath.Options{PinRoot: e.pinRoot})
	if err != nil {
		t.Fatal(err)
	}
	dp.Close()
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

// withEndpoints runs fn on the endpoints map the agent pinned, failing
// the test if fn fails.
func (e *cniEnv) withEndpoints(t *testing.T, fn func(eps *datapath.EndpointMap) error) {
	t.Helper()
	maps, err := datapath.OpenPinned(e.pinRoot)
	if err != nil {
		t.Fatal(err)
	}
	defer maps.Close()
	if err := fn(maps.Endpoints()); err != nil {
		t.Fatal(err)
	}
}

func (e *cniEnv) endpoint(t *testing.T, ip netip.Addr) (ep datapath.Endpoint, ok bool) {
	t.Helper()
	e.withEndpoints(t, func(eps *datapath.EndpointMap) (err error) {
		ep, ok, err = eps.Get(ip)
		return err
	})
	return ep, ok
}

// podInfo is what the chain's result says about one pod.
type podInfo struct {
	ip   netip.Addr
	ip6  netip.Addr // dual stack only
	mac  string
	veth string // host side
}

// add runs the chain's ADD for rt and reads the result, the bridge
// plugin's, passed on unchanged.
func (e *cniEnv) add(t *testing.T, rt *libcni.RuntimeConf) podInfo {
	t.Helper()
	var res *types100.Result
	e.in(t, func() {
		r, err := e.cni.AddNetworkList(context.Background(), e.chain, rt)
		if err != nil {
			t.Fatalf("ADD %s: %v", rt.ContainerID, err)
		}
		if res, err = types100.NewResultFromResult(r); err != nil {
			t.Fatal(err)
		}
	})
	var p podInfo
	for _, ipc := range res.IPs {
		if a, ok := netip.AddrFromSlice(ipc.Address.IP); ok {
			if a = a.Unmap(); a.Is4() {
				p.ip = a
			} else {
				p.ip6 = a
			}
		}
	}
	for _, iface := range res.Interfaces {
		if iface.Sandbox != "" {
			p.mac = iface.Mac
		} else if iface.Name != "cni0" {
			p.veth = iface.Name
		}
	}
	if !p.ip.IsValid() || p.mac == "" || p.veth == "" {
		t.Fatalf("result lacks the pod's address, MAC or veth: %+v", res)
	}
	return p
}

func TestPluginAddCheckDel(t *testing.T) {
	e := newCNIEnv(t)
	e.agentRan(t)
	ctx := context.Background()

	p := e.add(t, e.rt)
	podIP, podMAC, vethName := p.ip, p.mac, p.veth

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
	e.withEndpoints(t, func(eps *datapath.EndpointMap) error { return eps.Delete(podIP) })
	e.in(t, func() {
		if err := e.cni.CheckNetworkList(ctx, e.chain, e.rt); err == nil || !strings.Contains(err.Error(), "missing") {
			t.Errorf("CHECK with the entry gone = %v, want a missing-endpoint error", err)
		}
	})

	// DEL removes entry and attachment; a second DEL is fine.
	e.withEndpoints(t, func(eps *datapath.EndpointMap) error { return eps.Put(ep) })
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

// A dual-stack pod (host-local with an IPv4 and an IPv6 range) gets an
// endpoint entry for each address, on the same veth; DEL removes both.
func TestPluginDualStackPod(t *testing.T) {
	e := newCNIEnvRanges(t, [][]map[string]string{
		{{"subnet": "10.244.1.0/24", "gateway": "10.244.1.1"}},
		{{"subnet": "fd00:10:244:1::/64", "gateway": "fd00:10:244:1::1"}},
	})
	e.agentRan(t)
	ctx := context.Background()
	p := e.add(t, e.rt)
	if !p.ip6.Is6() || !p.ip.Is4() {
		t.Fatalf("the bridge plugin's result has no address of each family: %+v", p)
	}
	var eps []datapath.Endpoint
	for _, ip := range []netip.Addr{p.ip, p.ip6} {
		ep, ok := e.endpoint(t, ip)
		if !ok {
			t.Fatalf("ADD wrote no endpoint for %s", ip)
		}
		if ep.PodMAC.String() != p.mac {
			t.Errorf("endpoint %s has pod MAC %s, want %s", ip, ep.PodMAC, p.mac)
		}
		eps = append(eps, ep)
	}
	if eps[0].Ifindex != eps[1].Ifindex || eps[0].GatewayMAC.String() != eps[1].GatewayMAC.String() {
		t.Errorf("the two entries differ beyond their address: %+v, %+v", eps[0], eps[1])
	}
	e.in(t, func() {
		if err := e.cni.CheckNetworkList(ctx, e.chain, e.rt); err != nil {
			t.Errorf("CHECK after ADD: %v", err)
		}
		if err := e.cni.DelNetworkList(ctx, e.chain, e.rt); err != nil {
			t.Fatalf("DEL: %v", err)
		}
	})
	for _, ip := range []netip.Addr{p.ip, p.ip6} {
		if _, ok := e.endpoint(t, ip); ok {
			t.Errorf("endpoint %s still there after DEL", ip)
		}
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

// statusErr runs the chain's STATUS and returns the CNI error, if any.
func (e *cniEnv) statusErr(t *testing.T) *types.Error {
	t.Helper()
	var err error
	e.in(t, func() { err = e.cni.GetStatusNetworkList(context.Background(), e.chain) })
	if err == nil {
		return nil
	}
	var cniErr *types.Error
	if !errors.As(err, &cniErr) {
		t.Fatalf("STATUS: %v, want a CNI error", err)
	}
	return cniErr
}

// records lists the attachment records in the data dir.
func (e *cniEnv) records(t *testing.T) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(e.dataDir, func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			out = append(out, filepath.Base(path))
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Before any agent pinned the datapath, the plugin makes no pin root and
// no map: the pod is attached by the bridge as usual (the agent learns it
// later), the plugin says why in its log, and STATUS reports it
// unavailable until the agent has run.
func TestPluginStepsAsideWithoutAnAgent(t *testing.T) {
	e := newCNIEnv(t)
	ctx := context.Background()
	if cerr := e.statusErr(t); cerr == nil || cerr.Code != types.ErrPluginNotAvailable || !strings.Contains(cerr.Msg, e.pinRoot) {
		t.Errorf("STATUS before the agent ran = %v, want code %d naming %s", cerr, types.ErrPluginNotAvailable, e.pinRoot)
	}
	p := e.add(t, e.rt)
	if _, err := os.Stat(e.pinRoot); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("ADD created the pin root %s (%v); only the agent may", e.pinRoot, err)
	}
	if log := e.stderr.String(); !strings.Contains(log, "reason=not_pinned") || !strings.Contains(log, "bridge") {
		t.Errorf("plugin log %q does not say it left the pod to the bridge (reason=not_pinned)", log)
	}
	if recs := e.records(t); len(recs) != 0 {
		t.Errorf("records %v for a pod the plugin did not touch", recs)
	}
	e.in(t, func() {
		if l, err := netlink.LinkByName(p.veth); err != nil || l.Attrs().MasterIndex == 0 {
			t.Errorf("pod veth %s not on the bridge: %v", p.veth, err)
		}
		if err := e.cni.CheckNetworkList(ctx, e.chain, e.rt); err != nil {
			t.Errorf("CHECK of a pod left to the bridge: %v", err)
		}
		if err := e.cni.DelNetworkList(ctx, e.chain, e.rt); err != nil {
			t.Errorf("DEL: %v", err)
		}
	})

	e.agentRan(t)
	if cerr := e.statusErr(t); cerr != nil {
		t.Errorf("STATUS after the agent ran: %v", cerr)
	}
}

// Maps pinned by another version stay as they are: ADD skips the fast
// path for the pod and says so, DEL still works, STATUS reports it.
func TestPluginLeavesMapsOfAnotherLayout(t *testing.T) {
	e := newCNIEnv(t)
	e.agentRan(t)
	ctx := context.Background()
	routes := filepath.Join(e.pinRoot, "routes")
	if err := os.Remove(routes); err != nil {
		t.Fatal(err)
	}
	old, err := ebpf.NewMapWithOptions(&ebpf.MapSpec{Name: "routes", Type: ebpf.LPMTrie, KeySize: 8, ValueSize: 16,
		MaxEntries: 16, Flags: 1 /* BPF_F_NO_PREALLOC */, Pinning: ebpf.PinByName}, ebpf.MapOptions{PinPath: e.pinRoot})
	if err != nil {
		t.Fatal(err)
	}
	old.Close()
	oldID := pinnedMapID(t, routes)

	p := e.add(t, e.rt)
	if id := pinnedMapID(t, routes); id != oldID {
		t.Errorf("ADD replaced the pinned routes map (ID %d, was %d)", id, oldID)
	}
	if log := e.stderr.String(); !strings.Contains(log, "reason=layout_mismatch") {
		t.Errorf("plugin log %q does not say it skipped the fast path (reason=layout_mismatch)", log)
	}
	e.in(t, func() {
		if attached(t, e.pinRoot, p.veth) {
			t.Errorf("from_pods attached to %s over maps of another layout", p.veth)
		}
		if err := e.cni.DelNetworkList(ctx, e.chain, e.rt); err != nil {
			t.Errorf("DEL: %v", err)
		}
	})
	if cerr := e.statusErr(t); cerr == nil || cerr.Code != types.ErrPluginNotAvailable || !strings.Contains(cerr.Msg, "another version") {
		t.Errorf("STATUS over maps of another layout = %v, want code %d saying so", cerr, types.ErrPluginNotAvailable)
	}
}

func pinnedMapID(t *testing.T, path string) ebpf.MapID {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	info, err := m.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, _ := info.ID()
	return id
}

// GC, as the CNI library runs it for a runtime that lost track of some
// pods (a fresh cache: no DEL first), releases exactly the attachments
// missing from cni.dev/valid-attachments: their endpoint entries, link
// pins and records.
func TestPluginGC(t *testing.T) {
	e := newCNIEnv(t)
	e.agentRan(t)
	ctx := context.Background()
	rtB := e.newPod(t, "hgwt-pod-b")
	a, b := e.add(t, e.rt), e.add(t, rtB)
	gc := func(valid ...*libcni.RuntimeConf) {
		t.Helper()
		args := &libcni.GCArgs{}
		for _, rt := range valid {
			args.ValidAttachments = append(args.ValidAttachments, types.GCAttachment{ContainerID: rt.ContainerID, IfName: rt.IfName})
		}
		e.in(t, func() {
			if err := e.runtime(t).GCNetworkList(ctx, e.chain, args); err != nil {
				t.Fatalf("GC: %v", err)
			}
		})
	}

	gc(e.rt, rtB)
	for _, p := range []podInfo{a, b} {
		if _, ok := e.endpoint(t, p.ip); !ok {
			t.Errorf("GC with every attachment valid removed %s's entry", p.ip)
		}
	}
	if n := len(e.records(t)); n != 2 {
		t.Errorf("%d records after a GC that keeps both pods, want 2", n)
	}

	gc(rtB)
	if _, ok := e.endpoint(t, a.ip); ok {
		t.Errorf("entry of %s (attachment gone) still there after GC", a.ip)
	}
	if _, ok := e.endpoint(t, b.ip); !ok {
		t.Errorf("entry of %s (valid attachment) removed by GC", b.ip)
	}
	e.in(t, func() {
		if attached(t, e.pinRoot, a.veth) {
			t.Errorf("from_pods still attached to %s (attachment gone)", a.veth)
		}
		if !attached(t, e.pinRoot, b.veth) {
			t.Errorf("from_pods detached from %s (valid attachment)", b.veth)
		}
	})
	if _, err := os.Stat(filepath.Join(e.pinRoot, "links", "from_pods@"+a.veth)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("link pin of %s left after GC (%v)", a.veth, err)
	}
	if recs := e.records(t); !slices.Equal(recs, []string{"hgwt-pod-b@eth0"}) {
		t.Errorf("records after GC %v, want only hgwt-pod-b@eth0", recs)
	}
	if log := e.stderr.String(); !strings.Contains(log, "container="+e.rt.ContainerID) {
		t.Errorf("plugin log %q does not name the released attachment %s", log, e.rt.ContainerID)
	}
}

// A runtime that lost its cache DELs without a previous result: ADD's
// record still says what to remove.
func TestPluginDelWithoutAPreviousResult(t *testing.T) {
	e := newCNIEnv(t)
	e.agentRan(t)
	p := e.add(t, e.rt)
	e.in(t, func() {
		if err := e.runtime(t).DelNetworkList(context.Background(), e.chain, e.rt); err != nil {
			t.Fatalf("DEL without prevResult: %v", err)
		}
		if attached(t, e.pinRoot, p.veth) {
			t.Errorf("from_pods still attached to %s", p.veth)
		}
	})
	if _, ok := e.endpoint(t, p.ip); ok {
		t.Errorf("entry of %s still there", p.ip)
	}
	if recs := e.records(t); len(recs) != 0 {
		t.Errorf("records left: %v", recs)
	}
}
