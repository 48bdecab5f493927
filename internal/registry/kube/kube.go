// Package kube is the Kubernetes subnet manager, as flanneld
// --kube-subnet-mgr has it: a node's pod subnet is its Node's
// spec.podCIDR(s), set by kube-controller-manager (--allocate-node-cidrs),
// and the node publishes its public IP and backend in annotations of its
// Node (<prefix>/kube-subnet-manager, backend-type, backend-data,
// public-ip, and public-ipv6, backend-v6-data on a dual-stack node). The
// peers are every Node with a podCIDR and those annotations, read through
// a Node informer; a lease vanishes with its Node. The network config is
// flanneld's net-conf.json, the same JSON as etcd's <prefix>/config.
package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/hgw-ebpf/hgw-ebpf/internal/registry"
)

// Defaults of flanneld's flags and its informer.
const (
	DefaultNetConfPath = "/etc/kube-flannel/net-conf.json"
	DefaultResync      = 5 * time.Minute
)

// Options are flanneld's kube flags and environment.
type Options struct {
	APIURL           string // --kube-api-url; "" = from the kubeconfig or in-cluster
	Kubeconfig       string // --kubeconfig-file; "" = in-cluster config
	AnnotationPrefix string // --kube-annotation-prefix; DefaultAnnotationPrefix if ""
	NetConfPath      string // --net-config-path; DefaultNetConfPath if ""
	// NodeName is this node's Node (NODE_NAME). When empty it is the
	// nodeName of the pod PodNamespace/PodName (POD_NAME, POD_NAMESPACE),
	// as flanneld finds it.
	NodeName, PodName, PodNamespace string
	// SetNodeNetworkUnavailable sets the Node's NetworkUnavailable
	// condition to False once the node routes its peers, as flanneld
	// --set-node-network-unavailable (default true there) does.
	SetNodeNetworkUnavailable bool
	Resync                    time.Duration // of the informer; DefaultResync if 0
	// Dial, if set, opens the client's connections (tests reach an API
	// server in another network namespace with it).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Rest, if set, is the client config to use instead of APIURL and
	// Kubeconfig.
	Rest *rest.Config
}

// Manager keeps this node's lease in its Node and reads every node's.
type Manager struct {
	o      Options
	log    *slog.Logger
	ann    annotations
	client *client
	host   string // the API server, for logs

	informer cache.SharedIndexInformer
	handler  cache.ResourceEventHandlerRegistration
	stop     context.CancelFunc // ends the informer
	start    sync.Once
	startErr error
	ownCh    chan struct{} // this node's Node changed (capacity 1)
	leaseCh  chan struct{} // some lease changed (capacity 1)

	mu         sync.Mutex
	cfg        *registry.Config
	hooks      registry.WatchHooks
	listedOnce bool                // the informer has read every Node once
	table      *registry.Table     // every Node's lease or skipped entry, by Key
	changed    map[string]struct{} // keys changed since Watch last called its fn
}

var _ registry.Manager = (*Manager)(nil)

