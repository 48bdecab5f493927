package peers

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
	"github.com/hgw-ebpf/hgw-ebpf/internal/nldump"
)

// RouteProtocol tags the kernel routes and nexthop objects the agent owns:
// `proto 104` in `ip route` and `ip nexthop`. 104 is not assigned in the
// kernel's rtnetlink.h nor in iproute2's rt_protos (boot=3, static=4,
// bird=12, bgp=186, ...), so no other routing daemon uses it. Only routes
// and nexthops with this tag are ever deleted; a flanneld route (proto
// boot) for a peer's subnet is replaced by ours, which is how a node
// migrates from flanneld without a gap.
const RouteProtocol netlink.RouteProtocol = 104

// rtaNHID is RTA_NH_ID, the nexthop object a route uses (kernel >= 5.3),
// which golang.org/x/sys/unix does not name.
const rtaNHID = 30

// kroute is one route as the kernel lists it, or as Apply writes it.
type kroute struct {
	family    Family
	dst       netip.Prefix
	table     uint32
	protocol  uint8
	scope     uint8
	typ       uint8
	tos       uint8
	priority  uint32
	oif       int
	gw        netip.Addr // from RTA_GATEWAY (also given for nexthop routes unless nexthop_compat_mode=0)
	nhid      uint32     // the nexthop object, 0 for a plain route
	multipath bool
}

func (k kroute) ours() bool { return k.protocol == uint8(RouteProtocol) }

// keyed tells whether k sits where Apply's routes sit: the kernel's
// replace matches destination, TOS and metric, whatever the protocol.
func (k kroute) keyed() bool {
	return k.table == unix.RT_TABLE_MAIN && k.tos == 0 && k.priority == k.family.metric()
}

// flanneld tells a route flanneld's host-gw backend installs: protocol
// boot, a plain gateway route on the underlay device. Apply replaces
// such a route in place when a node moves over from flanneld.
func (k kroute) flanneld(underlay int) bool {
	return k.protocol == unix.RTPROT_BOOT && k.typ == unix.RTN_UNICAST && k.gw.IsValid() &&
		k.nhid == 0 && !k.multipath && k.oif == underlay
}

// local tells a connected or local route: a destination on this node,
// not behind a gateway.
func (k kroute) local() bool {
	if k.dst.Bits() == 0 || k.gw.IsValid() || k.nhid != 0 || k.multipath {
		return false
	}
	switch k.typ {
	case unix.RTN_UNICAST:
		// IPv6 routes have no scope: every one is "global", a connected
		// one too.
		return k.scope == unix.RT_SCOPE_LINK || k.scope == unix.RT_SCOPE_HOST || k.family == IPv6
	case unix.RTN_LOCAL, unix.RTN_BROADCAST:
		return true
	}
	return false
}

func (k kroute) String() string {
	via := "dev " + fmt.Sprint(k.oif)
	if k.gw.IsValid() {
		via = "via " + k.gw.String() + " " + via
	}
	if k.nhid != 0 {
		via = fmt.Sprintf("nhid %d %s", k.nhid, via)
	}
	return fmt.Sprintf("%s %s proto %d metric %d", k.dst, via, k.protocol, k.priority)
}

// parseRoute decodes an RTM_NEWROUTE body; false for anything but fam.
func parseRoute(b []byte, fam Family) (kroute, bool) {
	if len(b) < unix.SizeofRtMsg || b[0] != uint8(fam) {
		return kroute{}, false
	}
	k := kroute{family: fam, tos: b[3], table: uint32(b[4]), protocol: b[5], scope: b[6], typ: b[7]}
	dstLen := int(b[1])
	dst := netip.IPv4Unspecified()
	if fam == IPv6 {
		dst = netip.IPv6Unspecified()
	}
	walkAttrs(b[unix.SizeofRtMsg:], func(typ uint16, v []byte) {
		switch typ {
		case unix.RTA_DST:
			if a, ok := netip.AddrFromSlice(v); ok && fam.Has(a) {
				dst = a
			}
		case unix.RTA_TABLE:
			k.table = u32(v)
		case unix.RTA_PRIORITY:
			k.priority = u32(v)
		case unix.RTA_OIF:
			k.oif = int(u32(v))
		case unix.RTA_GATEWAY:
			if a, ok := netip.AddrFromSlice(v); ok && fam.Has(a) {
				k.gw = a
			}
		case rtaNHID:
			k.nhid = u32(v)
		case unix.RTA_MULTIPATH:
			k.multipath = true
		}
	})
	if dstLen > fam.bits() {
		return kroute{}, false
	}
	k.dst = netip.PrefixFrom(dst, dstLen)
	return k, true
}

