package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"time"

	"github.com/hgw-ebpf/hgw-ebpf/internal/peers"
	"github.com/hgw-ebpf/hgw-ebpf/internal/registry"
	"github.com/hgw-ebpf/hgw-ebpf/internal/subnetfile"
)

// familyRoutes is one address family's routing on this node: the halves
// of the network and the underlay that Desired takes, and the Reconciler
// that applies the result to the kernel and the family's routes map.
type familyRoutes struct {
	fam peers.Family
	rec *peers.Reconciler
	// network is the cluster's network of the family; zero for IPv6 on
	// an IPv4-only network: no peers then, and routes or map entries an
	// earlier dual-stack run left are removed.
	network netip.Prefix
	onLink  []netip.Prefix
	applied string // its readiness condition
	// set is the family's desired peers, followed lease by lease on the
	// registry watch's goroutine, and skips the reasons it counted last
	// (for the metric).
	set   peers.DesiredSet
	skips map[string]bool
}

// routed tells a family the cluster network has.
func (f *familyRoutes) routed() bool { return f.network.IsValid() }

// condApplied6 is what /readyz waits for on a dual-stack node besides
// condApplied (IPv4's); noteIPv6 is its line saying what the node's IPv6
// side is.
const (
	condApplied6 = "IPv6 routes applied"
	noteIPv6     = "ipv6"
)

// startReconcilers builds one Reconciler per family: IPv4's, and IPv6's
// on a dual-stack network or, to remove what an earlier dual-stack run
// left, on any kernel with IPv6. With the programs loaded each also keeps
// its family's routes map.
func (n *node) startReconcilers() error {
	fams := []*familyRoutes{{fam: peers.IPv4, network: n.network, onLink: n.ul.prefixes, applied: condApplied}}
	if n.network6.IsValid() || kernelHasIPv6() {
		fams = append(fams, &familyRoutes{fam: peers.IPv6, network: n.network6, onLink: n.ul6.prefixes, applied: condApplied6})
	}
	n.noteIPv6()
	for _, f := range fams {
		var routeMap peers.RouteMap
		switch {
		case n.dp == nil:
		case f.fam == peers.IPv6:
			routeMap = n.dp.Routes6()
		default:
			routeMap = n.dp.Routes()
		}
		if f.routed() {
			n.ready.Set(f.applied, false)
		}
		rec, err := peers.New(peers.Options{Family: f.fam, Link: n.ul.link, RouteMap: routeMap, PlainRoutes: n.cfg.PlainRoutes,
			Log: n.log, ResyncInterval: n.cfg.ResyncInterval, Observe: n.observer(f),
			OnRepair: n.metrics.RouteRepairs.WithLabelValues(f.fam.String()).Inc})
		if err != nil {
			return fmt.Errorf("%s routes: %w", f.fam.Name(), err)
		}
		f.rec = rec
		n.families = append(n.families, f)
	}
	return nil
}

// noteIPv6 tells /readyz's readers a dual-stack node's IPv6 side.
func (n *node) noteIPv6() {
	if !n.network6.IsValid() {
		return
	}
	l := n.ownLease()
	own6, ip6 := l.IPv6Subnet, l.PublicIPv6
	note := fmt.Sprintf("IPv6: pod subnet %s, public IPv6 %s (%s)", own6, ip6, n.ul6.why)
	if !own6.IsValid() {
		note = "IPv6: no pod subnet (this node's lease has none): its pods are IPv4 only, the peers' IPv6 subnets are routed"
	}
	n.ready.SetNote(noteIPv6, note)
}

// kernelHasIPv6 tells a kernel with IPv6 (not booted with ipv6.disable=1).
func kernelHasIPv6() bool {
	_, err := os.Stat("/proc/sys/net/ipv6")
	return err == nil
}

// resyncRoutes makes every reconciler's next run the full comparison.
func (n *node) resyncRoutes() {
	for _, f := range n.families {
		f.rec.Resync()
	}
}

// input is what the family's desired peers depend on besides the
// leases: this node's side of it.
func (n *node) input(f *familyRoutes) peers.Input {
	local, err := f.rec.LocalPrefixes()
	if err != nil {
		n.log.Warn("cannot list local prefixes; leases are checked against them at the next full run", "family", f.fam, "err", err)
	}
	l := n.ownLease()
	own, publicIP := l.Subnet, l.PublicIP
	if f.fam == peers.IPv6 {
		own, publicIP = l.IPv6Subnet, l.PublicIPv6
	}
	return peers.Input{Family: f.fam, Own: own, Network: f.network, OnLink: f.onLink, Local: local, PublicIP: publicIP}
}