// New builds the client (from Rest, else APIURL and Kubeconfig, else the
// in-cluster config, as flanneld) and finds this node's name. Nothing is
// read from the API server until Acquire or Watch.
func New(ctx context.Context, o Options, log *slog.Logger) (*Manager, error) {
	if o.AnnotationPrefix == "" {
		o.AnnotationPrefix = DefaultAnnotationPrefix
	}
	if o.NetConfPath == "" {
		o.NetConfPath = DefaultNetConfPath
	}
	if o.Resync == 0 {
		o.Resync = DefaultResync
	}
	ann, err := newAnnotations(o.AnnotationPrefix)
	if err != nil {
		return nil, err
	}
	rc := o.Rest
	if rc == nil {
		if rc, err = clientcmd.BuildConfigFromFlags(o.APIURL, o.Kubeconfig); err != nil {
			return nil, fmt.Errorf("Kubernetes client config (--kube-api-url %q, --kubeconfig-file %q, else in-cluster): %w", o.APIURL, o.Kubeconfig, err)
		}
	}
	rc = rest.CopyConfig(rc)
	if o.Dial != nil {
		rc.Dial = o.Dial
	}
	client, err := newClient(rc)
	if err != nil {
		return nil, err
	}
	m := &Manager{o: o, log: log, ann: ann, client: client, host: rc.Host,
		ownCh: make(chan struct{}, 1), leaseCh: make(chan struct{}, 1),
		table: registry.NewTable(), changed: map[string]struct{}{}}
	if m.o.NodeName == "" {
		if m.o.NodeName, err = m.nodeOfPod(ctx); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// nodeOfPod finds the node name as flanneld does without NODE_NAME: from
// the agent's own pod.
func (m *Manager) nodeOfPod(ctx context.Context) (string, error) {
	if m.o.PodName == "" || m.o.PodNamespace == "" {
		return "", errors.New("the node's name is unknown: set NODE_NAME (the DaemonSet sets it from spec.nodeName), or POD_NAME and POD_NAMESPACE")
	}
	pod, err := m.client.pod(ctx, m.o.PodNamespace, m.o.PodName)
	if err != nil {
		return "", fmt.Errorf("read pod %s/%s to find the node's name: %w", m.o.PodNamespace, m.o.PodName, err)
	}
	if pod.Spec.NodeName == "" {
		return "", fmt.Errorf("pod %s/%s has no spec.nodeName", m.o.PodNamespace, m.o.PodName)
	}
	return pod.Spec.NodeName, nil
}

// NodeName is this node's Node.
func (m *Manager) NodeName() string { return m.o.NodeName }

// Close stops the informer.
func (m *Manager) Close() {
	m.mu.Lock()
	stop := m.stop
	m.mu.Unlock()
	if stop != nil {
		stop()
	}
}

// Config reads and checks the network config from --net-config-path, as
// flanneld does in kube mode, with the checks of etcd's config.
func (m *Manager) Config(context.Context) (registry.Config, error) {
	data, err := os.ReadFile(m.o.NetConfPath)
	if err != nil {
		return registry.Config{}, fmt.Errorf("network config (--net-config-path): %w", err)
	}
	cfg, err := registry.ParseConfig(data)
	if errors.Is(err, registry.ErrIPv6Only) {
		// flanneld runs IPv6-only clusters in kube mode; the agent's routes,
		// programs and subnet file need the node's IPv4 podCIDR.
		return registry.Config{}, fmt.Errorf("network config %s: EnableIPv4 is false: hgw-ebpf needs an IPv4 network (and IPv4 podCIDRs); keep EnableIPv4, and add EnableIPv6 for dual stack", m.o.NetConfPath)
	}
	if err != nil {
		return registry.Config{}, fmt.Errorf("network config %s: %w", m.o.NetConfPath, err)
	}
	m.mu.Lock()
	m.cfg = &cfg
	m.mu.Unlock()
	return cfg, nil
}

func (m *Manager) config() (registry.Config, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cfg == nil {
		return registry.Config{}, errors.New("kube: Config must be read first")
	}
	return *m.cfg, nil
}

// run starts the Node informer once, and waits until it has listed every
// Node (and our handler has seen them) or ctx ends. While the API server
// cannot be reached, the informer retries and says so in the log.
func (m *Manager) run(ctx context.Context) error {
	m.start.Do(func() {
		ictx, stop := context.WithCancel(context.Background())
		m.mu.Lock()
		m.stop = stop
		m.mu.Unlock()
		m.informer = m.newInformer()
		reg, err := m.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    func(obj any) { m.nodeChanged(obj) },
			UpdateFunc: func(_, obj any) { m.nodeChanged(obj) },
			DeleteFunc: m.nodeDeleted,
		})
		if err != nil {
			m.startErr = fmt.Errorf("Node informer: %w", err)
			return
		}
		m.handler = reg
		go m.informer.RunWithContext(ictx)
	})
	if m.startErr != nil {
		return m.startErr
	}
	if m.handler.HasSynced() {
		return nil
	}
	m.log.Info("reading Nodes from the Kubernetes API", "url", m.host)
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for !m.handler.HasSynced() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the Kubernetes API's Nodes: %w", ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

// newInformer watches every Node (resync every o.Resync, as flanneld),
// keeping of each only what a lease needs: real Nodes carry kilobytes of
// status (images, conditions) that a cluster of thousands would hold twice.
func (m *Manager) newInformer() cache.SharedIndexInformer {
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
			list, err := m.client.listNodes(ctx, opts)
			if err == nil {
				m.listed()
			}
			return list, err
		},
		WatchFuncWithContext: func(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
			w, err := m.client.watchNodes(ctx, opts)
			// A watch that starts with every Node is a list too (client-go
			// lists that way where the server can).
			if err == nil && opts.SendInitialEvents != nil && *opts.SendInitialEvents {
				m.listed()
			}
			return w, err
		},
	}
	inf := cache.NewSharedIndexInformer(cache.ToListWatcherWithWatchListSemantics(lw, m.client.rest),
		&corev1.Node{}, m.o.Resync, cache.Indexers{})
	// Both fail only once the informer runs: they are set before.
	inf.SetTransform(m.trim)
	inf.SetWatchErrorHandlerWithContext(func(_ context.Context, _ *cache.Reflector, err error) {
		m.log.Warn("Kubernetes API: list or watch of Nodes failed, retrying", "err", err)
	})
	return inf
}

// listed counts a full read of the Nodes after the first: the informer
// lists again when its watch broke beyond resuming.
func (m *Manager) listed() {
	m.mu.Lock()
	first := !m.listedOnce
	m.listedOnce = true
	relist := m.hooks.Relist
	m.mu.Unlock()
	if !first && relist != nil {
		relist()
	}
}

// trim keeps a Node's name, version, our annotations and its podCIDRs.
func (m *Manager) trim(obj any) (any, error) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return obj, nil
	}
	t := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: n.Name, UID: n.UID, ResourceVersion: n.ResourceVersion},
		Spec:       corev1.NodeSpec{PodCIDR: n.Spec.PodCIDR, PodCIDRs: n.Spec.PodCIDRs},
	}
	for k, v := range n.Annotations {
		if len(k) > len(m.ann.prefix) && k[:len(m.ann.prefix)] == m.ann.prefix {
			if t.Annotations == nil {
				t.Annotations = map[string]string{}
			}
			t.Annotations[k] = v
		}
	}
	return t, nil
}

// cachedNode is this node's Node as the informer has it.
func (m *Manager) cachedNode() (*corev1.Node, bool) {
	obj, ok, err := m.informer.GetStore().GetByKey(m.o.NodeName)
	if err != nil || !ok {
		return nil, false
	}
	n, ok := obj.(*corev1.Node)
	return n, ok
}

// signal wakes whoever waits on ch, without blocking: one pending wake-up
// covers any number of changes.
func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}
