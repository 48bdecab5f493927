// Package metrics exposes the agent's Prometheus metrics and its /healthz
// and /readyz endpoints. Fast-path counters are read from the pinned per-CPU
// stats map at scrape time, so they are exact and cost nothing per packet.
package metrics

import (
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/hgw-ebpf/hgw-ebpf/internal/datapath"
)

const namespace = "hgw"

// Metrics holds every metric of one agent, registered in its own registry
// (no global state: tests and the lab can run several agents).
type Metrics struct {
	Registry *prometheus.Registry

	// The routing metrics are by family (ipv4, ipv6): a dual-stack node
	// runs one reconciler per family.
	Peers            *prometheus.GaugeVec // by family
	Entries          *prometheus.GaugeVec // by family and table (kernel, map)
	LeasesSkipped    *prometheus.GaugeVec // by family and reason, in the current snapshot
	ReconcileRuns    *prometheus.CounterVec
	ReconcileSeconds *prometheus.HistogramVec
	RouteRepairs     *prometheus.CounterVec
	WatchEvents      prometheus.Counter
	EtcdReconnects   prometheus.Counter
	LeaseExpiry      prometheus.Gauge
	Attached         *prometheus.GaugeVec // by dev and program
	FastPathActive   prometheus.Gauge
	FastPathChecks   *prometheus.GaugeVec // by check: conntrack, policy
	PolicyEngines    *prometheus.GaugeVec // by engine
	IPTablesRepairs  prometheus.Counter
}

// New builds the metrics; stats may be nil (routes-only mode).
func New(stats StatsReader) *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		Peers: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace, Name: "peers",
			Help: "Peer nodes in the desired state (leases routed to), by family."}, []string{"family"}),
		Entries: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace, Name: "route_entries",
			Help: "Route entries after the last reconcile, by family and table (kernel, map)."}, []string{"family", "table"}),
		LeasesSkipped: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace, Name: "leases_skipped",
			Help: "Leases (in etcd, or Kubernetes Nodes) that are not routed to in the family, by family and reason."}, []string{"family", "reason"}),
		ReconcileRuns: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "reconcile_runs_total",
			Help: "Reconcile runs, by family and result (ok, error)."}, []string{"family", "result"}),
		ReconcileSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: namespace, Name: "reconcile_duration_seconds",
			Help: "Time one reconcile run takes, by family.", Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10)}, []string{"family"}),
		RouteRepairs: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "route_repairs_total",
			Help: "Routes or map entries found missing or wrong and put back, by family."}, []string{"family"}),
		WatchEvents: prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "etcd_watch_events_total",
			Help: "Lease changes received from the etcd watch (with --kube-subnet-mgr: from the Node informer)."}),
		EtcdReconnects: prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "etcd_relists_total",
			Help: "Full re-reads of the leases after a broken or compacted watch (with --kube-subnet-mgr: the informer's fresh lists of every Node)."}),
		LeaseExpiry: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: "lease_expiry_timestamp_seconds",
			Help: "When this node's own lease expires unless renewed (0: a reservation without TTL, or a Kubernetes Node lease)."}),
		Attached: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace, Name: "datapath_attached",
			Help: "1 if the program is attached to the device's ingress."}, []string{"dev", "program"}),
		FastPathActive: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: "fastpath_active",
			Help: "1 while the programs may redirect packets: not stepping aside for a NetworkPolicy engine, and conntrack checked (or ignored on purpose)."}),
		FastPathChecks: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace, Name: "fastpath_check",
			Help: "1 if the check is active: conntrack (the programs ask the conntrack table), policy (the fast path steps aside while a NetworkPolicy engine is present)."}, []string{"check"}),
		PolicyEngines: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace, Name: "policy_engine",
			Help: "1 for each NetworkPolicy engine found on the node at the last check."}, []string{"engine"}),
		IPTablesRepairs: prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "iptables_repairs_total",
			Help: "Times flanneld's FORWARD or masquerade rules were found changed or missing and written again."}),
	}
	m.Registry.MustRegister(
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.Peers, m.Entries, m.LeasesSkipped, m.ReconcileRuns, m.ReconcileSeconds, m.RouteRepairs,
		m.WatchEvents, m.EtcdReconnects, m.LeaseExpiry, m.Attached,
		m.FastPathActive, m.FastPathChecks, m.PolicyEngines, m.IPTablesRepairs,
	)
	if stats != nil {
		m.Registry.MustRegister(newFastPathCollector(stats))
	}
	return m
}

// AddFastPath registers the fast-path counters of stats (the datapath,
// once loaded; the agent serves its other metrics before that).
func (m *Metrics) AddFastPath(stats StatsReader) error {
	if err := m.Registry.Register(newFastPathCollector(stats)); err != nil {
		return fmt.Errorf("register fast-path counters: %w", err)
	}
	return nil
}

// SetLeaseExpiry records the own lease's expiry (zero time: no TTL).
func (m *Metrics) SetLeaseExpiry(t time.Time) {
	if t.IsZero() {
		m.LeaseExpiry.Set(0)
		return
	}
	m.LeaseExpiry.Set(float64(t.Unix()))
}

// SetPolicyEngines records the engines found now, by name.
func (m *Metrics) SetPolicyEngines(names []string) {
	m.PolicyEngines.Reset()
	for _, n := range names {
		m.PolicyEngines.WithLabelValues(n).Set(1)
	}
}

// StatsReader is the stats map (datapath.Maps satisfies it).
type StatsReader interface {
	Stats() ([]datapath.Counter, error)
}

// fastPathCollector turns the per-CPU stats map into counters at scrape
// time.
type fastPathCollector struct {
	stats   StatsReader
	packets *prometheus.Desc
	bytes   *prometheus.Desc
	errors  *prometheus.Desc
}

func newFastPathCollector(s StatsReader) *fastPathCollector {
	labels := []string{"family", "program", "reason"}
	return &fastPathCollector{
		stats: s,
		packets: prometheus.NewDesc(namespace+"_fastpath_packets_total",
			"Packets seen by the TC programs, by family (ipv4, ipv6, other: not IP), program and the reason for their path (redirect = fast path).", labels, nil),
		bytes: prometheus.NewDesc(namespace+"_fastpath_bytes_total",
			"Bytes seen by the TC programs, by family, program and reason.", labels, nil),
		errors: prometheus.NewDesc(namespace+"_fastpath_stats_read_errors",
			"1 if the stats map could not be read at this scrape.", nil, nil),
	}
}

func (c *fastPathCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.packets
	ch <- c.bytes
	ch <- c.errors
}

func (c *fastPathCollector) Collect(ch chan<- prometheus.Metric) {
	counters, err := c.stats.Stats()
	if err != nil {
		ch <- prometheus.MustNewConstMetric(c.errors, prometheus.GaugeValue, 1)
		return
	}
	ch <- prometheus.MustNewConstMetric(c.errors, prometheus.GaugeValue, 0)
	for _, s := range counters {
		ch <- prometheus.MustNewConstMetric(c.packets, prometheus.CounterValue, float64(s.Packets), s.Family, s.Program, s.Reason)
		ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.CounterValue, float64(s.Bytes), s.Family, s.Program, s.Reason)
	}
}
