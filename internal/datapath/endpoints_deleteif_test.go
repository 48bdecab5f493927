package datapath

import (
	"net"
	"net/netip"
	"testing"
)

// DeleteIf, and the read-compare-delete it falls back to on kernels
// without lookup-and-delete for hashes (< 5.14), forced here: an entry is
// deleted only while it is exactly the one the caller means.
func TestEndpointDeleteIf(t *testing.T) {
	root := layoutTestRoot(t)
	dp, err := Load(Options{PinRoot: root})
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	eps := dp.Endpoints()
	ip := netip.MustParseAddr("10.244.1.9")
	want := Endpoint{IP: ip, Ifindex: 7, PodMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, GatewayMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}}
	others := map[string]Endpoint{
		"another veth":        {IP: ip, Ifindex: 8, PodMAC: want.PodMAC, GatewayMAC: want.GatewayMAC},
		"another pod MAC":     {IP: ip, Ifindex: 7, PodMAC: net.HardwareAddr{2, 0, 0, 0, 0, 3}, GatewayMAC: want.GatewayMAC},
		"another gateway MAC": {IP: ip, Ifindex: 7, PodMAC: want.PodMAC, GatewayMAC: net.HardwareAddr{2, 0, 0, 0, 0, 4}},
	}
	for name, deleteIf := range map[string]func(Endpoint) (bool, error){
		"DeleteIf": eps.DeleteIf,
		"read-compare-delete": func(e Endpoint) (bool, error) {
			key, err := endpointKey(e.IP)
			if err != nil {
				return false, err
			}
			return eps.readCompareDelete(key, e)
		},
	} {
		for what, in := range others {
			if err := eps.Put(in); err != nil {
				t.Fatal(err)
			}
			if deleted, err := deleteIf(want); deleted || err != nil {
				t.Errorf("%s with %s in the map: deleted %v, %v; want it kept", name, what, deleted, err)
			}
			if got, ok, err := eps.Get(ip); err != nil || !ok || !got.Equal(in) {
				t.Errorf("%s with %s in the map: entry now %+v (present %v, %v), want it unchanged", name, what, got, ok, err)
			}
		}
		if err := eps.Put(want); err != nil {
			t.Fatal(err)
		}
		if deleted, err := deleteIf(want); !deleted || err != nil {
			t.Errorf("%s of the entry itself: deleted %v, %v; want deleted", name, deleted, err)
		}
		if _, ok, _ := eps.Get(ip); ok {
			t.Errorf("%s: entry still there", name)
		}
		if deleted, err := deleteIf(want); deleted || err != nil {
			t.Errorf("%s of an absent entry: %v, %v; want false, nil", name, deleted, err)
		}
	}
}
