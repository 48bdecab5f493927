// Package namedns creates and deletes named network namespaces the way
// iproute2's `ip netns add|del` does, so that the lab, the tests and
// `ip netns` can share /run/netns on any machine, also on a fresh one where
// the directory does not exist yet.
package namedns

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Dir is where named namespaces are bind-mounted (CNI_NETNS, nsenter and
// `ip netns exec` find them there).
const Dir = "/run/netns"

// Path is the bind-mount path of the named namespace.
func Path(name string) string { return filepath.Join(Dir, name) }

// Create creates the named namespace without leaving any thread of the
// calling process in it. Like `ip netns add`, it first makes Dir a shared
// mount point. Without that, the first namespace file is bind-mounted into
// a plain directory; when iproute2 later turns the directory into a mount
// point of its own, the earlier mount is hidden below it and can never be
// unmounted or removed (EBUSY).
func Create(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
		return fmt.Errorf("netns name %q: want a plain file name", name)
	}
	if err := prepareDir(); err != nil {
		return err
	}
	// NewNamed unshares the thread into the new namespace, which it
	// leaves again after.
	return onThread(name, func() error {
		ns, err := netns.NewNamed(name)
		if err != nil {
			return fmt.Errorf("create netns %s: %w", name, err)
		}
		return ns.Close()
	})
}

// Delete unmounts and removes the named namespace; a missing one is fine.
func Delete(name string) error {
	if err := netns.DeleteNamed(name); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("delete netns %s: %w", name, err)
	}
	return nil
}

// List returns the names in Dir that start with prefix; none when Dir does
// not exist yet.
func List(prefix string) ([]string, error) {
	entries, err := os.ReadDir(Dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", Dir, err)
	}
	var out []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// prepareDir makes Dir a shared mount point, as iproute2 does before its
// first bind mount: mount events then propagate to every copy of Dir, so
// a namespace unmounted through one copy is gone from all. Processes of
// ours serialise on a lock of Dir's parent, so two of them never stack
// two self-binds.
func prepareDir() error {
	if err := os.MkdirAll(Dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", Dir, err)
	}
	unlock, err := lockDir(filepath.Dir(Dir))
	if err != nil {
		return err
	}
	defer unlock()
	for bound := false; ; bound = true {
		err := unix.Mount("", Dir, "none", unix.MS_SHARED|unix.MS_REC, "")
		if err == nil {
			return nil
		}
		// EINVAL: Dir is not a mount point yet. Make it one, once.
		if !errors.Is(err, unix.EINVAL) || bound {
			return fmt.Errorf("make %s a shared mount: %w", Dir, err)
		}
		if err := unix.Mount(Dir, Dir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind %s onto itself: %w", Dir, err)
		}
	}
}

// lockDir takes an exclusive flock on dir, released by the returned func.
func lockDir(dir string) (func(), error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s to lock it: %w", dir, err)
	}
	if err := unix.Flock(fd, unix.LOCK_EX); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	return func() { unix.Close(fd) }, nil
}

// Do runs fn on an OS thread that has joined the named namespace, and
// waits for it. What fn creates synchronously (sockets, child processes
// os/exec forks) belongs to that namespace; goroutines fn starts do not.
func Do(name string, fn func() error) error {
	ns, err := netns.GetFromName(name)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", name, err)
	}
	defer ns.Close()
	return onThread(name, func() error {
		if err := netns.Set(ns); err != nil {
			return fmt.Errorf("enter netns %s: %w", name, err)
		}
		return fn()
	})
}

// onThread runs fn, which may move its thread to another network
// namespace, on a locked OS thread, then brings the thread back. A thread
// that cannot return is never reused: it stays locked, and the runtime
// discards it with its goroutine. name is for errors.
func onThread(name string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("get current netns: %w", err)
			return
		}
		defer orig.Close()
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("restore netns after %s: %w", name, err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}
