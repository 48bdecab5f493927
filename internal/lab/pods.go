package lab

import (
	"context"
	"fmt"

	"github.com/hgw-ebpf/hgw-ebpf/internal/namedns"
)

// AddPod creates a pod namespace on node and attaches it through the CNI
// plugins, with the address host-local hands out from the node's subnet.
func (l *Lab) AddPod(ctx context.Context, node string) (Pod, error) {
	return l.addPod(ctx, node, nil)
}

// addPod is AddPod with runtime capability arguments for the plugins (the
// bandwidth plugin's limits), as kubelet passes them.
func (l *Lab) addPod(ctx context.Context, node string, capArgs map[string]any) (Pod, error) {
	l.mu.Lock()
	cni := l.cni[node]
	j := len(l.state.PodsOf(node)) + 1
	var k int
	for _, n := range l.state.Nodes {
		if n.Name == node {
			k = n.Index
		}
	}
	l.mu.Unlock()
	if cni == nil || k == 0 {
		return Pod{}, fmt.Errorf("add pod: node %s is not ready", node)
	}
	name := PodName(l.cfg.Prefix, k, j)
	l.mu.Lock()
	// After a RemovePod the count may name a live pod: take a free name.
	for _, taken := l.state.Pod(name); taken; _, taken = l.state.Pod(name) {
		j++
		name = PodName(l.cfg.Prefix, k, j)
	}
	l.mu.Unlock()
	if err := namedns.Create(name); err != nil {
		return Pod{}, err
	}
	if err := withoutDAD(name, l.cfg.DualStack); err != nil {
		return Pod{}, err
	}
	// Record the pod before attaching: a half-attached pod is still removed.
	pod := Pod{Name: name, Node: node}
	l.mu.Lock()
	l.state.Pods = append(l.state.Pods, pod)
	err := l.state.save()
	l.mu.Unlock()
	if err != nil {
		return Pod{}, err
	}
	h, err := HandleAt(name)
	if err != nil {
		return Pod{}, err
	}
	err = linkUp(h, "lo")
	h.Close()
	if err != nil {
		return Pod{}, fmt.Errorf("pod %s: %w", name, err)
	}
	ip, ip6, err := cni.attach(ctx, name, capArgs)
	if err != nil {
		return Pod{}, err
	}
	pod.IP = ip.String()
	if ip6.IsValid() {
		pod.IP6 = ip6.String()
	}
	l.mu.Lock()
	for i := range l.state.Pods {
		if l.state.Pods[i].Name == name {
			l.state.Pods[i].IP, l.state.Pods[i].IP6 = pod.IP, pod.IP6
		}
	}
	err = l.state.save()
	l.mu.Unlock()
	l.log.Info("pod ready", "pod", name, "node", node, "addr", pod.IP, "addr6", pod.IP6)
	return pod, err
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
