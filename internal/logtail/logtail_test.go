package logtail

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLines(t *testing.T) {
	for _, tc := range []struct {
		in   string
		n    int
		want string
	}{
		{"a\nb\nc\n", 2, "b\nc"},
		{"a\nb\nc\n\n\n", 2, "b\nc"}, // trailing newlines are not lines
		{"a\nb", 5, "a\nb"},
		{"", 3, ""},
		{"only", 1, "only"},
	} {
		if got := Lines(tc.in, tc.n); got != tc.want {
			t.Errorf("Lines(%q, %d) = %q, want %q", tc.in, tc.n, got, tc.want)
		}
	}
}

func TestFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.log")
	if err := os.WriteFile(path, []byte("start\nwork\nfailed: x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := File(path, 1); got != "failed: x" {
		t.Errorf("File = %q, want the last line", got)
	}
	missing := filepath.Join(t.TempDir(), "none.log")
	if got := File(missing, 3); !strings.Contains(got, missing) {
		t.Errorf("File of a missing file = %q, want the read error naming it", got)
	}
}
