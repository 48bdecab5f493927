package datapath_test

// A hand-written mirror of the kernel's struct __sk_buff for test-run
// contexts: bpf2go cannot generate it (no map or -type reaches it).

import (
	"encoding/binary"
	"reflect"
	"testing"
	"unsafe"

	"github.com/cilium/ebpf/btf"
)

// skbContext mirrors the first fields of the kernel's struct __sk_buff
// (include/uapi/linux/bpf.h) for test runs that need one. The kernel
// rejects non-zero values in the fields it does not take (len, pkt_type,
// protocol, ...) with EINVAL; gso_segs and gso_size are taken. Every field
// is declared, so encoding/binary lays it out without hidden padding; the
// btf tags let TestSKBContextLayout check the offsets against the running
// kernel's BTF.
type skbContext struct {
	Len            uint32    `btf:"len"`
	PktType        uint32    `btf:"pkt_type"`
	Mark           uint32    `btf:"mark"`
	QueueMapping   uint32    `btf:"queue_mapping"`
	Protocol       uint32    `btf:"protocol"`
	VlanPresent    uint32    `btf:"vlan_present"`
	VlanTCI        uint32    `btf:"vlan_tci"`
	VlanProto      uint32    `btf:"vlan_proto"`
	Priority       uint32    `btf:"priority"`
	IngressIfindex uint32    `btf:"ingress_ifindex"`
	Ifindex        uint32    `btf:"ifindex"`
	TCIndex        uint32    `btf:"tc_index"`
	CB             [5]uint32 `btf:"cb"`
	Hash           uint32    `btf:"hash"`
	TCClassid      uint32    `btf:"tc_classid"`
	Data           uint32    `btf:"data"`
	DataEnd        uint32    `btf:"data_end"`
	NapiID         uint32    `btf:"napi_id"`
	Family         uint32    `btf:"family"`
	RemoteIP4      uint32    `btf:"remote_ip4"`
	LocalIP4       uint32    `btf:"local_ip4"`
	RemoteIP6      [4]uint32 `btf:"remote_ip6"`
	LocalIP6       [4]uint32 `btf:"local_ip6"`
	RemotePort     uint32    `btf:"remote_port"`
	LocalPort      uint32    `btf:"local_port"`
	DataMeta       uint32    `btf:"data_meta"`
	FlowKeys       uint64    // anonymous union in BTF
	Tstamp         uint64    `btf:"tstamp"`
	WireLen        uint32    `btf:"wire_len"`
	GSOSegs        uint32    `btf:"gso_segs"`
	SK             uint64    // anonymous union in BTF
	GSOSize        uint32    `btf:"gso_size"`
	TstampType     uint32    `btf:"tstamp_type"` // u8 + 24 bits of padding
	HWTstamp       uint64    `btf:"hwtstamp"`
}

func TestSKBContextLayout(t *testing.T) {
	if got, want := binary.Size(skbContext{}), int(unsafe.Sizeof(skbContext{})); got != want {
		t.Fatalf("binary size %d != Go size %d: hidden padding", got, want)
	}
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		t.Skipf("no kernel BTF to check against: %v", err)
	}
	var s *btf.Struct
	if err := spec.TypeByName("__sk_buff", &s); err != nil {
		t.Fatalf("__sk_buff in kernel BTF: %v", err)
	}
	offsets := map[string]uint32{}
	for _, m := range s.Members {
		offsets[m.Name] = m.Offset.Bytes()
	}
	if int(s.Size) != binary.Size(skbContext{}) {
		t.Errorf("kernel __sk_buff is %d bytes, mirror %d (fine while the kernel only grows it, but check)", s.Size, binary.Size(skbContext{}))
	}
	typ := reflect.TypeFor[skbContext]()
	for i := range typ.NumField() {
		f := typ.Field(i)
		name := f.Tag.Get("btf")
		if name == "" {
			continue
		}
		off, ok := offsets[name]
		if !ok {
			t.Errorf("kernel __sk_buff has no member %s", name)
			continue
		}
		if uintptr(off) != f.Offset {
			t.Errorf("%s: kernel offset %d, mirror %d", name, off, f.Offset)
		}
	}
}
