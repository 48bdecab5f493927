package datapath

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/hgw-ebpf/hgw-ebpf/internal/nldump"
)

// Endpoint is one entry of the pinned `endpoints` map: a pod on this node
// that from_underlay hands packets to with bpf_redirect_peer, as its
// gateway would at L2.
type Endpoint struct {
	IP         netip.Addr       `json:"ip"`          // one of the pod's addresses, IPv4 or IPv6
	Ifindex    uint32           `json:"ifindex"`     // its host-side veth
	PodMAC     net.HardwareAddr `json:"pod_mac"`     // its own interface's MAC
	GatewayMAC net.HardwareAddr `json:"gateway_mac"` // the bridge's MAC
	// Shaped says a qdisc on the veth shapes what the pod receives (the CNI
	// bandwidth plugin's ingress limit), so from_underlay delivers through
	// the bridge, not bpf_redirect_peer. Put finds it out from the kernel;
	// what the caller sets is ignored.
	Shaped bool `json:"shaped"`
}

// Endpoints gives typed access to the `endpoints` hash.
func (m *Maps) Endpoints() *EndpointMap { return &EndpointMap{m: m.maps.Endpoints} }

// EndpointMap is the `endpoints` map of local pods.
type EndpointMap struct{ m *ebpf.Map }

// endpointKey keys a pod address by family: an IPv4 address in the first 4
// bytes (AF_INET), an IPv6 one in all 16 (AF_INET6).
func endpointKey(ip netip.Addr) (hgwEndpointKey, error) {
	switch {
	case ip.Is4():
		k := hgwEndpointKey{Family: unix.AF_INET}
		a := ip.As4()
		copy(k.Addr[:], a[:])
		return k, nil
	case ip.Is6() && !ip.Is4In6() && ip.Zone() == "" && !ip.IsLinkLocalUnicast():
		return hgwEndpointKey{Family: unix.AF_INET6, Addr: ip.As16()}, nil
	}
	return hgwEndpointKey{}, fmt.Errorf("endpoint address %q is neither IPv4 nor a global IPv6 address", ip)
}

func endpointAddr(key hgwEndpointKey) netip.Addr {
	if key.Family == unix.AF_INET {
		return netip.AddrFrom4([4]byte(key.Addr[:4]))
	}
	return netip.AddrFrom16(key.Addr)
}

func mac6(name string, hw net.HardwareAddr) ([6]uint8, error) {
	var out [6]uint8
	if len(hw) != len(out) {
		return out, fmt.Errorf("%s %q is not an Ethernet MAC", name, hw)
	}
	copy(out[:], hw)
	return out, nil
}

// Put inserts or overwrites the entry for e.IP in one update.
func (r *EndpointMap) Put(e Endpoint) error {
	key, err := endpointKey(e.IP)
	if err != nil {
		return err
	}
	// Ifindex 0 would make bpf_redirect_peer drop every packet to the pod.
	if e.Ifindex == 0 {
		return fmt.Errorf("endpoint %s: no veth ifindex", e.IP)
	}
	val := hgwEndpointValue{Ifindex: e.Ifindex}
	if val.PodMac, err = mac6("pod MAC", e.PodMAC); err != nil {
		return fmt.Errorf("endpoint %s: %w", e.IP, err)
	}
	if val.GatewayMac, err = mac6("gateway MAC", e.GatewayMAC); err != nil {
		return fmt.Errorf("endpoint %s: %w", e.IP, err)
	}
	shaped, err := vethShaped(e.Ifindex)
	if err != nil {
		return fmt.Errorf("endpoint %s: %w", e.IP, err)
	}
	if shaped {
		val.Flags |= uint32(hgwEndpointFlagENDPOINT_F_SHAPED)
	}
	if err := r.m.Put(&key, &val); err != nil {
		return fmt.Errorf("put endpoint %s in endpoints map: %w", e.IP, err)
	}
	return nil
}

// Delete removes the entry for ip; a missing entry is not an error.
func (r *EndpointMap) Delete(ip netip.Addr) error {
	key, err := endpointKey(ip)
	if err != nil {
		return err
	}
	if err := r.m.Delete(&key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete endpoint %s from endpoints map: %w", ip, err)
	}
	return nil
}

