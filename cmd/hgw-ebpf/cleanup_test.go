package main

import (
	"bytes"
	"log/slog"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hgw-ebpf/hgw-ebpf/internal/testutil"
)

// flanneld's rules as flanneld v0.28 leaves them on a node (--ip-masq).
const flanneldLeft = `*nat
:FLANNEL-POSTRTG - [0:0]
-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG
-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully
COMMIT
*filter
:FLANNEL-FWD - [0:0]
-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD
-A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT
-A FLANNEL-FWD -d 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT
COMMIT
`

// `hgw-ebpf cleanup` on a node flanneld left removes its chains and says
// what it removed; run again, it finds none. It runs in a namespace of its
// own (on a thread there), never in the machine's.
func TestCleanupRemovesFlanneldsIPTablesAndSaysSo(t *testing.T) {
	testutil.RequireRoot(t)
	_, ns := testutil.NetNS(t, "cleanup")
	var logs bytes.Buffer
	old := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&logs, nil)))
	t.Cleanup(func() { slog.SetDefault(old) })
	root := filepath.Join("/sys/fs/bpf", "hgwt-cleanup-"+testutil.RandHex(t, 4)) // nothing pinned there

	testutil.Do(t, ns, func() {
		restore := exec.Command("iptables-restore", "--noflush")
		restore.Stdin = strings.NewReader(flanneldLeft)
		if out, err := restore.CombinedOutput(); err != nil {
			t.Fatalf("iptables-restore: %v\n%s", err, out)
		}
		for i, want := range []string{"jumps=1 rules=2", "none there"} {
			logs.Reset()
			cmd := newRoot()
			cmd.SetArgs([]string{"cleanup", "--bpffs-root", root})
			if err := cmd.Execute(); err != nil {
				t.Fatalf("cleanup run %d: %v\n%s", i+1, err, logs.String())
			}
			for _, chain := range []string{"FLANNEL-POSTRTG", "FLANNEL-FWD"} {
				said := false
				for _, l := range strings.Split(logs.String(), "\n") {
					said = said || (strings.Contains(l, "chain="+chain) && strings.Contains(l, want))
				}
				if !said {
					t.Errorf("cleanup run %d does not say %q about %s:\n%s", i+1, want, chain, logs.String())
				}
			}
			out, err := exec.Command("iptables-save").CombinedOutput()
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(string(out), "FLANNEL") {
				t.Errorf("after cleanup run %d:\n%s", i+1, out)
			}
		}
	})
}