// routeRequest is an RTM_NEWROUTE or RTM_DELROUTE for k.
func routeRequest(typ, flags uint16, k kroute) request {
	msg := nl.NewRtMsg()
	msg.Family = uint8(k.family)
	msg.Dst_len = uint8(k.dst.Bits())
	msg.Tos = k.tos
	msg.Table = unix.RT_TABLE_UNSPEC // RTA_TABLE below carries it
	msg.Protocol = k.protocol
	msg.Type = unix.RTN_UNICAST
	msg.Scope = unix.RT_SCOPE_UNIVERSE
	if typ == unix.RTM_DELROUTE {
		msg.Scope = unix.RT_SCOPE_NOWHERE // any scope: match by the fields below
		msg.Type = k.typ
	}
	data := []nl.NetlinkRequestData{
		msg,
		nl.NewRtAttr(unix.RTA_DST, k.dst.Masked().Addr().AsSlice()),
		nl.NewRtAttr(unix.RTA_TABLE, nl.Uint32Attr(k.table)),
	}
	if k.priority != 0 {
		data = append(data, nl.NewRtAttr(unix.RTA_PRIORITY, nl.Uint32Attr(k.priority)))
	}
	if k.nhid != 0 {
		data = append(data, nl.NewRtAttr(rtaNHID, nl.Uint32Attr(k.nhid)))
	} else {
		if k.gw.IsValid() {
			data = append(data, nl.NewRtAttr(unix.RTA_GATEWAY, k.gw.AsSlice()))
		}
		if k.oif > 0 {
			data = append(data, nl.NewRtAttr(unix.RTA_OIF, nl.Uint32Attr(uint32(k.oif))))
		}
	}
	return request{typ: typ, flags: flags, data: data}
}

// peerRoute is the route Apply installs for one peer: through nexthop
// object nhid, or a plain gateway route when nhid is 0.
func peerRoute(subnet netip.Prefix, e entry, nhid uint32) kroute {
	fam := familyOf(subnet.Addr())
	return kroute{family: fam, dst: subnet.Masked(), table: unix.RT_TABLE_MAIN, protocol: uint8(RouteProtocol),
		typ: unix.RTN_UNICAST, priority: fam.metric(), oif: e.ifindex, gw: e.nexthop, nhid: nhid}
}

// nhmsg is struct nhmsg (linux/nexthop.h), the header of nexthop messages.
type nhmsg struct {
	family, scope, protocol uint8
	flags                   uint32
}

func (m *nhmsg) Len() int { return unix.SizeofNhmsg }

func (m *nhmsg) Serialize() []byte {
	b := make([]byte, unix.SizeofNhmsg)
	b[0], b[1], b[2] = m.family, m.scope, m.protocol
	binary.NativeEndian.PutUint32(b[4:], m.flags)
	return b
}

// knexthop is one nexthop object as the kernel lists it.
type knexthop struct {
	id        uint32
	family    uint8
	protocol  uint8
	oif       int
	gw        netip.Addr
	blackhole bool
	group     bool
}

func (n knexthop) ours() bool { return n.protocol == uint8(RouteProtocol) }

// oursIn tells an object of ours that the Reconciler of fam manages: the
// other family's are the other Reconciler's.
func (n knexthop) oursIn(fam Family) bool { return n.ours() && n.family == uint8(fam) }

// serves tells whether n is exactly the nexthop Apply wants for e.
func (n knexthop) serves(e entry) bool {
	return n.oursIn(familyOf(e.nexthop)) && !n.blackhole && !n.group && n.gw == e.nexthop && n.oif == e.ifindex
}

func parseNexthop(b []byte) (knexthop, bool) {
	if len(b) < unix.SizeofNhmsg {
		return knexthop{}, false
	}
	n := knexthop{family: b[0], protocol: b[2]}
	walkAttrs(b[unix.SizeofNhmsg:], func(typ uint16, v []byte) {
		switch typ {
		case unix.NHA_ID:
			n.id = u32(v)
		case unix.NHA_OIF:
			n.oif = int(u32(v))
		case unix.NHA_GATEWAY:
			if a, ok := netip.AddrFromSlice(v); ok {
				n.gw = a.Unmap()
			}
		case unix.NHA_BLACKHOLE:
			n.blackhole = true
		case unix.NHA_GROUP:
			n.group = true
		}
	})
	return n, n.id != 0
}

