package lab

import (
	"context"
	"fmt"

	"github.com/containernetworking/cni/libcni"

	"github.com/hgw-ebpf/hgw-ebpf/pkg/namedns"
)

// detach runs the plugins' DEL for a pod namespace (in reverse order, with
// the cached result, as a runtime would); running it twice is fine.
func (n *cniNetwork) detach(ctx context.Context, pod string) error {
	rt := &libcni.RuntimeConf{ContainerID: pod, NetNS: namedns.Path(pod), IfName: podIface}
	if err := inNetns(n.nodeNS, func() error { return n.cni.DelNetworkList(ctx, n.conf, rt) }); err != nil {
		return fmt.Errorf("CNI DEL %s on %s: %w", pod, n.nodeNS, err)
	}
	return nil
}

// check runs the plugins' CHECK for a pod namespace.
func (n *cniNetwork) check(ctx context.Context, pod string) error {
	rt := &libcni.RuntimeConf{ContainerID: pod, NetNS: namedns.Path(pod), IfName: podIface}
	if err := inNetns(n.nodeNS, func() error { return n.cni.CheckNetworkList(ctx, n.conf, rt) }); err != nil {
		return fmt.Errorf("CNI CHECK %s on %s: %w", pod, n.nodeNS, err)
	}
	return nil
}

// RemovePod detaches a pod through the CNI plugins' DEL, as a runtime
// deleting the pod would, then removes its namespace.
func (l *Lab) RemovePod(ctx context.Context, name string) error {
	cni, err := l.podNetwork("remove", name)
	if err != nil {
		return err
	}
	if err := cni.detach(ctx, name); err != nil {
		return err
	}
	if err := namedns.Delete(name); err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := range l.state.Pods {
		if l.state.Pods[i].Name == name {
			l.state.Pods = append(l.state.Pods[:i], l.state.Pods[i+1:]...)
			break
		}
	}
	return l.state.save()
}

// CheckPod runs the CNI plugins' CHECK for a pod.
func (l *Lab) CheckPod(ctx context.Context, name string) error {
	cni, err := l.podNetwork("check", name)
	if err != nil {
		return err
	}
	return cni.check(ctx, name)
}

// podNetwork is the CNI network of the node a pod runs on, for op.
func (l *Lab) podNetwork(op, name string) (*cniNetwork, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	pod, ok := l.state.Pod(name)
	cni := l.cni[pod.Node]
	if !ok || cni == nil {
		return nil, fmt.Errorf("%s pod: no pod %s on a ready node", op, name)
	}
	return cni, nil
}
