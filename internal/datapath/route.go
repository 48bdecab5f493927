package datapath

import "net/netip"

// Route is one entry of the pinned `routes` LPM map: packets to Subnet leave
// through Ifindex towards NextHop (the peer node's host IP).
type Route struct {
	Subnet  netip.Prefix `json:"subnet"`
	NextHop netip.Addr   `json:"nexthop"`
	Ifindex uint32       `json:"ifindex"`
}
