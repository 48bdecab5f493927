package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/hgw-ebpf/hgw-ebpf/internal/registry"
)

// backendType and backendData are what flanneld's host-gw backend
// publishes: it has no backend data, which flanneld writes as JSON null.
const (
	backendType = "host-gw"
	backendData = "null"
)

// waitLogEvery is how often a wait for the Node or its podCIDR is logged
// again.
const waitLogEvery = 30 * time.Second

// Acquire takes this node's lease: its Node's podCIDR, once the Node
// exists and has one (a wait logged when it starts and every 30 s:
// kube-controller-manager allocates podCIDRs, and an operator may set
// them), published with our public IP in the Node's annotations as
// flanneld writes them. A podCIDR outside the network is an error, as in
// flanneld. The annotation <prefix>/public-ip-overwrite, when set, is
// published as the public IP instead, and is the lease's PublicIP. With
// EnableIPv6 the lease carries the Node's IPv6 podCIDR too, published with
// opts.PublicIPv6 (or public-ipv6-overwrite) as flanneld's host-gw does.
func (m *Manager) Acquire(ctx context.Context, opts registry.AcquireOptions) (registry.Lease, error) {
	cfg, err := m.config()
	if err != nil {
		return registry.Lease{}, err
	}
	if err := opts.Check(cfg); err != nil {
		return registry.Lease{}, err
	}
	if err := m.run(ctx); err != nil {
		return registry.Lease{}, err
	}
	var waiting string
	var logged time.Time
	for {
		var why string
		n, ok := m.cachedNode()
		if !ok {
			why = "this node's Node object does not exist"
		} else {
			v4, v6, err := podCIDRs(n)
			if err != nil {
				return registry.Lease{}, err
			}
			if v4.IsValid() {
				return m.publish(ctx, cfg, n, v4, v6, opts)
			}
			why = "this node's Node has no IPv4 podCIDR yet (kube-controller-manager --allocate-node-cidrs sets spec.podCIDR, or an operator)"
		}
		if why != waiting || time.Since(logged) >= waitLogEvery {
			m.log.Warn("waiting for the node's subnet", "node", m.o.NodeName, "reason", why)
			waiting, logged = why, time.Now()
		}
		select {
		case <-ctx.Done():
			return registry.Lease{}, fmt.Errorf("waiting for node %s's subnet (%s): %w", m.o.NodeName, why, ctx.Err())
		case <-m.ownCh:
		case <-time.After(waitLogEvery):
		}
	}
}

// published are the public IPs the Node must announce: each overwrite
// annotation's, else ours (IPv6 only with EnableIPv6).
func (m *Manager) published(cfg registry.Config, n *corev1.Node, opts registry.AcquireOptions) (v4, v6 netip.Addr, err error) {
	pick := func(key string, ours netip.Addr, family string, parse func(string) (netip.Addr, bool)) (netip.Addr, error) {
		ov := n.Annotations[key]
		if ov == "" {
			return ours, nil
		}
		ip, ok := parse(ov)
		if !ok {
			return netip.Addr{}, fmt.Errorf("node %s: annotation %s=%q is not an %s address", n.Name, key, ov, family)
		}
		return ip, nil
	}
	if v4, err = pick(m.ann.publicIPOverride, opts.PublicIP, "IPv4", registry.ParsePublicIP); err != nil || !cfg.EnableIPv6 {
		return v4, netip.Addr{}, err
	}
	v6, err = pick(m.ann.publicIPv6Over, opts.PublicIPv6, "IPv6", registry.ParsePublicIPv6)
	return v4, v6, err
}

// wanted are the annotations this node's Node must carry: flanneld's
// host-gw writes the IPv6 pair whenever it has a public IPv6.
func (m *Manager) wanted(v4, v6 netip.Addr) map[string]string {
	w := map[string]string{
		m.ann.managed:     "true",
		m.ann.backendType: backendType,
		m.ann.backendData: backendData,
		m.ann.publicIP:    v4.String(),
	}
	if v6.IsValid() {
		w[m.ann.backendV6Data], w[m.ann.publicIPv6] = backendData, v6.String()
	}
	return w
}

