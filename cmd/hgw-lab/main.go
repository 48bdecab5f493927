// hgw-lab builds a whole hgw-ebpf cluster on one machine out of network
// namespaces: see `hgw-lab --help` and internal/lab.
package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
)

func main() {
	err := New().Execute()
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit) && exit.ExitCode() > 0:
		// `hgw-lab exec` passes the command's exit code through.
		os.Exit(exit.ExitCode())
	default:
		fmt.Fprintln(os.Stderr, "hgw-lab:", err)
		os.Exit(1)
	}
}
