package datapath

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// A bounded wait for the pin root's lock gives up with a clear error
// while another holder keeps it, and takes it once it is free.
func TestLockPinRootWithinGivesUp(t *testing.T) {
	root := t.TempDir()
	unlock, err := LockPinRoot(root)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := lockPinRootWithin(root, 100*time.Millisecond); err == nil || !strings.Contains(err.Error(), "held it for") {
		t.Errorf("lock while held = %v, want an error saying another process holds it", err)
	}
	if waited := time.Since(start); waited < 100*time.Millisecond {
		t.Errorf("gave up after %v, before the 100ms wait", waited)
	}
	unlock()
	again, err := lockPinRootWithin(root, 100*time.Millisecond)
	if err != nil {
		t.Fatalf("lock once free: %v", err)
	}
	again()
	if _, err := lockPinRootWithin(root+"/gone", time.Millisecond); !errors.Is(err, ErrNotPinned) {
		t.Errorf("lock of a missing root = %v, want ErrNotPinned", err)
	}
}