// DeleteIf removes want.IP's entry if it still is want, and reports
// whether it did: a caller that decided from an earlier read must not
// delete an entry someone rewrote since (a new pod that got the address).
// The kernel has no compare-and-delete; taking the entry out atomically
// (BPF_MAP_LOOKUP_AND_DELETE_ELEM, kernel >= 5.14) and putting it back
// unless a writer re-created it meanwhile loses no newer entry; the price
// is that a live entry is missing for the microseconds in between, and
// its packets take the bridge path. Older kernels read, compare and
// delete: a write between the read and the delete is lost there, until
// the agent learns the pod again.
func (r *EndpointMap) DeleteIf(want Endpoint) (bool, error) {
	key, err := endpointKey(want.IP)
	if err != nil {
		return false, err
	}
	var val hgwEndpointValue
	err = r.m.LookupAndDelete(&key, &val)
	if errors.Is(err, ebpf.ErrNotSupported) {
		return r.readCompareDelete(key, want)
	}
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("take endpoint %s from endpoints map: %w", want.IP, err)
	}
	if endpointOf(key, val).Equal(want) {
		return true, nil
	}
	if err := r.m.Update(&key, &val, ebpf.UpdateNoExist); err != nil && !errors.Is(err, ebpf.ErrKeyExist) {
		return false, fmt.Errorf("put back endpoint %s (it changed since it was read): %w", want.IP, err)
	}
	return false, nil
}

func (r *EndpointMap) readCompareDelete(key hgwEndpointKey, want Endpoint) (bool, error) {
	var val hgwEndpointValue
	if err := r.m.Lookup(&key, &val); errors.Is(err, ebpf.ErrKeyNotExist) {
		return false, nil
	} else if err != nil {
		return false, fmt.Errorf("look up endpoint %s: %w", want.IP, err)
	}
	if !endpointOf(key, val).Equal(want) {
		return false, nil
	}
	if err := r.m.Delete(&key); errors.Is(err, ebpf.ErrKeyNotExist) {
		return false, nil
	} else if err != nil {
		return false, fmt.Errorf("delete endpoint %s from endpoints map: %w", want.IP, err)
	}
	return true, nil
}

// Equal reports whether e and o are the same entry.
func (e Endpoint) Equal(o Endpoint) bool {
	return e.IP == o.IP && e.Ifindex == o.Ifindex &&
		e.PodMAC.String() == o.PodMAC.String() && e.GatewayMAC.String() == o.GatewayMAC.String()
}

// Get returns the entry for ip; ok is false when there is none.
func (r *EndpointMap) Get(ip netip.Addr) (e Endpoint, ok bool, err error) {
	key, err := endpointKey(ip)
	if err != nil {
		return Endpoint{}, false, err
	}
	var val hgwEndpointValue
	if err := r.m.Lookup(&key, &val); errors.Is(err, ebpf.ErrKeyNotExist) {
		return Endpoint{}, false, nil
	} else if err != nil {
		return Endpoint{}, false, fmt.Errorf("look up endpoint %s: %w", ip, err)
	}
	return endpointOf(key, val), true, nil
}

func endpointOf(key hgwEndpointKey, val hgwEndpointValue) Endpoint {
	return Endpoint{
		IP:         endpointAddr(key),
		Ifindex:    val.Ifindex,
		PodMAC:     net.HardwareAddr(val.PodMac[:]),
		GatewayMAC: net.HardwareAddr(val.GatewayMac[:]),
		Shaped:     val.Flags&uint32(hgwEndpointFlagENDPOINT_F_SHAPED) != 0,
	}
}

// vethShaped reports whether the device ifindex of this network namespace
// has a root qdisc other than noqueue (a veth's own): one that shapes what
// it sends. A device that is gone shapes nothing.
func vethShaped(ifindex uint32) (bool, error) {
	l, err := netlink.LinkByIndex(int(ifindex))
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("look up veth %d: %w", ifindex, err)
	}
	qs, err := nldump.Retry(func() ([]netlink.Qdisc, error) { return netlink.QdiscList(l) })
	if err != nil {
		return false, fmt.Errorf("list qdiscs of %s: %w", l.Attrs().Name, err)
	}
	for _, q := range qs {
		if q.Attrs().Parent == netlink.HANDLE_ROOT && q.Type() != "noqueue" {
			return true, nil
		}
	}
	return false, nil
}

// List returns every entry.
func (r *EndpointMap) List() ([]Endpoint, error) {
	return listAll(r.m, hgwMapEndpoints, endpointOf)
}

// DetachPinned removes program p from dev in either mode with nothing but
// the pin root, for callers that load no programs (the CNI plugin's DEL).
// Detaching what is not attached is not an error.
func DetachPinned(root, dev string, p Program) error { return detach(root, dev, p) }