// publish writes the lease's annotations on the Node where they differ,
// and returns the lease.
func (m *Manager) publish(ctx context.Context, cfg registry.Config, n *corev1.Node, v4, v6 netip.Prefix, opts registry.AcquireOptions) (registry.Lease, error) {
	if !registry.InNetwork(cfg.Network, v4) {
		return registry.Lease{}, fmt.Errorf("node %s's podCIDR %s is outside the network %s of %s: the cluster's --cluster-cidr and the network config must agree",
			n.Name, v4, cfg.Network, m.o.NetConfPath)
	}
	if !cfg.EnableIPv6 {
		v6 = netip.Prefix{}
	}
	if v6.IsValid() && !registry.InNetwork(cfg.IPv6Network, v6) {
		return registry.Lease{}, fmt.Errorf("node %s's IPv6 podCIDR %s is outside the IPv6 network %s of %s: the cluster's --cluster-cidr and the network config must agree",
			n.Name, v6, cfg.IPv6Network, m.o.NetConfPath)
	}
	if cfg.EnableIPv6 && !v6.IsValid() {
		m.log.Warn("the network config enables IPv6, and the Node has no IPv6 podCIDR: this node gets no IPv6 pod subnet", "node", n.Name)
	}
	ip, ip6, err := m.published(cfg, n, opts)
	if err != nil {
		return registry.Lease{}, err
	}
	if ip != opts.PublicIP || ip6 != opts.PublicIPv6 && cfg.EnableIPv6 {
		m.log.Info("publishing the public IPs the node's annotations say", "public_ip", ip, "public_ipv6", ip6)
	}
	changes := map[string]*string{}
	for k, v := range m.wanted(ip, ip6) {
		if got, ok := n.Annotations[k]; !ok || got != v {
			changes[k] = &v
		}
	}
	if len(changes) > 0 {
		if err := m.patchAnnotations(ctx, changes); err != nil {
			return registry.Lease{}, err
		}
		m.awaitCached(ctx, m.wanted(ip, ip6))
	}
	l := registry.Lease{
		Key: KeyPrefix + n.Name, Subnet: v4, PublicIP: ip,
		Attrs: registry.LeaseAttrs{PublicIP: ip.String(), BackendType: backendType, BackendData: json.RawMessage(backendData)},
	}
	if ip6.IsValid() {
		l.PublicIPv6, l.Attrs.PublicIPv6, l.Attrs.BackendV6Data = ip6, ip6.String(), json.RawMessage(backendData)
		l.IPv6Subnet = v6
	}
	m.log.Info("node annotated", "node", n.Name, "subnet", v4, "public_ip", ip, "ipv6_subnet", l.IPv6Subnet, "changed", len(changes))
	return l, nil
}

