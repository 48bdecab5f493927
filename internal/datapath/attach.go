package datapath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/hgw-ebpf/hgw-ebpf/internal/nldump"
)

// Program names one of the datapath's TC programs.
type Program string

const (
	FromPods     Program = hgwProgFromPods     // cni0 ingress
	FromUnderlay Program = hgwProgFromUnderlay // eth0 ingress
)

// Mode is how programs are attached.
type Mode string

const (
	ModeAuto Mode = "auto" // tcx where the kernel has it (>= 6.6), else tc
	ModeTCX  Mode = "tcx"  // pinned tcx links
	ModeTC   Mode = "tc"   // clsact qdisc + direct-action bpf filter
)

func parseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case ModeAuto, ModeTCX, ModeTC:
		return m, nil
	}
	return "", fmt.Errorf("attach mode %q: want auto, tcx or tc", s)
}

// ParseMode checks a user-given mode.
func ParseMode(s string) (Mode, error) { return parseMode(s) }

// tc filters are ours by name; priority and handle are fixed so that a
// re-attach replaces the filter in place instead of adding a second one.
// The priority is the last there is: every other filter on the device (the
// CNI bandwidth plugin's u32 shaping filter has priority 1) sees a packet
// before we may redirect it, as under tcx, where the programs step aside
// while classic filters are there. Filters added later without a priority
// get one below ours, so they come first too.
const (
	tcFilterPrefix   = "hgw_"
	tcFilterPriority = 0xffff
	tcFilterHandle   = 0x4867
)

// Attachment is one program attached to one device.
type Attachment struct {
	Dev       string  `json:"dev"`
	Ifindex   int     `json:"ifindex"`
	Program   Program `json:"program"`
	Mode      Mode    `json:"mode"`
	ProgramID uint32  `json:"program_id"`
}

func (d *Datapath) linkPin(dev string, p Program) string {
	return filepath.Join(d.opts.PinRoot, "links", string(p)+"@"+dev)
}

// Attach attaches program p to dev's ingress in the mode Load settled on, or
// swaps the program of an existing attachment in place (upgrade without a
// gap). It returns that mode, having removed any attachment of the other.
func (d *Datapath) Attach(dev string, p Program) (Mode, error) {
	prog, err := d.Program(p)
	if err != nil {
		return "", err
	}
	l, err := netlink.LinkByName(dev)
	if err != nil {
		return "", fmt.Errorf("attach %s: look up device %s: %w", p, dev, err)
	}
	ifindex := l.Attrs().Index

	if d.opts.Mode == ModeTCX {
		if err := d.attachTCX(dev, ifindex, p, prog); err != nil {
			return "", err
		}
		return ModeTCX, detachTC(l, p)
	}
	if err := attachTC(l, p, prog); err != nil {
		return "", err
	}
	return ModeTC, removeTCXPin(d.linkPin(dev, p))
}

func (d *Datapath) attachTCX(dev string, ifindex int, p Program, prog *ebpf.Program) error {
	pin := d.linkPin(dev, p)
	if old, err := link.LoadPinnedLink(pin, nil); err == nil {
		info, ierr := old.Info()
		if ierr == nil && info.TCX() != nil && int(info.TCX().Ifindex) == ifindex {
			defer old.Close()
			if err := old.Update(prog); err != nil {
				return fmt.Errorf("replace %s on %s (link %s): %w", p, dev, pin, err)
			}
			return nil
		}
		// The device was re-created: the old link is defunct.
		old.Unpin()
		old.Close()
	}
	l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: prog, Attach: ebpf.AttachTCXIngress})
	if err != nil {
		return fmt.Errorf("attach %s to %s with tcx: %w", p, dev, err)
	}
	defer l.Close()
	if err := ownerOnlyDir(filepath.Dir(pin)); err != nil {
		return fmt.Errorf("link pin dir: %w", err)
	}
	if err := l.Pin(pin); err != nil {
		return fmt.Errorf("pin %s link on %s at %s: %w", p, dev, pin, err)
	}
	return nil
}

func removeTCXPin(pin string) error {
	l, err := link.LoadPinnedLink(pin, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open link pin %s: %w", pin, err)
	}
	defer l.Close() // the last reference: closing detaches
	if err := l.Unpin(); err != nil {
		return fmt.Errorf("unpin link %s: %w", pin, err)
	}
	return nil
}

func clsact(l netlink.Link) *netlink.GenericQdisc {
	return &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{
			LinkIndex: l.Attrs().Index,
			Handle:    netlink.MakeHandle(0xffff, 0),
			Parent:    netlink.HANDLE_CLSACT,
		},
		QdiscType: "clsact",
	}
}

// attachTC adds our filter to dev's ingress. A clsact qdisc is added unless
// dev already has one, or an ingress qdisc (the bandwidth plugin adds one to
// a pod's veth): its filter list is the same ingress hook.
func attachTC(l netlink.Link, p Program, prog *ebpf.Program) error {
	dev := l.Attrs().Name
	if err := netlink.QdiscAdd(clsact(l)); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add clsact qdisc to %s: %w", dev, err)
	}
	f := &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: l.Attrs().Index,
			Parent:    netlink.HANDLE_MIN_INGRESS,
			Handle:    tcFilterHandle,
			Priority:  tcFilterPriority,
			Protocol:  unix.ETH_P_ALL,
		},
		Fd:           prog.FD(),
		Name:         tcFilterPrefix + string(p),
		DirectAction: true,
	}
	if err := netlink.FilterReplace(f); err != nil {
		return fmt.Errorf("attach %s to %s with tc filter: %w", p, dev, err)
	}
	// An earlier version put ours first (priority 1): one filter of ours
	// per device and program, at our priority.
	old, err := ourFilters(l, p)
	if err != nil {
		return err
	}
	for _, o := range old {
		if o.Priority == tcFilterPriority {
			continue
		}
		if err := netlink.FilterDel(o); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("delete %s's old tc filter (priority %d) from %s: %w", p, o.Priority, dev, err)
		}
	}
	return nil
}