// follow hands the family's reconciler what c changed: the changes of
// the leases c names, judged on their own, or the complete set again
// where they cannot be (the first change, a relist, an overlap, this
// node's side changed). It returns the leases newly skipped.
func (n *node) follow(f *familyRoutes, c registry.Change) []registry.Skipped {
	if !f.routed() {
		if c.Full {
			f.rec.Update(nil) // what an earlier run left goes
		}
		return nil
	}
	in := n.input(f)
	if !c.Full {
		if changes, skipped, ok := f.set.Changed(in, c.Keys, c.Leases); ok {
			f.rec.Change(changes)
			return skipped
		}
	}
	peerList, skipped := f.set.Full(in, c.Leases)
	f.rec.Update(peerList)
	return skipped
}

// countSkips sets the family's peer and skip metrics from its set (none
// for a family the network does not have).
func (n *node) countSkips(f *familyRoutes) {
	fam := f.fam.String()
	n.metrics.Peers.WithLabelValues(fam).Set(float64(f.set.Peers()))
	now := map[string]bool{}
	f.set.Skips(func(reason string, count int) {
		now[reason] = true
		n.metrics.LeasesSkipped.WithLabelValues(fam, reason).Set(float64(count))
	})
	for reason := range f.skips {
		if !now[reason] {
			n.metrics.LeasesSkipped.DeleteLabelValues(fam, reason)
		}
	}
	f.skips = now
}

// observer records the runs of f's reconciler. The node is ready for pods
// (the subnet file) once every routed family has applied its routes.
func (n *node) observer(f *familyRoutes) func(peers.Result, time.Duration) {
	fam := f.fam.String()
	return func(res peers.Result, d time.Duration) {
		result := "ok"
		if len(res.Errors) > 0 {
			result = "error"
		}
		n.metrics.ReconcileRuns.WithLabelValues(fam, result).Inc()
		n.metrics.ReconcileSeconds.WithLabelValues(fam).Observe(d.Seconds())
		n.metrics.Entries.WithLabelValues(fam, "kernel").Set(float64(res.KernelRoutes))
		if n.dp != nil {
			n.metrics.Entries.WithLabelValues(fam, "map").Set(float64(res.MapEntries))
		}
		if !f.routed() {
			return // leftovers removed, or not: no reason to keep pods off the node
		}
		n.ready.Set(f.applied, len(res.Errors) == 0)
		if n.allApplied() {
			n.applyOnce.Do(func() { close(n.firstApply) })
		}
	}
}

// allApplied tells whether every routed family's last run had no error.
func (n *node) allApplied() bool {
	for _, f := range n.families {
		if f.routed() && !n.ready.Met(f.applied) {
			return false
		}
	}
	return true
}

// resolveDualStack reads the underlay's IPv6 side when the network config
// enables IPv6; without IPv6 there is none, and a --public-ipv6 is
// ignored, as flanneld ignores it.
func resolveDualStack(netCfg registry.Config, ul underlay, given netip.Addr, log *slog.Logger) (underlay6, error) {
	dev := ul.link.Attrs().Name
	if !netCfg.EnableIPv6 {
		if given.IsValid() {
			log.Warn("--public-ipv6 ignored: the network config does not enable IPv6", "public_ipv6", given)
		}
		return underlay6{}, nil
	}
	if !kernelHasIPv6() {
		return underlay6{}, fmt.Errorf("the network config enables IPv6 (%s), and this kernel has IPv6 disabled", netCfg.IPv6Network)
	}
	u, err := resolveUnderlay6(ul.link, given)
	if err != nil {
		return underlay6{}, err
	}
	if !u.publicIP.IsValid() {
		return underlay6{}, noPublicIPv6(dev, u)
	}
	log.Info("underlay IPv6", "dev", dev, "public_ipv6", u.publicIP, "reason", u.why, "on_link", u.prefixes, "not_chosen", u.skipped)
	return u, nil
}

// acquireOptions says who this node is (its public IPs) and which subnets
// it had: those in the subnet file an earlier run, or flanneld, wrote.
func acquireOptions(cfg Config, publicIP, publicIPv6 netip.Addr, log *slog.Logger) registry.AcquireOptions {
	acq := registry.AcquireOptions{PublicIP: publicIP, PublicIPv6: publicIPv6, TTL: cfg.LeaseTTL}
	if prev, err := subnetfile.Read(cfg.SubnetFile); err == nil {
		acq.Previous, acq.PreviousIPv6 = prev.Subnet.Masked(), prev.IPv6Subnet.Masked()
	} else if !errors.Is(err, os.ErrNotExist) {
		log.Warn("ignoring unreadable subnet file", "path", cfg.SubnetFile, "err", err)
	}
	return acq
}
