package registry

import (
	"cmp"
	"encoding/binary"
	"math/bits"
	"net/netip"
)

// u128 is an address as a number, for the subnet arithmetic of both
// families: an IPv4 address is its 32-bit value, so a walk over IPv4
// subnets can pass 255.255.255.255 without wrapping.
type u128 struct{ hi, lo uint64 }

func addrNum(a netip.Addr) u128 {
	if a.Is4() {
		b := a.As4()
		return u128{lo: uint64(binary.BigEndian.Uint32(b[:]))}
	}
	b := a.As16()
	return u128{binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])}
}

// addr is u as an address of the family of like.
func (u u128) addr(like netip.Addr) netip.Addr {
	if like.Is4() {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], uint32(u.lo))
		return netip.AddrFrom4(b)
	}
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], u.hi)
	binary.BigEndian.PutUint64(b[8:], u.lo)
	return netip.AddrFrom16(b)
}

// NextPrefix is the prefix of p's length right after p (the family's
// first one after its last).
func NextPrefix(p netip.Prefix) netip.Prefix {
	next, _ := addrNum(p.Addr()).add(pow2(p.Addr().BitLen() - p.Bits()))
	return netip.PrefixFrom(next.addr(p.Addr()), p.Bits())
}

// pow2 is 1<<n, for n < 128.
func pow2(n int) u128 {
	if n >= 64 {
		return u128{hi: 1 << (n - 64)}
	}
	return u128{lo: 1 << n}
}

// add returns u+v and whether it overflowed 128 bits.
func (u u128) add(v u128) (u128, bool) {
	lo, c := bits.Add64(u.lo, v.lo, 0)
	hi, c := bits.Add64(u.hi, v.hi, c)
	return u128{hi, lo}, c != 0
}

func (u u128) sub(v u128) u128 {
	lo, b := bits.Sub64(u.lo, v.lo, 0)
	hi, _ := bits.Sub64(u.hi, v.hi, b)
	return u128{hi, lo}
}

func (u u128) cmp(v u128) int {
	if c := cmp.Compare(u.hi, v.hi); c != 0 {
		return c
	}
	return cmp.Compare(u.lo, v.lo)
}
