package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hgw-ebpf/hgw-ebpf/internal/testutil"
)

// freshMachine is run by bash in a private mount namespace made to look
// like a freshly booted machine: no bpffs at /sys/fs/bpf and no /run/netns
// (an empty /run). The lab is brought up and down twice there, so the
// second round meets what the first left: /run/netns as a shared mount,
// bpffs mounted by the lab. Nothing of it reaches the host's mounts.
const freshMachine = `
set -eu
down() { "$BIN/hgw-lab" down --bin "$BIN" --prefix "$PREFIX" --state-dir "$STATE"; }
trap down EXIT TERM INT
while mountpoint -q /sys/fs/bpf; do umount /sys/fs/bpf; done
mount -t tmpfs -o mode=0755 hgwfresh /run
test ! -e /run/netns
for round in 1 2; do
	echo "== round $round"
	"$BIN/hgw-lab" up --bin "$BIN" --cni-path "$CNI" --prefix "$PREFIX" --state-dir "$STATE" \
		--nodes 2 --pods 1 --detach
	mountpoint -q /sys/fs/bpf || { echo "bpffs not mounted by the lab"; exit 1; }
	# iproute2 makes /run/netns a mount point of its own the first time it
	# finds it is not one: that must not hide the lab's namespaces.
	ip netns add "$PREFIX-ipr" && ip netns del "$PREFIX-ipr"
	"$BIN/hgw-lab" ping --bin "$BIN" --prefix "$PREFIX" --state-dir "$STATE"
	down
	left=$(ls /run/netns | grep "^$PREFIX-" || true)
	[ -z "$left" ] || { echo "left behind: $left"; exit 1; }
	[ ! -e "/sys/fs/bpf/$PREFIX" ] || { echo "pins left behind"; exit 1; }
done
echo "== fresh machine: ok"
`

// A machine that never ran the lab has no bpffs mounted and no /run/netns.
// The lab must mount the first and create the second the way iproute2
// does (a shared mount point), so that a later `ip netns add` cannot hide
// its namespaces; up, ping and down work twice in a row and leave nothing.
func TestLabOnAFreshMachine(t *testing.T) {
	testutil.RequireRoot(t)
	for _, tool := range []string{"unshare", "mountpoint"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s (util-linux) is needed: %v", tool, err)
		}
	}
	ctx := testContext(t, 3*time.Minute)
	cmd := exec.CommandContext(ctx, "unshare", "--mount", "--propagation", "private", "bash", "-c", freshMachine)
	cmd.Env = append(os.Environ(), "BIN="+binDir, "CNI="+testutil.CNIPath(),
		"PREFIX=hgwtf"+testutil.RandHex(t, 3), "STATE="+filepath.Join(t.TempDir(), "state"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 30 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("lab on a fresh machine: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "fresh machine: ok") {
		t.Fatalf("script did not finish:\n%s", out)
	}
	t.Logf("%s", out)
}
