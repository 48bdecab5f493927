package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"

	"github.com/hgw-ebpf/hgw-ebpf/deploy"
	"github.com/hgw-ebpf/hgw-ebpf/internal/kubeapi"
	"github.com/hgw-ebpf/hgw-ebpf/internal/registry/kube"
)

// Where a lab's agents keep their leases.
const (
	RegistryEtcd = "etcd" // flannel's etcd schema, in the lab's etcd
	// RegistryKube: Kubernetes Nodes (--kube-subnet-mgr), served by a real
	// kube-apiserver on the underlay, backed by the lab's etcd.
	RegistryKube = "kube"
)

// kubeDir is where a kube lab keeps the API server's files, the agents'
// kubeconfig and net-conf.json.
func kubeDir(st State) string { return filepath.Join(st.Dir, "kube") }

// KubeBinDir is where `make deps` puts kube-apiserver and kubectl.
func KubeBinDir(binDir string) string { return filepath.Join(binDir, "kube") }

// checkKube validates a kube lab's options.
func (c *Config) checkKube() error {
	switch c.Registry {
	case RegistryEtcd:
		return nil
	case RegistryKube:
	default:
		return fmt.Errorf("registry %q: want %s or %s", c.Registry, RegistryEtcd, RegistryKube)
	}
	if c.Datapath == DatapathStatic {
		return fmt.Errorf("registry %s: a %s lab runs no agents to read it", RegistryKube, DatapathStatic)
	}
	for _, b := range []string{"kube-apiserver", "kubectl"} {
		if err := checkExecutable(filepath.Join(KubeBinDir(c.BinDir), b)); err != nil {
			return fmt.Errorf("registry %s needs %s (run `make deps`): %w", RegistryKube, b, err)
		}
	}
	return nil
}

// startKube runs kube-apiserver on the underlay gateway, backed by the
// lab's etcd, and applies the project's manifest: its ClusterRole is what
// the agents (and flanneld) are allowed, as its service account. The
// DaemonSet is inert: no kubelet runs here. The agents get a kubeconfig
// and flannel's net-conf.json in the lab's kube directory.
func (l *Lab) startKube(ctx context.Context) error {
	st := l.State()
	dir := kubeDir(st)
	name, groups := deploy.ServiceAccountUser()
	srv, err := kubeapi.Start(ctx, kubeapi.Config{
		Bin: filepath.Join(KubeBinDir(l.cfg.BinDir), "kube-apiserver"), Netns: st.Underlay, Addr: underlayGateway,
		EtcdServers: []string{EtcdEndpoint()}, Dir: dir, Users: []kubeapi.User{{Name: name, Groups: groups}}, Log: l.log,
	})
	if err != nil {
		return err
	}
	l.mu.Lock()
	l.kube = srv
	l.mu.Unlock()
	if out, err := l.Kubectl(ctx, deploy.KubeManifest, "apply", "-f", "-"); err != nil {
		return fmt.Errorf("apply the manifest: %w", err)
	} else {
		l.log.Info("manifest applied", "output", string(out))
	}
	admin, err := srv.AdminKubeconfig()
	if err != nil {
		return err
	}
	if err := srv.Kubeconfig(name, filepath.Join(dir, "agent.kubeconfig")); err != nil {
		return err
	}
	conf := networkConfig
	if l.cfg.DualStack {
		conf = networkConfigDualStack
	}
	if err := os.WriteFile(filepath.Join(dir, "net-conf.json"), []byte(conf), 0o644); err != nil {
		return err
	}
	core, err := corev1client.NewForConfig(srv.RestConfig(kubeapi.Admin))
	if err != nil {
		return err
	}
	l.mu.Lock()
	l.nodes = core.Nodes()
	l.state.KubeAPI, l.state.Kubeconfig = srv.URL(), admin
	l.mu.Unlock()
	return l.saveState()
}

// registryArgs are the flags that point an agent, hgw-ebpf or flanneld
// alike (they share the names), at the lab's registry.
func (l *Lab) registryArgs() []string {
	if l.cfg.Registry != RegistryKube {
		return []string{"--etcd-endpoints", EtcdEndpoint(), "--etcd-prefix", l.cfg.EtcdPrefix}
	}
	dir := kubeDir(l.State())
	return []string{"--kube-subnet-mgr", "--kubeconfig-file", filepath.Join(dir, "agent.kubeconfig"),
		"--net-config-path", filepath.Join(dir, "net-conf.json")}
}

