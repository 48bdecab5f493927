package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// envName is the environment variable that sets a flag: --etcd-endpoints
// is HGW_ETCD_ENDPOINTS.
func envName(flag string) string {
	return "HGW_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// documentEnv appends the variable's name to every flag's help, for cmd and
// its subcommands.
func documentEnv(cmd *cobra.Command) {
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if f.Name != "help" {
			f.Usage += fmt.Sprintf(" [$%s]", envName(f.Name))
		}
	})
	for _, sub := range cmd.Commands() {
		documentEnv(sub)
	}
}

// applyEnv sets every flag not given on the command line from its
// environment variable, so a systemd unit or a container spec can configure
// the agent without a command line. A bad value names the variable.
func applyEnv(cmd *cobra.Command) error {
	var err error
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if err != nil || f.Changed || f.Name == "help" {
			return
		}
		name := envName(f.Name)
		if v, ok := os.LookupEnv(name); ok {
			if serr := f.Value.Set(v); serr != nil {
				err = fmt.Errorf("environment %s=%q: %w", name, v, serr)
			}
		}
	})
	return err
}