// ourFilters lists dev's ingress bpf filters that carry our name prefix
// (all of them if p is empty).
func ourFilters(l netlink.Link, p Program) ([]*netlink.BpfFilter, error) {
	filters, err := nldump.Retry(func() ([]netlink.Filter, error) { return netlink.FilterList(l, netlink.HANDLE_MIN_INGRESS) })
	if err != nil {
		return nil, fmt.Errorf("list ingress filters of %s: %w", l.Attrs().Name, err)
	}
	var out []*netlink.BpfFilter
	for _, f := range filters {
		bf, ok := f.(*netlink.BpfFilter)
		if !ok || !strings.HasPrefix(bf.Name, tcFilterPrefix) {
			continue
		}
		if p == "" || bf.Name == tcFilterPrefix+string(p) {
			out = append(out, bf)
		}
	}
	return out, nil
}

// detachTC removes our filter for p from dev, and the clsact qdisc when no
// filter at all is left on it (one we may have added).
func detachTC(l netlink.Link, p Program) error {
	filters, err := ourFilters(l, p)
	if err != nil {
		return err
	}
	for _, f := range filters {
		if err := netlink.FilterDel(f); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("delete tc filter %s from %s: %w", f.Name, l.Attrs().Name, err)
		}
	}
	if len(filters) == 0 {
		return nil
	}
	return removeEmptyClsact(l)
}

func removeEmptyClsact(l netlink.Link) error {
	for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
		fs, err := nldump.Retry(func() ([]netlink.Filter, error) { return netlink.FilterList(l, parent) })
		if err != nil || len(fs) > 0 {
			return nil // someone else's filters: leave the qdisc
		}
	}
	if err := netlink.QdiscDel(clsact(l)); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("delete clsact qdisc of %s: %w", l.Attrs().Name, err)
	}
	return nil
}

// Detach removes program p from dev in either mode. Detaching what is not
// attached is not an error.
func (d *Datapath) Detach(dev string, p Program) error {
	return detach(d.opts.PinRoot, dev, p)
}

func detach(root, dev string, p Program) error {
	err := removeTCXPin(filepath.Join(root, "links", string(p)+"@"+dev))
	l, lerr := netlink.LinkByName(dev)
	if lerr != nil {
		var notFound netlink.LinkNotFoundError
		if errors.As(lerr, &notFound) {
			return err
		}
		return errors.Join(err, fmt.Errorf("detach %s: look up device %s: %w", p, dev, lerr))
	}
	return errors.Join(err, detachTC(l, p))
}

// Attachments lists what is attached: the tcx links pinned under root and
// our tc filters on every device of this network namespace.
func Attachments(root string) ([]Attachment, error) {
	var out []Attachment
	entries, err := os.ReadDir(filepath.Join(root, "links"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("read link pins under %s: %w", root, err)
	}
	for _, e := range entries {
		pin := filepath.Join(root, "links", e.Name())
		prog, dev, ok := strings.Cut(e.Name(), "@")
		if !ok {
			continue
		}
		l, err := link.LoadPinnedLink(pin, nil)
		if err != nil {
			return nil, fmt.Errorf("open link pin %s: %w", pin, err)
		}
		info, err := l.Info()
		l.Close()
		if err != nil {
			return nil, fmt.Errorf("link info of %s: %w", pin, err)
		}
		a := Attachment{Dev: dev, Program: Program(prog), Mode: ModeTCX, ProgramID: uint32(info.Program)}
		if tcx := info.TCX(); tcx != nil {
			a.Ifindex = int(tcx.Ifindex) // 0: the device is gone, the link defunct
		}
		out = append(out, a)
	}
	links, err := nldump.Retry(netlink.LinkList)
	if err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	for _, l := range links {
		filters, err := ourFilters(l, "")
		if err != nil {
			return nil, err
		}
		for _, f := range filters {
			out = append(out, Attachment{
				Dev: l.Attrs().Name, Ifindex: l.Attrs().Index, Mode: ModeTC, ProgramID: uint32(f.Id),
				Program: Program(strings.TrimPrefix(f.Name, tcFilterPrefix)),
			})
		}
	}
	return out, nil
}

// cleanupLockWait is how long Cleanup waits for the pin root's lock.
const cleanupLockWait = 30 * time.Second

// Cleanup detaches every program and removes every pin under root: what
// `hgw-ebpf cleanup` does. Running it twice, or with nothing there, is fine.
func Cleanup(root string) error {
	// An agent's Load or a CNI ADD at work on the same pins finishes
	// first, so that neither pins into a root half removed.
	unlock, err := lockPinRootWithin(root, cleanupLockWait)
	switch {
	case errors.Is(err, ErrNotPinned):
		unlock = func() {}
	case err != nil:
		return err
	}
	defer unlock()
	atts, err := Attachments(root)
	if err != nil {
		return err
	}
	var errs []error
	for _, a := range atts {
		if err := detach(root, a.Dev, a.Program); err != nil {
			errs = append(errs, err)
		}
	}
	for _, name := range append([]string{"links"}, pinnedMaps[:]...) {
		if err := os.RemoveAll(filepath.Join(root, name)); err != nil {
			errs = append(errs, fmt.Errorf("remove pin %s: %w", filepath.Join(root, name), err))
		}
	}
	if err := os.Remove(root); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove pin root %s: %w", root, err))
	}
	return errors.Join(errs...)
}
