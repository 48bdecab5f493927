package kube

import (
	"bytes"
	"fmt"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/hgw-ebpf/hgw-ebpf/internal/registry"
)

// Skip reasons of Nodes, besides registry's (ReasonBadPublicIP,
// ReasonOutsideNetwork, ReasonBackend).
const ReasonBadPodCIDR = "bad_pod_cidr" // spec.podCIDR(s) missing, unparsable, or more than one per family

// KeyPrefix starts the Key of every lease this manager gives: the Node's
// name follows.
const KeyPrefix = "node/"

// podCIDRs are a Node's pod subnets by family, read as flanneld reads
// them: spec.podCIDRs when set (one or two entries), else spec.podCIDR.
// Both are zero before kube-controller-manager has allocated them.
func podCIDRs(n *corev1.Node) (v4, v6 netip.Prefix, err error) {
	cidrs := n.Spec.PodCIDRs
	if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
		cidrs = []string{n.Spec.PodCIDR}
	}
	if len(cidrs) > 2 {
		return v4, v6, fmt.Errorf("node %s has %d podCIDRs %v: want one per IP family", n.Name, len(cidrs), cidrs)
	}
	for _, c := range cidrs {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("node %s: podCIDR %q: %w", n.Name, c, err)
		}
		p = p.Masked()
		switch {
		case p.Addr().Is4() && !v4.IsValid():
			v4 = p
		case p.Addr().Is6() && !p.Addr().Is4In6() && !v6.IsValid():
			v6 = p
		default:
			return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("node %s: podCIDRs %v: want one per IP family", n.Name, cidrs)
		}
	}
	return v4, v6, nil
}

// nodeLease turns a Node into a lease, as flanneld's nodeToLease does.
// ok is false for a Node without the kube-subnet-manager annotation: no
// flannel agent runs there (yet), and it is nobody's business to route it.
func (m *Manager) nodeLease(cfg registry.Config, n *corev1.Node) (l registry.Lease, sk *registry.Skipped, ok bool) {
	if n.Annotations[m.ann.managed] != "true" {
		return registry.Lease{}, nil, false
	}
	key := KeyPrefix + n.Name
	skip := func(reason string, err error) (registry.Lease, *registry.Skipped, bool) {
		return registry.Lease{}, &registry.Skipped{Key: key, Reason: reason, Err: err}, true
	}
	v4, v6, err := podCIDRs(n)
	if err != nil {
		return skip(ReasonBadPodCIDR, err)
	}
	if !v4.IsValid() {
		return skip(ReasonBadPodCIDR, fmt.Errorf("node %s has no IPv4 podCIDR", n.Name))
	}
	attrs := registry.LeaseAttrs{
		PublicIP:    n.Annotations[m.ann.publicIP],
		BackendType: n.Annotations[m.ann.backendType],
		BackendData: registry.RawJSON(n.Annotations[m.ann.backendData]),
	}
	ip, valid := registry.ParsePublicIP(attrs.PublicIP)
	if !valid {
		return skip(registry.ReasonBadPublicIP, fmt.Errorf("node %s: annotation %s=%q is not an IPv4 address", n.Name, m.ann.publicIP, attrs.PublicIP))
	}
	if !registry.InNetwork(cfg.Network, v4) {
		return skip(registry.ReasonOutsideNetwork, fmt.Errorf("node %s: podCIDR %s is outside the network %s", n.Name, v4, cfg.Network))
	}
	if cfg.OtherBackend(attrs.BackendType) {
		return skip(registry.ReasonBackend, fmt.Errorf("node %s: backend %q, the network uses %q", n.Name, attrs.BackendType, cfg.BackendType))
	}
	l = registry.Lease{Key: key, Subnet: v4, PublicIP: ip, Attrs: attrs}
	// The IPv6 half, as the etcd registry takes it: only with EnableIPv6;
	// a node without it (no IPv6 podCIDR or address) is an IPv4-only
	// lease, a malformed address or a podCIDR outside the IPv6 network
	// makes the Node suspect.
	if !cfg.EnableIPv6 || !v6.IsValid() || n.Annotations[m.ann.publicIPv6] == "" {
		return l, nil, true
	}
	ip6, valid := registry.ParsePublicIPv6(n.Annotations[m.ann.publicIPv6])
	if !valid {
		return skip(registry.ReasonBadPublicIP, fmt.Errorf("node %s: annotation %s=%q is not an IPv6 address", n.Name, m.ann.publicIPv6, n.Annotations[m.ann.publicIPv6]))
	}
	if !registry.InNetwork(cfg.IPv6Network, v6) {
		return skip(registry.ReasonOutsideNetwork, fmt.Errorf("node %s: IPv6 podCIDR %s is outside the IPv6 network %s", n.Name, v6, cfg.IPv6Network))
	}
	l.IPv6Subnet, l.PublicIPv6 = v6, ip6
	l.Attrs.PublicIPv6, l.Attrs.BackendV6Data = ip6.String(), registry.RawJSON(n.Annotations[m.ann.backendV6Data])
	return l, nil, true
}

// nodeChanged records what a Node added or updated means for its lease.
func (m *Manager) nodeChanged(obj any) {
	if n, ok := obj.(*corev1.Node); ok {
		m.record(n, false)
	}
}

// nodeDeleted drops a Node's lease: it vanishes with its Node.
func (m *Manager) nodeDeleted(obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	if n, ok := obj.(*corev1.Node); ok {
		m.record(n, true)
	}
}

// record sets Node n's entry (none if deleted) and wakes the watchers
// when its lease changed: a Node's status changes every few seconds, and
// the informer's resync replays every Node, with no news for a lease.
func (m *Manager) record(n *corev1.Node, deleted bool) {
	if n.Name == m.o.NodeName {
		signal(m.ownCh)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cfg == nil {
		return
	}
	var l registry.Lease
	var sk *registry.Skipped
	ok := false
	if !deleted {
		l, sk, ok = m.nodeLease(*m.cfg, n)
	}
	key := KeyPrefix + n.Name
	oldL, hadL := m.table.Get(key)
	oldS, hadS := m.table.Skip(key)
	switch {
	case !ok:
		if !hadL && !hadS {
			return
		}
		m.table.Remove(key)
	case sk != nil:
		m.table.PutSkipped(*sk)
		if hadS && oldS.Reason == sk.Reason && oldS.Err.Error() == sk.Err.Error() {
			return
		}
		m.log.Warn("skipping Node", "key", sk.Key, "reason", sk.Reason, "err", sk.Err)
	default:
		if hadL && sameLease(oldL, l) {
			return
		}
		m.table.Put(l)
	}
	m.changed[key] = struct{}{}
	m.changedLocked()
}

// changedLocked counts a lease change and wakes Watch; m.mu is held.
func (m *Manager) changedLocked() {
	if m.hooks.Event != nil {
		m.hooks.Event()
	}
	signal(m.leaseCh)
}

func sameLease(a, b registry.Lease) bool {
	return a.Key == b.Key && a.Subnet == b.Subnet && a.IPv6Subnet == b.IPv6Subnet && a.PublicIP == b.PublicIP &&
		a.PublicIPv6 == b.PublicIPv6 && a.Attrs.PublicIP == b.Attrs.PublicIP && a.Attrs.PublicIPv6 == b.Attrs.PublicIPv6 &&
		a.Attrs.BackendType == b.Attrs.BackendType && bytes.Equal(a.Attrs.BackendData, b.Attrs.BackendData) &&
		bytes.Equal(a.Attrs.BackendV6Data, b.Attrs.BackendV6Data)
}
