package bench

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"

	"github.com/hgw-ebpf/hgw-ebpf/internal/kubeapi"
	"github.com/hgw-ebpf/hgw-ebpf/internal/lab"
	"github.com/hgw-ebpf/hgw-ebpf/internal/registry"
)

// peerStore is where a run's synthetic peers keep their leases: etcd
// keys, or Kubernetes Nodes.
type peerStore interface {
	// fill widens the network to cpNetwork and writes every lease.
	fill(ctx context.Context, leases []SyntheticLease) error
	put(ctx context.Context, l SyntheticLease) error
	remove(ctx context.Context, l SyntheticLease) error
}

func newPeerStore(l *lab.Lab, reg string) (peerStore, error) {
	if reg != lab.RegistryKube {
		return &etcdPeers{cli: l.Etcd()}, nil
	}
	rc := l.KubeAPI().RestConfig(kubeapi.Admin)
	// Thousands of Nodes are written as fast as the API server takes them,
	// not at client-go's default 5 requests a second.
	rc.QPS, rc.Burst = 1000, 2000
	core, err := corev1client.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	return &kubePeers{nodes: core.Nodes(), netConf: l.NetConfPath()}, nil
}

// etcdPeers are leases in flannel's schema, bound to one etcd lease of a
// day, as flanneld's.
type etcdPeers struct {
	cli *clientv3.Client
	id  clientv3.LeaseID
}

func (e *etcdPeers) fill(ctx context.Context, leases []SyntheticLease) error {
	var err error
	e.id, err = putLeases(ctx, e.cli, leases)
	return err
}

func (e *etcdPeers) put(ctx context.Context, l SyntheticLease) error {
	v, err := leaseValue(l)
	if err != nil {
		return err
	}
	if _, err := e.cli.Put(ctx, leaseKey(registry.DefaultPrefix, l.Subnet), v, clientv3.WithLease(e.id)); err != nil {
		return fmt.Errorf("put %s: %w", l.Subnet, err)
	}
	return nil
}

func (e *etcdPeers) remove(ctx context.Context, l SyntheticLease) error {
	if _, err := e.cli.Delete(ctx, leaseKey(registry.DefaultPrefix, l.Subnet)); err != nil {
		return fmt.Errorf("delete %s: %w", l.Subnet, err)
	}
	return nil
}

// kubePeers are Nodes, each with its podCIDR and the annotations flanneld
// writes, created in one request as a peer that joins ends up: the agent
// sees a lease the moment the Node exists.
type kubePeers struct {
	nodes   corev1client.NodeInterface
	netConf string
}

func peerNode(l SyntheticLease) *corev1.Node {
	cidr := l.Subnet.String()
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name: "peer-" + strings.NewReplacer(".", "-", "/", "-").Replace(cidr),
			Annotations: map[string]string{
				"flannel.alpha.coreos.com/kube-subnet-manager": "true",
				"flannel.alpha.coreos.com/backend-type":        "host-gw",
				"flannel.alpha.coreos.com/backend-data":        "null",
				"flannel.alpha.coreos.com/public-ip":           l.PublicIP.String(),
			},
		},
		Spec: corev1.NodeSpec{PodCIDR: cidr, PodCIDRs: []string{cidr}},
	}
}

// fill writes net-conf.json for cpNetwork (read by the agent when it
// starts) and creates the Nodes, 32 requests at a time.
func (k *kubePeers) fill(ctx context.Context, leases []SyntheticLease) error {
	conf := fmt.Sprintf(`{"Network":%q,"SubnetLen":24,"Backend":{"Type":"host-gw"}}`, cpNetwork)
	if err := os.WriteFile(k.netConf, []byte(conf), 0o644); err != nil {
		return fmt.Errorf("write network config: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	work := make(chan SyntheticLease)
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	for range 32 {
		wg.Go(func() {
			for l := range work {
				if err := k.put(ctx, l); err != nil {
					mu.Lock()
					if first == nil {
						first = err
						cancel()
					}
					mu.Unlock()
				}
			}
		})
	}
	for _, l := range leases {
		if ctx.Err() != nil {
			break
		}
		work <- l
	}
	close(work)
	wg.Wait()
	if first != nil {
		return first
	}
	return ctx.Err()
}

func (k *kubePeers) put(ctx context.Context, l SyntheticLease) error {
	if _, err := k.nodes.Create(ctx, peerNode(l), metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create Node of %s: %w", l.Subnet, err)
	}
	return nil
}

func (k *kubePeers) remove(ctx context.Context, l SyntheticLease) error {
	name := peerNode(l).Name
	if err := k.nodes.Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		return fmt.Errorf("delete Node %s: %w", name, err)
	}
	return nil
}
