package testutil

import (
	"os"
	"path/filepath"
)

// RepoRoot is the module root above the test's directory (go test runs a
// test binary in its package directory), or "." if there is none.
func RepoRoot() string {
	dir, err := os.Getwd()
	if err != nil {
		return "."
	}
	for d := dir; d != "/"; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d
		}
	}
	return "."
}

// BinDir is where `make build` puts the project's binaries and `make deps`
// the ones it installs (cni/, kube/): $HGW_BIN, as `make test` sets it,
// else bin/ at the module root.
func BinDir() string {
	if d := os.Getenv("HGW_BIN"); d != "" {
		return d
	}
	return filepath.Join(RepoRoot(), "bin")
}

// CNIPath is where `make deps` puts the CNI plugins: $CNI_PATH, as `make
// test` sets it, else cni/ in BinDir.
func CNIPath() string {
	if p := os.Getenv("CNI_PATH"); p != "" {
		return p
	}
	return filepath.Join(BinDir(), "cni")
}
