// Package subnetfile reads and writes /run/flannel/subnet.env exactly as
// flanneld does, so the flannel CNI plugin (and the bridge + host-local
// plugins configured from it) work unchanged.
package subnetfile

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// DefaultPath is flanneld's default --subnet-file.
const DefaultPath = "/run/flannel/subnet.env"

// Env is the content of a subnet file. The IPv6 pair is set on a
// dual-stack node and zero otherwise.
type Env struct {
	Network     netip.Prefix // FLANNEL_NETWORK
	Subnet      netip.Prefix // the node's pod subnet (the file holds its first address)
	IPv6Network netip.Prefix // FLANNEL_IPV6_NETWORK
	IPv6Subnet  netip.Prefix // FLANNEL_IPV6_SUBNET, likewise
	MTU         int          // FLANNEL_MTU
	IPMasq      bool         // FLANNEL_IPMASQ
}

// Format renders e in flanneld's order and format (flannel
// pkg/subnet.WriteSubnetFile): FLANNEL_NETWORK, FLANNEL_SUBNET, then on a
// dual-stack node FLANNEL_IPV6_NETWORK and FLANNEL_IPV6_SUBNET, then
// FLANNEL_MTU, FLANNEL_IPMASQ, one per line. A subnet is written as its
// first host address with the prefix length (10.244.1.1/24,
// fd00:10:244:1::1/64): the bridge's gateway address, as the CNI plugins
// use it.
func Format(e Env) ([]byte, error) {
	if !e.Network.Addr().Is4() || !e.Subnet.Addr().Is4() {
		return nil, fmt.Errorf("subnet file: network %s and subnet %s must be IPv4 prefixes", e.Network, e.Subnet)
	}
	dual := e.IPv6Network.IsValid() || e.IPv6Subnet.IsValid()
	if dual && (!is6(e.IPv6Network) || !is6(e.IPv6Subnet)) {
		return nil, fmt.Errorf("subnet file: IPv6 network %s and IPv6 subnet %s must both be IPv6 prefixes", e.IPv6Network, e.IPv6Subnet)
	}
	gw, err := gateway(e.Subnet)
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "FLANNEL_NETWORK=%s\n", e.Network.Masked())
	fmt.Fprintf(&b, "FLANNEL_SUBNET=%s\n", gw)
	if dual {
		gw6, err := gateway(e.IPv6Subnet)
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(&b, "FLANNEL_IPV6_NETWORK=%s\n", e.IPv6Network.Masked())
		fmt.Fprintf(&b, "FLANNEL_IPV6_SUBNET=%s\n", gw6)
	}
	fmt.Fprintf(&b, "FLANNEL_MTU=%d\n", e.MTU)
	fmt.Fprintf(&b, "FLANNEL_IPMASQ=%t\n", e.IPMasq)
	return b.Bytes(), nil
}

func is6(p netip.Prefix) bool { return p.IsValid() && p.Addr().Is6() && !p.Addr().Is4In6() }

// Gateway is the pod gateway of subnet, flannel's rule: its first address
// after the network's, which the bridge holds and the pods route through.
func Gateway(subnet netip.Prefix) netip.Addr { return subnet.Masked().Addr().Next() }

// gateway is subnet's gateway with its length, as flanneld writes it.
func gateway(subnet netip.Prefix) (netip.Prefix, error) {
	sn := subnet.Masked()
	gw := Gateway(sn)
	if !sn.Contains(gw) {
		return netip.Prefix{}, fmt.Errorf("subnet file: subnet %s has no host address", subnet)
	}
	return netip.PrefixFrom(gw, sn.Bits()), nil
}

// Write replaces path atomically, as flanneld does: a temporary file in
// the same directory, synced, renamed over path, then the directory synced,
// so a reader (the CNI plugin, at any moment) sees the old or the new file,
// never half of one. The file is owner-only (0600), also when it replaces
// flanneld's 0644 one: its only reader, the CNI plugin, runs as root like
// the agent. The directory is created (0755) if missing.
func Write(path string, e Env) error {
	data, err := Format(e)
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create directory of subnet file %s: %w", path, err)
	}
	const perm = fs.FileMode(0o600)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write subnet file %s: %w", path, err)
	}
	tmp := f.Name()
	err = writeSynced(f, data, perm)
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write subnet file %s: %w", path, err)
	}
	// The rename is durable once the directory is; a failure here leaves a
	// complete file in place, so it is not worth failing the write.
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// writeSynced fills f, sets perm (CreateTemp made it 0600, and the umask
// must not matter) and closes it.
func writeSynced(f *os.File, data []byte, perm fs.FileMode) error {
	_, err := f.Write(data)
	if err == nil {
		err = f.Chmod(perm)
	}
	if err == nil {
		err = f.Sync()
	}
	return errors.Join(err, f.Close())
}

// Read parses a subnet file (flanneld's or ours), to reuse the previous
// subnets. Unknown variables are ignored. A missing file wraps
// os.ErrNotExist; a malformed one is an error naming the path and line.
func Read(path string) (Env, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Env{}, fmt.Errorf("read subnet file: %w", err)
	}
	var e Env
	sc := bufio.NewScanner(bytes.NewReader(data))
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		k, v, ok := strings.Cut(text, "=")
		if !ok {
			return Env{}, fmt.Errorf("subnet file %s line %d: %q is not NAME=value", path, line, text)
		}
		switch k {
		case "FLANNEL_NETWORK":
			e.Network, err = parsePrefix(v, false)
		case "FLANNEL_SUBNET":
			e.Subnet, err = parsePrefix(v, false)
			e.Subnet = e.Subnet.Masked()
		case "FLANNEL_IPV6_NETWORK":
			e.IPv6Network, err = parsePrefix(v, true)
		case "FLANNEL_IPV6_SUBNET":
			e.IPv6Subnet, err = parsePrefix(v, true)
			e.IPv6Subnet = e.IPv6Subnet.Masked()
		case "FLANNEL_MTU":
			e.MTU, err = strconv.Atoi(v)
		case "FLANNEL_IPMASQ":
			e.IPMasq, err = strconv.ParseBool(v)
		}
		if err != nil {
			return Env{}, fmt.Errorf("subnet file %s line %d: %s: %w", path, line, k, err)
		}
	}
	if err := sc.Err(); err != nil {
		return Env{}, fmt.Errorf("read subnet file %s: %w", path, err)
	}
	if !e.Subnet.IsValid() {
		return Env{}, fmt.Errorf("subnet file %s has no FLANNEL_SUBNET", path)
	}
	return e, nil
}

func parsePrefix(s string, want6 bool) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	if want6 && !is6(p) {
		return netip.Prefix{}, fmt.Errorf("%s is not an IPv6 prefix", s)
	}
	if !want6 && !p.Addr().Is4() {
		return netip.Prefix{}, fmt.Errorf("%s is not an IPv4 prefix", s)
	}
	return p, nil
}
