package nldump

import (
	"errors"
	"fmt"
	"testing"

	"github.com/vishvananda/netlink"
)

func TestRetryTakesTheFirstCompleteListing(t *testing.T) {
	calls := 0
	got, err := Retry(func() ([]int, error) {
		calls++
		if calls < 3 {
			return []int{1}, fmt.Errorf("list: %w", netlink.ErrDumpInterrupted) // partial
		}
		return []int{1, 2}, nil
	})
	if err != nil || len(got) != 2 || calls != 3 {
		t.Fatalf("Retry = %v, %v after %d calls; want [1 2], nil after 3", got, err, calls)
	}
}

func TestRetryGivesUpWithoutAPartialListing(t *testing.T) {
	calls := 0
	got, err := Retry(func() ([]int, error) {
		calls++
		return []int{1}, netlink.ErrDumpInterrupted
	})
	if !errors.Is(err, netlink.ErrDumpInterrupted) || got != nil || calls != Tries {
		t.Fatalf("Retry = %v, %v after %d calls; want nil, ErrDumpInterrupted after %d", got, err, calls, Tries)
	}
}

func TestRetryPassesOtherErrorsAtOnce(t *testing.T) {
	calls := 0
	boom := errors.New("boom")
	_, err := Retry(func() ([]int, error) { calls++; return nil, boom })
	if !errors.Is(err, boom) || calls != 1 {
		t.Fatalf("Retry = %v after %d calls; want boom after 1", err, calls)
	}
}
