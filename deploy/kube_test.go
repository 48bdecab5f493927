package deploy_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/hgw-ebpf/hgw-ebpf/deploy"
	"github.com/hgw-ebpf/hgw-ebpf/internal/kubeapi"
	"github.com/hgw-ebpf/hgw-ebpf/internal/kubeapi/kubeapitest"
	"github.com/hgw-ebpf/hgw-ebpf/internal/registry"
	"github.com/hgw-ebpf/hgw-ebpf/internal/registry/kube"
)

func TestMain(m *testing.M) { os.Exit(kubeapitest.Main(m)) }

// objects splits the manifest into its documents, decoded as unstructured
// maps (kind, metadata.name) plus the raw JSON of each.
func objects(t *testing.T) []map[string]any {
	t.Helper()
	var out []map[string]any
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(deploy.KubeManifest)))
	for {
		doc, err := r.Read()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		var obj map[string]any
		if err := yaml.Unmarshal(doc, &obj); err != nil {
			t.Fatalf("manifest document: %v", err)
		}
		if obj != nil {
			out = append(out, obj)
		}
	}
}

// object finds the manifest's document of kind, as typed into v.
func object(t *testing.T, kind string, v any) {
	t.Helper()
	for _, o := range objects(t) {
		if o["kind"] == kind {
			b, _ := json.Marshal(o)
			if err := json.Unmarshal(b, v); err != nil {
				t.Fatalf("%s: %v", kind, err)
			}
			return
		}
	}
	t.Fatalf("no %s in the manifest", kind)
}

// The real kube-apiserver accepts every object of the manifest in a
// server-side dry run (its schemas, defaulting and admission), and refuses
// the manifest with a field it does not know: the dry run validates. It
// changes nothing.
func TestManifestServerDryRun(t *testing.T) {
	srv := kubeapitest.Shared(t)
	kubectl := kubeapitest.Require(t, "kubectl")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// A dry run creates no namespace, so the namespaced objects would find
	// none: the namespace exists first, as on a cluster it is applied with
	// the rest.
	ns := []byte("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: " + deploy.Namespace + "\n")
	if _, err := srv.Kubectl(ctx, kubectl, ns, "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	version := func() string {
		out, _ := srv.Kubectl(ctx, kubectl, nil, "get", "--ignore-not-found", "-n", deploy.Namespace,
			"clusterrole/hgw-ebpf", "configmap/kube-hgw-ebpf-cfg", "daemonset/kube-hgw-ebpf-ds", "-o", "jsonpath={..resourceVersion}")
		return string(out)
	}
	before := version()
	out, err := srv.Kubectl(ctx, kubectl, deploy.KubeManifest, "apply", "--dry-run=server", "-f", "-")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kubectl apply --dry-run=server:\n%s", out)
	for _, o := range objects(t) {
		md := o["metadata"].(map[string]any)
		// e.g. "clusterrole.rbac.authorization.k8s.io/hgw-ebpf created (server dry run)"
		re := regexp.MustCompile(`(?m)^` + strings.ToLower(o["kind"].(string)) + `(\.[a-z0-9.]+)?/` +
			regexp.QuoteMeta(md["name"].(string)) + ` (created|configured|unchanged) \(server dry run\)$`)
		if !re.Match(out) {
			t.Errorf("kubectl did not report %s/%s in a dry run", o["kind"], md["name"])
		}
	}
	if len(objects(t)) != 6 {
		t.Errorf("%d objects, want namespace, cluster role and binding, service account, config map, daemon set (6)", len(objects(t)))
	}
	broken := bytes.Replace(deploy.KubeManifest, []byte("hostNetwork: true"), []byte("hostNetwork: true\n      hostNetwerk: true"), 1)
	if _, err := srv.Kubectl(ctx, kubectl, broken, "apply", "--dry-run=server", "--validate=strict", "-f", "-"); err == nil || !strings.Contains(err.Error(), "hostNetwerk") {
		t.Errorf("a misspelt field passed the dry run: %v", err)
	}
	if after := version(); after != before {
		t.Errorf("the dry runs changed objects: resource versions %q, were %q", after, before)
	}
}

// The manifest's ClusterRole is all the agent needs: applied for real,
// the agent's service account takes its lease (annotations through
// nodes/status), watches every Node, reports the node ready and releases
// its lease. It may not change a Node's spec or delete one.
func TestManifestRBACSuffices(t *testing.T) {
	srv := kubeapitest.Shared(t)
	kubectl := kubeapitest.Require(t, "kubectl")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// Applied for good: a namespace deleted without kube-controller-manager
	// would stay terminating and refuse the next test's objects.
	if out, err := srv.Kubectl(ctx, kubectl, deploy.KubeManifest, "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	} else {
		t.Logf("kubectl apply:\n%s", out)
	}
	admin, err := corev1client.NewForConfig(srv.RestConfig(kubeapi.Admin))
	if err != nil {
		t.Fatal(err)
	}
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "rbac-n1"}, Spec: corev1.NodeSpec{PodCIDR: "10.244.30.0/24"}}
	if _, err := admin.Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Nodes().Delete(context.Background(), node.Name, metav1.DeleteOptions{}) })

	var cm corev1.ConfigMap
	object(t, "ConfigMap", &cm)
	netConf := filepath.Join(t.TempDir(), "net-conf.json")
	if err := os.WriteFile(netConf, []byte(cm.Data["net-conf.json"]), 0o644); err != nil {
		t.Fatal(err)
	}
	m, err := kube.New(ctx, kube.Options{NodeName: node.Name, NetConfPath: netConf, SetNodeNetworkUnavailable: true,
		Rest: srv.RestConfig(kubeapitest.Agent.Name)}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if _, err := m.Config(ctx); err != nil {
		t.Fatalf("the ConfigMap's net-conf.json: %v", err)
	}
	ip := netip.MustParseAddr("198.18.0.30")
	l, err := m.Acquire(ctx, registry.AcquireOptions{PublicIP: ip})
	if err != nil {
		t.Fatalf("Acquire as the service account: %v", err)
	}
	seen := make(chan struct{})
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	go m.Watch(wctx, func(c registry.Change) {
		if _, ok := c.Leases.Get(kube.KeyPrefix + node.Name); ok && wctx.Err() == nil {
			wcancel()
			close(seen)
		}
	}, registry.WatchHooks{})
	select {
	case <-seen:
	case <-time.After(30 * time.Second):
		t.Fatal("the service account's watch never saw the node's lease")
	}
	if err := m.ReportReady(ctx); err != nil {
		t.Errorf("ReportReady as the service account: %v", err)
	}
	if err := m.Release(ctx, l.Subnet, ip); err != nil {
		t.Errorf("Release as the service account: %v", err)
	}

	agent, err := corev1client.NewForConfig(srv.RestConfig(kubeapitest.Agent.Name))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := agent.Nodes().Patch(ctx, node.Name, types.MergePatchType, []byte(`{"spec":{"unschedulable":true}}`), metav1.PatchOptions{}); err == nil {
		t.Error("the service account may patch a Node's spec")
	}
	if err := agent.Nodes().Delete(ctx, node.Name, metav1.DeleteOptions{}); err == nil {
		t.Error("the service account may delete a Node")
	}
}

