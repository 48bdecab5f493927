package subnetfile

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// What flanneld writes for a host-gw node, IPv4 only (flannel
// pkg/subnet/subnetfile_unix.go).
const flanneldFile = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1500\nFLANNEL_IPMASQ=true\n"

// What the real flanneld v0.28.9 wrote for a dual-stack host-gw node
// with --ip-masq (captured by the registry's flanneld test, which checks
// Format against flanneld every CI run): the IPv6 pair after the IPv4 one,
// each subnet as its first address.
const flanneldDualFile = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.60.1/24\n" +
	"FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:48::1/64\n" +
	"FLANNEL_MTU=1500\nFLANNEL_IPMASQ=true\n"

func env(network, subnet string, mtu int, masq bool) Env {
	return Env{Network: netip.MustParsePrefix(network), Subnet: netip.MustParsePrefix(subnet), MTU: mtu, IPMasq: masq}
}

func dualEnv(network, subnet, network6, subnet6 string, mtu int, masq bool) Env {
	e := env(network, subnet, mtu, masq)
	e.IPv6Network, e.IPv6Subnet = netip.MustParsePrefix(network6), netip.MustParsePrefix(subnet6)
	return e
}

func TestWriteMatchesFlanneldByteForByte(t *testing.T) {
	// The umask must not decide the mode: the file is owner-only even
	// under a umask that would let everyone read it.
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	dir := filepath.Join(t.TempDir(), "run", "flannel") // created by Write
	path := filepath.Join(dir, "subnet.env")

	if err := Write(path, env("10.244.0.0/16", "10.244.3.0/24", 1500, true)); err != nil {
		t.Fatal(err)
	}

	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != flanneldFile {
		t.Fatalf("got\n%q\nwant\n%q", got, flanneldFile)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want owner-only 0600", st.Mode().Perm())
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("directory holds %v, want only subnet.env (no temp file left)", entries)
	}
}

func TestFormat(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   Env
		want string
	}{
		{"no masquerade, other MTU", env("10.244.0.0/16", "10.244.200.0/24", 1450, false),
			"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.200.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"},
		{"unmasked input is masked", env("10.244.7.7/16", "10.244.3.77/24", 9000, true),
			"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=9000\nFLANNEL_IPMASQ=true\n"},
		{"a /23 subnet", env("10.0.0.0/8", "10.1.2.0/23", 1500, true),
			"FLANNEL_NETWORK=10.0.0.0/8\nFLANNEL_SUBNET=10.1.2.1/23\nFLANNEL_MTU=1500\nFLANNEL_IPMASQ=true\n"},
		{"dual stack, as the real flanneld wrote it",
			dualEnv("10.244.0.0/16", "10.244.60.0/24", "fd00:10:244::/56", "fd00:10:244:48::/64", 1500, true),
			flanneldDualFile},
		{"dual stack, unmasked IPv6 input is masked, other lengths",
			dualEnv("10.244.0.0/16", "10.244.3.0/24", "fd00:10:244:ff07::/48", "fd00:10:244:7:1::/80", 1450, false),
			"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\n" +
				"FLANNEL_IPV6_NETWORK=fd00:10:244::/48\nFLANNEL_IPV6_SUBNET=fd00:10:244:7:1::1/80\n" +
				"FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Format(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Errorf("got\n%q\nwant\n%q", got, tc.want)
			}
		})
	}
	for _, bad := range []Env{
		{Subnet: netip.MustParsePrefix("10.244.3.0/24")},                                                  // no network
		env("fd00::/56", "fd00:0:0:3::/64", 1500, true),                                                   // IPv6
		{Network: netip.MustParsePrefix("10.244.0.0/16"), Subnet: netip.MustParsePrefix("10.244.3.7/32")}, // no host address
		func() Env {
			e := env("10.244.0.0/16", "10.244.3.0/24", 1500, true)
			e.IPv6Network = netip.MustParsePrefix("fd00::/56")
			return e
		}(), // IPv6 network without subnet
		func() Env {
			e := env("10.244.0.0/16", "10.244.3.0/24", 1500, true)
			e.IPv6Subnet = netip.MustParsePrefix("fd00:0:0:3::/64")
			return e
		}(), // IPv6 subnet without network
		dualEnv("10.244.0.0/16", "10.244.3.0/24", "10.245.0.0/16", "10.245.3.0/24", 1500, true),                 // IPv4 in the IPv6 pair
		dualEnv("10.244.0.0/16", "10.244.3.0/24", "::ffff:10.245.0.0/112", "::ffff:10.245.3.0/120", 1500, true), // IPv4-mapped
		dualEnv("10.244.0.0/16", "10.244.3.0/24", "fd00::/56", "fd00:0:0:3::7/128", 1500, true),                 // no IPv6 host address
	} {
		if got, err := Format(bad); err == nil {
			t.Errorf("Format(%+v) = %q, want an error", bad, got)
		}
	}
}

