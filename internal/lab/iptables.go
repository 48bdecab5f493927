package lab

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"time"
)

// setForwardDrop sets the filter FORWARD policy to DROP, as Docker does.
func setForwardDrop(node string) error {
	out, err := runIn(node, exec.Command("iptables", "-w", "5", "-P", "FORWARD", "DROP"))
	if err != nil {
		return fmt.Errorf("FORWARD policy DROP in %s: %w: %s", node, err, out)
	}
	return nil
}

// iptablesRestore feeds input to `iptables-restore --noflush` inside ns.
func iptablesRestore(ns, input string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "iptables-restore", "-w", "5", "--noflush")
	cmd.Stdin = strings.NewReader(input)
	return runIn(ns, cmd)
}

// iptablesSave is `iptables-save` inside ns: every table's rules.
func iptablesSave(ns string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := runIn(ns, exec.CommandContext(ctx, "iptables-save"))
	if err != nil {
		return "", fmt.Errorf("iptables-save in %s: %w: %s", ns, err, out)
	}
	return string(out), nil
}

// IPTablesSave is `iptables-save` inside a lab namespace (see Resolve).
func (s State) IPTablesSave(target string) (string, error) {
	ns, err := s.Resolve(target)
	if err != nil {
		return "", err
	}
	return iptablesSave(ns)
}