// What the DaemonSet runs agrees with the rest of the project: the agent's
// flags, NODE_NAME from the downward API, the ConfigMap mounted where
// --net-config-path points, the host paths the agent and hgw-cni share,
// the systemd unit's capabilities, a conflist the CNI library parses
// with flannel, hgw-cni and portmap in that order.
func TestManifestMatchesTheAgent(t *testing.T) {
	var ds appsv1.DaemonSet
	object(t, "DaemonSet", &ds)
	spec := ds.Spec.Template.Spec
	if !spec.HostNetwork || spec.ServiceAccountName != deploy.ServiceAccount {
		t.Errorf("hostNetwork %v, service account %q", spec.HostNetwork, spec.ServiceAccountName)
	}
	if len(spec.Containers) != 1 {
		t.Fatalf("%d containers", len(spec.Containers))
	}
	c := spec.Containers[0]
	args := append(append([]string{}, c.Command...), c.Args...)
	if !slices.Contains(args, "--kube-subnet-mgr") || !slices.Contains(args, "run") {
		t.Errorf("the agent runs %v: want run --kube-subnet-mgr", args)
	}
	var env *corev1.EnvVar
	for i := range c.Env {
		if c.Env[i].Name == "NODE_NAME" {
			env = &c.Env[i]
		}
	}
	if env == nil || env.ValueFrom == nil || env.ValueFrom.FieldRef == nil || env.ValueFrom.FieldRef.FieldPath != "spec.nodeName" {
		t.Errorf("NODE_NAME: %+v, want the downward API's spec.nodeName", env)
	}
	mounts := map[string]string{}
	for _, vm := range c.VolumeMounts {
		mounts[vm.MountPath] = vm.Name
	}
	hostPaths := map[string]string{}
	for _, v := range spec.Volumes {
		if v.HostPath != nil {
			hostPaths[v.Name] = v.HostPath.Path
		}
	}
	for _, p := range []string{"/sys/fs/bpf", "/run/flannel", "/run/xtables.lock", "/lib/modules"} {
		if hostPaths[mounts[p]] != p {
			t.Errorf("%s is not the host's (volume %q: %q)", p, mounts[p], hostPaths[mounts[p]])
		}
	}
	var netConfPath string
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--net-config-path="); ok {
			netConfPath = v
		}
	}
	if mounts[filepath.Dir(netConfPath)+"/"] != "hgw-ebpf-cfg" {
		t.Errorf("--net-config-path %q is not in the ConfigMap's mount (%v)", netConfPath, mounts)
	}

	unit, err := os.ReadFile("hgw-ebpf.service")
	if err != nil {
		t.Fatal(err)
	}
	var unitCaps []string
	for _, line := range strings.Split(string(unit), "\n") {
		if v, ok := strings.CutPrefix(line, "CapabilityBoundingSet="); ok {
			for _, f := range strings.Fields(v) {
				unitCaps = append(unitCaps, strings.TrimPrefix(f, "CAP_"))
			}
		}
	}
	var caps []string
	if sc := c.SecurityContext; sc != nil && sc.Capabilities != nil {
		for _, cp := range sc.Capabilities.Add {
			caps = append(caps, string(cp))
		}
	}
	slices.Sort(caps)
	slices.Sort(unitCaps)
	if len(unitCaps) == 0 || !slices.Equal(caps, unitCaps) {
		t.Errorf("container capabilities %v, the systemd unit's %v", caps, unitCaps)
	}

	var cm corev1.ConfigMap
	object(t, "ConfigMap", &cm)
	list, err := libcni.ConfListFromBytes([]byte(cm.Data["cni-conf.json"]))
	if err != nil {
		t.Fatalf("cni-conf.json: %v", err)
	}
	var types []string
	for _, p := range list.Plugins {
		types = append(types, p.Network.Type)
	}
	if !slices.Equal(types, []string{"flannel", "hgw-cni", "portmap"}) {
		t.Errorf("conflist plugins %v", types)
	}
	if _, err := registry.ParseConfig([]byte(cm.Data["net-conf.json"])); err != nil {
		t.Errorf("net-conf.json: %v", err)
	}
}