// nexthopRequest is an RTM_NEWNEXTHOP for e (flags say create or replace)
// or an RTM_DELNEXTHOP of id.
func nexthopRequest(typ, flags uint16, id uint32, e entry) request {
	data := []nl.NetlinkRequestData{
		&nhmsg{family: uint8(familyOf(e.nexthop)), protocol: uint8(RouteProtocol)},
		nl.NewRtAttr(unix.NHA_ID, nl.Uint32Attr(id)),
	}
	if typ == unix.RTM_DELNEXTHOP {
		data[0] = &nhmsg{family: unix.AF_UNSPEC}
	} else {
		data = append(data,
			nl.NewRtAttr(unix.NHA_GATEWAY, e.nexthop.AsSlice()),
			nl.NewRtAttr(unix.NHA_OIF, nl.Uint32Attr(uint32(e.ifindex))))
	}
	return request{typ: typ, flags: flags, data: data}
}

// listRoutes dumps the main table's routes of fam.
func (c *conn) listRoutes(fam Family) ([]kroute, error) {
	var out []kroute
	err := c.eachRoute(fam, func() { out = out[:0] }, func(k kroute) { out = append(out, k) })
	return out, err
}

// eachRoute hands every route of fam in the main table to fn, as the
// dump comes (no copy of tens of thousands of routes); reset is called
// when a dump interrupted by a change starts again.
func (c *conn) eachRoute(fam Family, reset func(), fn func(kroute)) error {
	msg := &nl.RtMsg{RtMsg: unix.RtMsg{Family: uint8(fam), Table: unix.RT_TABLE_MAIN}}
	err := c.dumpRetry(request{typ: unix.RTM_GETROUTE, data: []nl.NetlinkRequestData{msg}}, reset,
		func(typ uint16, b []byte) {
			if k, ok := parseRoute(b, fam); ok && typ == unix.RTM_NEWROUTE && k.table == unix.RT_TABLE_MAIN {
				fn(k)
			}
		})
	if errors.Is(err, unix.ENOENT) {
		return nil // a namespace without a main table yet: no route at all
	}
	if err != nil {
		return fmt.Errorf("list %s routes: %w", fam.Name(), err)
	}
	return nil
}

// listNexthops dumps every nexthop object (hint: how many to expect). On a
// kernel without them
// (before 5.3) the error wraps EOPNOTSUPP or EINVAL.
func (c *conn) listNexthops(hint int) (map[uint32]knexthop, error) {
	out := make(map[uint32]knexthop, hint)
	err := c.dumpRetry(request{typ: unix.RTM_GETNEXTHOP, data: []nl.NetlinkRequestData{&nhmsg{}}}, func() { clear(out) },
		func(typ uint16, b []byte) {
			if n, ok := parseNexthop(b); ok && typ == unix.RTM_NEWNEXTHOP {
				out[n.id] = n
			}
		})
	if err != nil {
		return nil, fmt.Errorf("list nexthops: %w", err)
	}
	return out, nil
}

// listAddrs dumps the addresses of fam of every device: each as a host
// prefix and as its network.
func (c *conn) listAddrs(fam Family) ([]netip.Prefix, error) {
	var out []netip.Prefix
	msg := nl.NewIfAddrmsg(int(fam))
	err := c.dumpRetry(request{typ: unix.RTM_GETADDR, data: []nl.NetlinkRequestData{msg}}, func() { out = out[:0] },
		func(typ uint16, b []byte) {
			if typ != unix.RTM_NEWADDR || len(b) < unix.SizeofIfAddrmsg || b[0] != uint8(fam) {
				return
			}
			bits := int(b[1])
			var addr, local netip.Addr
			walkAttrs(b[unix.SizeofIfAddrmsg:], func(typ uint16, v []byte) {
				a, ok := netip.AddrFromSlice(v)
				switch {
				case !ok || !fam.Has(a):
				case typ == unix.IFA_ADDRESS:
					addr = a
				case typ == unix.IFA_LOCAL:
					local = a
				}
			})
			if local.IsValid() { // on point-to-point links IFA_ADDRESS is the far end
				addr = local
			}
			if addr.IsValid() && bits <= fam.bits() {
				out = append(out, netip.PrefixFrom(addr, fam.bits()), netip.PrefixFrom(addr, bits).Masked())
			}
		})
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	return out, nil
}