// flanneld's file (0644) is replaced by an owner-only one.
func TestWriteReplacesFlanneldsFileOwnerOnly(t *testing.T) {
	path := filepath.Join(t.TempDir(), "subnet.env")
	if err := os.WriteFile(path, []byte("FLANNEL_SUBNET=10.244.9.1/24\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Write(path, env("10.244.0.0/16", "10.244.3.0/24", 1500, true)); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(path)
	if string(got) != flanneldFile {
		t.Errorf("got %q, want %q", got, flanneldFile)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want owner-only 0600", st.Mode().Perm())
	}
}

func TestWriteFailsLeavingOldFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "subnet.env")
	if err := os.WriteFile(path, []byte(flanneldFile), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Write(path, Env{}); err == nil {
		t.Fatal("Write of an empty Env succeeded")
	}
	if got, _ := os.ReadFile(path); string(got) != flanneldFile {
		t.Errorf("old file changed to %q", got)
	}
	// A path whose directory is a file cannot be written.
	if err := Write(filepath.Join(path, "x"), env("10.244.0.0/16", "10.244.3.0/24", 1500, true)); err == nil {
		t.Error("Write under a regular file succeeded")
	}
}

func TestReadRoundTripsAndReadsFlanneldDualStack(t *testing.T) {
	dir := t.TempDir()
	want := env("10.244.0.0/16", "10.244.3.0/24", 1450, false)
	path := filepath.Join(dir, "ours.env")
	if err := Write(path, want); err != nil {
		t.Fatal(err)
	}
	if got, err := Read(path); err != nil || got != want {
		t.Fatalf("Read(Write(x)) = %+v, %v; want %+v", got, err, want)
	}

	wantDual := dualEnv("10.244.0.0/16", "10.244.60.0/24", "fd00:10:244::/56", "fd00:10:244:48::/64", 1500, true)
	path = filepath.Join(dir, "ours-dual.env")
	if err := Write(path, wantDual); err != nil {
		t.Fatal(err)
	}
	if got, err := Read(path); err != nil || got != wantDual {
		t.Fatalf("Read(Write(dual stack)) = %+v, %v; want %+v", got, err, wantDual)
	}

	path = filepath.Join(dir, "flanneld-dual.env")
	if err := os.WriteFile(path, []byte(flanneldDualFile), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := Read(path); err != nil || got != wantDual {
		t.Fatalf("Read(flanneld dual-stack) = %+v, %v; want %+v", got, err, wantDual)
	}
}

func TestReadErrors(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing")
	if _, err := Read(missing); !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), missing) {
		t.Errorf("missing file: %v, want ErrNotExist naming %s", err, missing)
	}
	for _, tc := range []struct {
		name, content, mention string
	}{
		{"garbage", "FLANNEL_SUBNET=10.244.3.1/24\nthis is not a variable\n", "line 2"},
		{"badsubnet", "FLANNEL_SUBNET=10.244.3.1\n", "line 1"},
		{"v6subnet", "FLANNEL_SUBNET=fd00::1/64\n", "line 1"},
		{"v4 in the IPv6 subnet", "FLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_IPV6_SUBNET=10.245.3.1/24\n", "line 2"},
		{"bad IPv6 network", "FLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_IPV6_NETWORK=fd00::\n", "FLANNEL_IPV6_NETWORK"},
		{"badmtu", "FLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=big\n", "line 2"},
		{"badmasq", "FLANNEL_SUBNET=10.244.3.1/24\n\nFLANNEL_IPMASQ=maybe\n", "line 3"},
		{"nosubnet", "FLANNEL_NETWORK=10.244.0.0/16\n", "no FLANNEL_SUBNET"},
	} {
		path := filepath.Join(dir, tc.name)
		if err := os.WriteFile(path, []byte(tc.content), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := Read(path)
		if err == nil {
			t.Errorf("%s: no error for %q", tc.name, tc.content)
			continue
		}
		if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), tc.mention) {
			t.Errorf("%s: error %q should name %s and %q", tc.name, err, path, tc.mention)
		}
	}
}

// The gateway is the subnet's first address, also when the prefix given
// has host bits set; the programs, the bridge and host-local all take it.
func TestGateway(t *testing.T) {
	cases := [][2]string{{"10.244.1.77/24", "10.244.1.1"}, {"10.244.0.0/16", "10.244.0.1"}, {"fd00:10:244:1::/64", "fd00:10:244:1::1"}}
	for _, c := range cases {
		if got := Gateway(netip.MustParsePrefix(c[0])); got != netip.MustParseAddr(c[1]) {
			t.Errorf("Gateway(%s) = %s, want %s", c[0], got, c[1])
		}
	}
}
