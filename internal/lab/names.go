package lab

import (
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
)

// DefaultPrefix names everything `hgw-lab` creates when no prefix is given.
const DefaultPrefix = "hgwlab"

// Lab addressing: the underlay is 198.18.0.0/24, the range reserved for
// benchmarking, so no lab address can collide with a real one.
var (
	underlayNet     = netip.MustParsePrefix("198.18.0.0/24")
	underlayGateway = netip.MustParseAddr("198.18.0.1") // br0 in the underlay namespace, and etcd
	clusterNetwork  = netip.MustParsePrefix("10.244.0.0/16")
)

// A dual-stack lab (Config.DualStack) adds IPv6: the underlay is a ULA
// /64 (fd00:198:18::/64, node k fd00:198:18::(10+k), written as its IPv4
// address is), the pods' network a /56 cut into /64s, as flannel's
// IPv6SubnetLen defaults.
var (
	underlayNet6     = netip.MustParsePrefix("fd00:198:18::/64")
	underlayGateway6 = netip.MustParseAddr("fd00:198:18::1")
	clusterNetwork6  = netip.MustParsePrefix("fd00:10:244::/56")
)

const (
	// MaxNodes keeps node addresses (198.18.0.(10+k)) inside the /24.
	MaxNodes = 200
	// MaxPodsPerNode stays far below a /24 subnet's host-local range.
	MaxPodsPerNode = 100

	etcdClientPort = 2379
	etcdPeerPort   = 2380

	underlayBridge = "br0"
	nodeUplink     = "eth0"
	podBridge      = "cni0"
	podIface       = "eth0"
)

// The prefix starts with "hgw" so that every lab object matches the
// project-wide rule, and stays short so derived names stay readable.
var prefixRE = regexp.MustCompile(`^hgw[a-z0-9]{0,17}$`)

// ValidatePrefix rejects a prefix that could collide with other objects or
// make names unparsable.
func ValidatePrefix(prefix string) error {
	if !prefixRE.MatchString(prefix) {
		return fmt.Errorf("prefix %q: want \"hgw\" followed by at most 17 lowercase letters or digits", prefix)
	}
	return nil
}

// underlayNS is the namespace holding the underlay bridge and etcd.
func underlayNS(prefix string) string { return prefix + "-ul" }

// internetNS is the namespace standing for the world outside the cluster.
func internetNS(prefix string) string { return prefix + "-inet" }

// InternetIP is the internet namespace's address: on the underlay, so the
// nodes reach it on-link, and outside the cluster network.
var InternetIP = netip.MustParseAddr("198.18.0.254")

// internetPort is the internet namespace's veth in the underlay.
const internetPort = "inet"

// NodeName is node k's name, which is also its namespace's name.
func NodeName(prefix string, k int) string { return fmt.Sprintf("%s-n%d", prefix, k) }

// PodName is pod j of node k; also its namespace's name.
func PodName(prefix string, k, j int) string { return fmt.Sprintf("%s-n%d-p%d", prefix, k, j) }

// nodeIP is node k's eth0 address on the underlay.
func nodeIP(k int) netip.Addr {
	a := underlayNet.Addr().As4()
	a[3] = byte(10 + k)
	return netip.AddrFrom4(a)
}

// nodeIP6 is node k's eth0 IPv6 address on a dual-stack underlay.
func nodeIP6(k int) netip.Addr {
	return netip.MustParseAddr(fmt.Sprintf("fd00:198:18::%d", 10+k))
}

// underlayPort is the underlay-side veth of node k (in the underlay
// namespace only, so it cannot clash with anything else; <= 15 chars).
func underlayPort(k int) string { return fmt.Sprintf("n%d", k) }

// parseName splits a lab namespace name into node and pod numbers: pod is
// -1 for a node, node is -1 for the underlay and the internet. ok is false
// for other names.
func parseName(prefix, name string) (node, pod int, ok bool) {
	rest, found := strings.CutPrefix(name, prefix+"-")
	if !found {
		return 0, 0, false
	}
	if rest == "ul" || rest == "inet" {
		return -1, -1, true
	}
	nodePart, podPart, hasPod := strings.Cut(rest, "-")
	n, err := parseNum(nodePart, "n")
	if err != nil {
		return 0, 0, false
	}
	if !hasPod {
		return n, -1, true
	}
	p, err := parseNum(podPart, "p")
	if err != nil {
		return 0, 0, false
	}
	return n, p, true
}

func parseNum(s, letter string) (int, error) {
	digits, ok := strings.CutPrefix(s, letter)
	if !ok {
		return 0, fmt.Errorf("%q does not start with %q", s, letter)
	}
	return strconv.Atoi(digits)
}