// dumpRetry dumps again, after reset, while the kernel says the dump was
// interrupted by a change.
func (c *conn) dumpRetry(r request, reset func(), fn func(typ uint16, b []byte)) error {
	for attempt := 1; ; attempt++ {
		err := c.dump(r, fn)
		if errors.Is(err, errDumpInterrupted) && attempt < nldump.Tries {
			reset()
			continue
		}
		return err
	}
}

// nexthopsUnsupported tells the error of a kernel without nexthop objects.
func nexthopsUnsupported(err error) bool {
	return errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EAFNOSUPPORT)
}

// kernelDump is one reading of a namespace's routes, nexthop objects (nil
// on a kernel without them) and, if asked for, addresses.
type kernelDump struct {
	c        *conn // still open: the caller closes it
	routes   []kroute
	nexthops map[uint32]knexthop
	addrs    []netip.Prefix
}

// dumpAt opens a socket in ns (nil: the caller's) and reads its tables:
// the routes (and, if asked for, the addresses) of each of fams, and
// every nexthop object.
func dumpAt(ns *netns.NsHandle, addrs bool, fams ...Family) (kernelDump, error) {
	c, err := dial(ns)
	if err != nil {
		return kernelDump{}, err
	}
	d := kernelDump{c: c}
	for _, fam := range fams {
		var prefixes []netip.Prefix
		rs, err := c.listRoutes(fam)
		if err == nil && addrs {
			prefixes, err = c.listAddrs(fam)
		}
		if err != nil {
			c.Close()
			return kernelDump{}, err
		}
		d.routes, d.addrs = append(d.routes, rs...), append(d.addrs, prefixes...)
	}
	if d.nexthops, err = c.listNexthops(len(d.routes)); err != nil && !nexthopsUnsupported(err) {
		c.Close()
		return kernelDump{}, err
	}
	return d, nil
}

// KernelRoutes lists the agent's kernel routes (protocol RouteProtocol,
// plain or through nexthop objects) in namespace ns (nil: the caller's),
// in the map's terms: `hgw-ebpf routes`.
func KernelRoutes(ns *netns.NsHandle) ([]datapath.Route, error) {
	d, err := dumpAt(ns, false, IPv4, IPv6)
	if err != nil {
		return nil, err
	}
	d.c.Close()
	routes, nhs := d.routes, d.nexthops
	var out []datapath.Route
	for _, k := range routes {
		if !k.ours() {
			continue
		}
		e := resolve(k, nhs)
		if !e.nexthop.IsValid() || e.ifindex <= 0 {
			continue
		}
		out = append(out, datapath.Route{Subnet: k.dst, NextHop: e.nexthop, Ifindex: uint32(e.ifindex)})
	}
	return out, nil
}

// resolve is where a route sends its packets: its own gateway and device,
// or (with nexthop_compat_mode=0, which leaves them out) its nexthop's.
func resolve(k kroute, nhs map[uint32]knexthop) entry {
	if k.nhid != 0 && (!k.gw.IsValid() || k.oif <= 0) {
		n := nhs[k.nhid]
		return entry{nexthop: n.gw, ifindex: n.oif}
	}
	return entry{nexthop: k.gw, ifindex: k.oif}
}

// RemoveKernelRoutes deletes every main-table route tagged RouteProtocol
// in namespace ns (nil: the caller's), on any device, then every nexthop
// object tagged so: `hgw-ebpf cleanup` without an agent. It returns how
// many routes and nexthops it deleted.
func RemoveKernelRoutes(ns *netns.NsHandle) (nroutes, nexthops int, err error) {
	d, err := dumpAt(ns, false, IPv4, IPv6)
	if err != nil {
		return 0, 0, err
	}
	defer d.c.Close()
	all, nhs, c := d.routes, d.nexthops, d.c
	var (
		reqs  []request
		names []string
	)
	for _, k := range all {
		if k.ours() {
			reqs = append(reqs, routeRequest(unix.RTM_DELROUTE, 0, k))
			names = append(names, "route "+k.String())
		}
	}
	routes := len(reqs)
	for _, n := range nhs {
		if n.ours() {
			reqs = append(reqs, nexthopRequest(unix.RTM_DELNEXTHOP, 0, n.id, entry{}))
			names = append(names, fmt.Sprintf("nexthop %d", n.id))
		}
	}
	var errs []error
	for i, err := range c.exec(reqs) {
		if err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("delete %s: %w", names[i], err))
			continue
		}
		if i < routes {
			nroutes++
		} else {
			nexthops++
		}
	}
	return nroutes, nexthops, errors.Join(errs...)
}
