package lab

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// netnsDir is where named network namespaces are bind-mounted, as `ip netns`
// does, so that other processes (hgw-lab down/exec, ip netns) find them.
const netnsDir = "/run/netns"

// inNetns runs fn on a goroutine whose OS thread has joined the named
// namespace, and waits for it. Anything fn creates synchronously (sockets,
// child processes forked by os/exec, sysctl writes through /proc/sys/net)
// belongs to that namespace. If the thread cannot return to its original
// namespace it stays locked, so the Go runtime destroys it instead of
// reusing a thread that is in the wrong namespace.
func inNetns(name string, fn func() error) error {
	ns, err := netns.GetFromName(name)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", name, err)
	}
	defer ns.Close()
	return inNetnsHandle(ns, fn)
}

func inNetnsHandle(ns netns.NsHandle, fn func() error) error {
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
		if err := netns.Set(ns); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns: %w", err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			// Leave the thread locked: it dies with this goroutine.
			errc <- errors.Join(ferr, fmt.Errorf("restore netns: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// createNetns creates the named namespace (bind-mounted under /run/netns)
// without leaving any thread of ours in it.
func createNetns(name string) error {
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
		ns, nerr := netns.NewNamed(name) // unshare: this thread is now in the new namespace
		if nerr == nil {
			ns.Close()
		}
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(nerr, fmt.Errorf("restore netns: %w", err))
			return
		}
		runtime.UnlockOSThread()
		if nerr != nil {
			nerr = fmt.Errorf("create netns %s: %w", name, nerr)
		}
		errc <- nerr
	}()
	return <-errc
}

// deleteNetns unmounts and removes the named namespace; missing is fine.
func deleteNetns(name string) error {
	if err := netns.DeleteNamed(name); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("delete netns %s: %w", name, err)
	}
	return nil
}

// listNetns returns the named namespaces whose name starts with prefix+"-".
func listNetns(prefix string) ([]string, error) {
	entries, err := os.ReadDir(netnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", netnsDir, err)
	}
	var out []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix+"-") {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// netnsPath is the bind-mount path of a named namespace (CNI_NETNS, nsenter).
func netnsPath(name string) string { return filepath.Join(netnsDir, name) }

// netnsInode identifies a namespace, to match /proc/<pid>/ns/net against.
func netnsInode(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("stat %s: %w", path, err)
	}
	return st.Ino, nil
}

// HandleAt opens a netlink handle bound to the named namespace.
func HandleAt(name string) (*netlink.Handle, error) {
	ns, err := netns.GetFromName(name)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", name, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("netlink handle in %s: %w", name, err)
	}
	return h, nil
}
