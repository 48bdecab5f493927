package procstat

import (
	"os"
	"strings"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	// Field 2 with spaces and a ')' of its own; then fields 3 to 22.
	line := "4242 (a b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 1 0 987654 10000000 200\n"
	st, err := parse([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	want := Stat{State: 'S', UTime: 250, STime: 75, StartTime: 987654}
	if st != want {
		t.Errorf("parse = %+v, want %+v", st, want)
	}
	if got := st.CPU(); got != 3250*time.Millisecond {
		t.Errorf("CPU = %s, want 3.25s", got)
	}
	for _, bad := range []string{
		"",
		"4242 no-parenthesis S 1",
		"4242 (short) S 1 2 3",
		"4242 (x) S 1 4242 4242 0 -1 4194560 100 0 0 0 ten 75 0 0 20 0 1 0 987654",
	} {
		if _, err := parse([]byte(bad)); err == nil {
			t.Errorf("parse(%q) succeeded", bad)
		}
	}
}

func TestReadSelf(t *testing.T) {
	a, err := Read(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	b, err := Read(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	// The state is the main thread's, which may be asleep while this
	// goroutine reads: any live state, but not a zombie's.
	if !strings.ContainsRune("RSD", rune(a.State)) || a.StartTime == 0 || a.StartTime != b.StartTime {
		t.Errorf("self: %+v then %+v, want a live state (R, S or D) and one start time", a, b)
	}
	if _, err := Read(-1); err == nil || !strings.Contains(err.Error(), "/proc/-1/stat") {
		t.Errorf("Read(-1) = %v, want an error naming the file", err)
	}
}
