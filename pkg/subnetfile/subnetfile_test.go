package subnetfile

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
)

// What flanneld v0.2x writes for a host-gw node (IPv4 only).
const flanneldFile = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1500\nFLANNEL_IPMASQ=true\n"

func TestWriteMatchesFlanneldByteForByte(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run", "flannel", "subnet.env")
	env := Env{Network: netip.MustParsePrefix("10.244.0.0/16"), Subnet: netip.MustParsePrefix("10.244.3.0/24"), MTU: 1500, IPMasq: true}
	if err := Write(path, env); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != flanneldFile {
		t.Fatalf("got\n%s\nwant\n%s", got, flanneldFile)
	}
	st, _ := os.Stat(path)
	if st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want owner-only 0600", st.Mode().Perm())
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(path), ".subnet.env")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temp file left behind: %v", err)
	}
}

func TestReadRoundTripsAndAcceptsFlanneldDualStack(t *testing.T) {
	path := filepath.Join(t.TempDir(), "subnet.env")
	dual := "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:3::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
	os.WriteFile(path, []byte(dual), 0o644)
	e, err := Read(path)
	if err != nil {
		t.Fatal(err)
	}
	want := Env{Network: netip.MustParsePrefix("10.244.0.0/16"), Subnet: netip.MustParsePrefix("10.244.3.0/24"), MTU: 1450}
	if e != want {
		t.Fatalf("Read = %+v, want %+v", e, want)
	}
}

func TestReadErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := Read(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v, want ErrNotExist", err)
	}
	for name, content := range map[string]string{
		"garbage":   "FLANNEL_SUBNET=10.244.3.1/24\nthis is not a variable\n",
		"badsubnet": "FLANNEL_SUBNET=10.244.3.1\n",
		"badmtu":    "FLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=big\n",
		"nosubnet":  "FLANNEL_NETWORK=10.244.0.0/16\n",
	} {
		path := filepath.Join(dir, name)
		os.WriteFile(path, []byte(content), 0o644)
		if _, err := Read(path); err == nil {
			t.Errorf("%s: no error for %q", name, content)
		}
	}
}