// NodePodCIDR is the pod subnet node k gets where the lab hands them out
// (a static lab's nodes, a kube lab's Nodes).
func NodePodCIDR(k int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(k), 0}), 24)
}

// createKubeNode registers node n as a kubelet would (its labels and the
// annotation it sets) and gives it a podCIDR as kube-controller-manager
// would (--allocate-node-cidrs): a lab runs neither. A Node that exists
// already (a test prepared it) is left as it is. flanneld v0.28.9 panics
// on a Node without annotations; a kubelet never registers one. A node
// with IPv6 (a dual-stack lab) gets an IPv6 podCIDR too, as a dual-stack
// --cluster-cidr gives.
func (l *Lab) createKubeNode(ctx context.Context, n Node) error {
	cidr := NodePodCIDR(n.Index).String()
	cidrs := []string{cidr}
	if n.IP6 != "" {
		cidrs = append(cidrs, subnet6Of(NodePodCIDR(n.Index)).String())
	}
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: n.Name,
			Labels:      map[string]string{"kubernetes.io/hostname": n.Name, "kubernetes.io/os": "linux"},
			Annotations: map[string]string{"volumes.kubernetes.io/controller-managed-attach-detach": "true"},
		},
		Spec: corev1.NodeSpec{PodCIDR: cidr, PodCIDRs: cidrs},
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := l.nodes.Create(ctx, node, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create Node %s: %w", n.Name, err)
	}
	return nil
}

// deleteKubeNode deletes node's Node, as `kubectl delete node` does when
// a node leaves: the agents drop its routes.
func (l *Lab) deleteKubeNode(ctx context.Context, node string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	err := l.nodes.Delete(ctx, node, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete Node %s: %w", node, err)
	}
	return nil
}

// KubeAPI is a kube lab's API server (nil in an etcd lab), for clients
// (RestConfig) and for outages (Stop, Start).
func (l *Lab) KubeAPI() *kubeapi.Server {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.kube
}

// Kubectl runs the lab's kubectl as the API server's admin, inside the
// underlay, with stdin as its input.
func (l *Lab) Kubectl(ctx context.Context, stdin []byte, args ...string) ([]byte, error) {
	srv := l.KubeAPI()
	if srv == nil {
		return nil, fmt.Errorf("lab %s runs no kube-apiserver (registry %s)", l.cfg.Prefix, l.cfg.Registry)
	}
	return srv.Kubectl(ctx, filepath.Join(KubeBinDir(l.cfg.BinDir), "kubectl"), stdin, args...)
}

// kubeLeases lists each Node of the lab described by s with its podCIDRs
// and flannel's annotations, from any process: kubectl runs inside the
// underlay with the admin's kubeconfig.
func (s State) kubeLeases(ctx context.Context) ([]LeaseEntry, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(KubeBinDir(s.BinDir), "kubectl"), "--kubeconfig", s.Kubeconfig, "get", "nodes", "-o", "json")
	out, err := runIn(s.Underlay, cmd)
	if err != nil {
		return nil, fmt.Errorf("kubectl get nodes: %w: %s", err, out)
	}
	var list corev1.NodeList
	if err := json.Unmarshal(out, &list); err != nil {
		return nil, fmt.Errorf("kubectl get nodes: %w", err)
	}
	var entries []LeaseEntry
	for _, n := range list.Items {
		ann := map[string]string{}
		for k, v := range n.Annotations {
			if strings.HasPrefix(k, kube.DefaultAnnotationPrefix+"/") {
				ann[strings.TrimPrefix(k, kube.DefaultAnnotationPrefix+"/")] = v
			}
		}
		v, _ := json.Marshal(struct {
			PodCIDRs    []string          `json:"podCIDRs"`
			Annotations map[string]string `json:"annotations"`
		}{n.Spec.PodCIDRs, ann})
		entries = append(entries, LeaseEntry{Key: kube.KeyPrefix + n.Name, Value: string(v)})
	}
	return entries, nil
}

// NetConfPath is the network config a kube lab's agents read (their
// --net-config-path): change it while an agent is stopped.
func (l *Lab) NetConfPath() string { return filepath.Join(kubeDir(l.State()), "net-conf.json") }