// awaitCached waits (5 s at most) until the informer's copy of the Node
// carries want: KeepAlive compares the Node with the lease, and a copy
// from before the patch would look like a lost lease.
func (m *Manager) awaitCached(ctx context.Context, want map[string]string) {
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		n, ok := m.cachedNode()
		done := ok
		for k, v := range want {
			done = done && n.Annotations[k] == v
		}
		if done {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// patchAnnotations sets (nil: removes) annotations of this node's Node
// through its status, as flanneld does (its ClusterRole may patch
// nodes/status, not nodes). It retries, with a growing pause, while the
// API server does not answer, until ctx ends.
func (m *Manager) patchAnnotations(ctx context.Context, set map[string]*string) error {
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": set}})
	if err != nil {
		return err
	}
	backoff := registry.NewBackoff(time.Second, 10*time.Second)
	for {
		err := m.client.patchNodeStatus(ctx, m.o.NodeName, types.MergePatchType, patch)
		if err == nil {
			return nil
		}
		if apierrors.IsForbidden(err) || apierrors.IsInvalid(err) || apierrors.IsNotFound(err) || apierrors.IsUnauthorized(err) {
			return fmt.Errorf("annotate node %s: %w", m.o.NodeName, err)
		}
		m.log.Warn("annotate node, retrying", "node", m.o.NodeName, "err", err, "retry_in", backoff.Delay())
		if !backoff.Sleep(ctx) {
			return fmt.Errorf("annotate node %s: %w (last: %v)", m.o.NodeName, ctx.Err(), err)
		}
	}
}

// KeepAlive keeps this node's lease published until ctx is done. A Node
// lease has no TTL; what can happen is that the Node is deleted (and maybe
// created again, as a node re-registers), or that its annotations are
// changed or removed, or its public-ip-overwrite set: then it acquires
// again, waiting for the Node as Acquire does, and reports the lease to
// onChange. flanneld does none of this; it would go on with a lease
// nobody sees.
func (m *Manager) KeepAlive(ctx context.Context, lease registry.Lease, opts registry.AcquireOptions, onChange func(registry.Lease)) error {
	if err := m.run(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	backoff := registry.NewBackoff(time.Second, 30*time.Second)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-m.ownCh:
		}
		why := m.lost(lease, opts)
		if why == "" {
			continue
		}
		m.log.Warn("own lease lost, acquiring again", "key", lease.Key, "reason", why)
		for {
			next, err := m.Acquire(ctx, opts)
			if ctx.Err() != nil {
				return nil
			}
			if err == nil {
				lease = next
				backoff.Reset()
				onChange(lease)
				break
			}
			m.log.Error("re-acquire lease", "err", err, "retry_in", backoff.Delay())
			if !backoff.Sleep(ctx) {
				return nil
			}
		}
	}
}

// lost says why the Node no longer carries lease ("" if it does).
func (m *Manager) lost(lease registry.Lease, opts registry.AcquireOptions) string {
	cfg, err := m.config()
	if err != nil {
		return err.Error()
	}
	n, ok := m.cachedNode()
	if !ok {
		return "Node deleted"
	}
	v4, v6, err := podCIDRs(n)
	if !cfg.EnableIPv6 || !lease.PublicIPv6.IsValid() {
		v6 = netip.Prefix{}
	}
	if err != nil || v4 != lease.Subnet || v6 != lease.IPv6Subnet {
		return fmt.Sprintf("podCIDRs are now %v", n.Spec.PodCIDRs)
	}
	ip, ip6, err := m.published(cfg, n, opts)
	if err != nil {
		return err.Error()
	}
	for k, v := range m.wanted(ip, ip6) {
		if n.Annotations[k] != v {
			return fmt.Sprintf("annotation %s is %q, want %q", k, n.Annotations[k], v)
		}
	}
	if ip != lease.PublicIP || ip6 != lease.PublicIPv6 {
		return fmt.Sprintf("public IPs are now %s, %s", ip, ip6)
	}
	return ""
}

// Release removes this node's lease annotations, if its Node holds
// subnet and publishes publicIP (or the IP its public-ip-overwrite
// names), so that every agent drops its routes to the node at once. A
// Node that is gone, or carries no lease, has nothing to release.
func (m *Manager) Release(ctx context.Context, subnet netip.Prefix, publicIP netip.Addr) error {
	n, err := m.client.node(ctx, m.o.NodeName)
	if apierrors.IsNotFound(err) {
		m.log.Info("no lease to release: no Node", "node", m.o.NodeName)
		return nil
	}
	if err != nil {
		return fmt.Errorf("read node %s: %w", m.o.NodeName, err)
	}
	if n.Annotations[m.ann.managed] != "true" {
		m.log.Info("no lease to release: the Node carries none", "node", n.Name)
		return nil
	}
	if v4, _, err := podCIDRs(n); err != nil || v4 != subnet.Masked() {
		return fmt.Errorf("release node %s's lease of %s: its podCIDRs are %v", n.Name, subnet, n.Spec.PodCIDRs)
	}
	pub := n.Annotations[m.ann.publicIP]
	if pub != publicIP.String() && pub != n.Annotations[m.ann.publicIPOverride] {
		return fmt.Errorf("release node %s's lease: it names public IP %q, not %s", n.Name, pub, publicIP)
	}
	del := map[string]*string{}
	for _, k := range m.ann.ours() {
		if _, ok := n.Annotations[k]; ok {
			del[k] = nil
		}
	}
	if err := m.patchAnnotations(ctx, del); err != nil {
		return err
	}
	m.log.Info("lease released", "node", n.Name, "subnet", subnet, "public_ip", pub)
	return nil
}

// ReportReady sets the Node's NetworkUnavailable condition to False, as
// flanneld does once it runs (--set-node-network-unavailable): clusters
// whose cloud provider sets the condition True at registration wait for
// it. Off by Options.SetNodeNetworkUnavailable.
func (m *Manager) ReportReady(ctx context.Context) error {
	if !m.o.SetNodeNetworkUnavailable {
		return nil
	}
	now := metav1.Now()
	cond := corev1.NodeCondition{
		Type: corev1.NodeNetworkUnavailable, Status: corev1.ConditionFalse,
		Reason: "HgwEbpfIsUp", Message: "hgw-ebpf is running on this node",
		LastTransitionTime: now, LastHeartbeatTime: now,
	}
	patch, err := json.Marshal(map[string]any{"status": map[string]any{"conditions": []corev1.NodeCondition{cond}}})
	if err != nil {
		return err
	}
	// Strategic: conditions merge by type, the others stay.
	if err := m.client.patchNodeStatus(ctx, m.o.NodeName, types.StrategicMergePatchType, patch); err != nil {
		return fmt.Errorf("set node %s's NetworkUnavailable condition to False: %w", m.o.NodeName, err)
	}
	return nil
}
