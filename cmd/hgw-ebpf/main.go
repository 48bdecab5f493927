// Command hgw-ebpf is the node agent of hgw-ebpf, an eBPF fast path for
// flannel's host-gw model, and the tool that inspects and removes its state.
// Needs Linux >= 6.6 for tcx (older kernels fall back to tc clsact), BTF, and
// CAP_BPF + CAP_NET_ADMIN (root).
package main

import (
	"os"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	if err := newRoot().Execute(); err != nil {
		os.Exit(1)
	}
}
