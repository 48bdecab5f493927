// Package nldump repeats netlink dumps the kernel interrupted.
package nldump

import (
	"errors"
	"fmt"
	"time"

	"github.com/vishvananda/netlink"
)

// Tries is how often Retry asks before it gives up.
const Tries = 10

// Retry calls dump until the kernel hands over a consistent listing. The
// kernel marks a dump interrupted (netlink.ErrDumpInterrupted) when the
// table it walks changed meanwhile, which on a node where pods come and go
// is common; the partial listing that comes with it must not be taken for
// the whole one (a device or a filter of ours would look absent).
func Retry[T any](dump func() ([]T, error)) ([]T, error) {
	var err error
	for i := range Tries {
		var out []T
		out, err = dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return out, err
		}
		time.Sleep(time.Duration(i) * time.Millisecond) // let the change finish
	}
	return nil, fmt.Errorf("interrupted %d times: %w", Tries, err)
}
