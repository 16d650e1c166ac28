package supervisor

import (
	"runtime"
	"runtime/debug"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/tether-dev/tether/supervisor/fleet"
)

// Metrics are the supervisor's Prometheus metrics, registered on their own
// registry (served at /metrics). Methods are safe on a nil *Metrics.
type Metrics struct {
	Registry *prometheus.Registry

	resolutions    *prometheus.CounterVec
	resolvedOK     map[string]prometheus.Counter // scope kind -> ok counter, the hot path
	resolveLatency prometheus.Histogram
	spoofedTotal   *prometheus.CounterVec
	kvChanges      *prometheus.CounterVec
	kvInvalid      *prometheus.CounterVec
	watcherRestart *prometheus.CounterVec
	bucketDeleted  *prometheus.CounterVec
	bucketProblem  *prometheus.GaugeVec
	natsReconnects prometheus.Counter
	repliesRefused *prometheus.CounterVec
	permErrors     prometheus.Counter
	buildInfo      *prometheus.GaugeVec

	// Fleet are the fleet's metrics, registered in Registry.
	Fleet *fleet.Metrics
}

// NewMetrics creates and registers the metrics.
func NewMetrics() *Metrics {
	m := &Metrics{Registry: prometheus.NewRegistry()}
	m.resolutions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tether_resolutions_total", Help: "Config resolutions by winning scope kind and outcome (ok, not_found, invalid_config, bad_request, forbidden, unavailable).",
	}, []string{"scope", "outcome"})
	m.resolvedOK = map[string]prometheus.Counter{}
	for _, k := range []string{"agent", "role", "global"} {
		m.resolvedOK[k] = m.resolutions.WithLabelValues(k, "ok")
	}
	m.resolveLatency = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "tether_resolve_duration_seconds", Help: "Time to answer a resolve request, from receipt to reply sent.",
		Buckets: []float64{5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 1e-2},
	})
	m.spoofedTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tether_identity_mismatch_total", Help: "Messages whose body agent disagreed with the subject agent, by verb.",
	}, []string{"verb"})
	m.kvChanges = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tether_kv_changes_total", Help: "KV changes applied to the index, by bucket and op.",
	}, []string{"bucket", "op"})
	m.kvInvalid = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tether_kv_invalid_entries_total", Help: "Malformed values or unrecognised keys written to a bucket.",
	}, []string{"bucket"})
	m.watcherRestart = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tether_kv_watcher_restarts_total", Help: "KV watchers re-created after dying or stalling.",
	}, []string{"bucket"})
	m.bucketDeleted = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tether_kv_buckets_recreated_total", Help: "Watched KV buckets found deleted and re-created empty by the supervisor, by bucket.",
	}, []string{"bucket"})
	m.bucketProblem = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "tether_kv_bucket_misconfigured", Help: "1 while a bucket's settings break the contract (mcp_configs history below 5), by bucket.",
	}, []string{"bucket"})
	m.natsReconnects = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "tether_nats_reconnects_total", Help: "Reconnects of the supervisor's own NATS connection.",
	})
	m.repliesRefused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tether_replies_refused_total", Help: "Requests not answered because their reply subject broke the reply-subject rule, by endpoint.",
	}, []string{"endpoint"})
	m.permErrors = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "tether_nats_permission_errors_total", Help: "Publishes or subscriptions of the supervisor's own connection that the NATS server refused.",
	})
	m.buildInfo = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "tether_build_info", Help: "Always 1; the labels say which build runs: module version (\"(devel)\" when unknown), Go version and VCS revision (\"unknown\" when not stamped).",
	}, []string{"version", "go_version", "revision"})
	m.buildInfo.WithLabelValues(buildLabels(debug.ReadBuildInfo())).Set(1)
	m.Registry.MustRegister(m.buildInfo, m.permErrors, m.repliesRefused, m.resolutions, m.resolveLatency, m.spoofedTotal, m.kvChanges, m.kvInvalid,
		m.watcherRestart, m.bucketDeleted, m.bucketProblem, m.natsReconnects,
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	m.Fleet = fleet.NewMetrics(m.Registry, m.spoofedTotal)
	return m
}

// Values of tether_build_info's labels when the binary does not say.
const (
	unknownVersion  = "(devel)"
	unknownRevision = "unknown"
)

// buildLabels are tether_build_info's version, go_version and revision
// from debug.ReadBuildInfo's result: the main module's version, the Go
// version that built it and the vcs.revision stamp (with "-dirty" when
// vcs.modified says the tree had changes).
func buildLabels(bi *debug.BuildInfo, ok bool) (version, goVersion, revision string) {
	version, goVersion, revision = unknownVersion, runtime.Version(), unknownRevision
	if !ok || bi == nil {
		return version, goVersion, revision
	}
	if v := bi.Main.Version; v != "" {
		version = v
	}
	if bi.GoVersion != "" {
		goVersion = bi.GoVersion
	}
	dirty := false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			if s.Value != "" {
				revision = s.Value
			}
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if dirty && revision != unknownRevision {
		revision += "-dirty"
	}
	return version, goVersion, revision
}

func scopeKind(scope string) string {
	for i := 0; i < len(scope); i++ {
		if scope[i] == ':' {
			return scope[:i]
		}
	}
	if scope == "" {
		return "none"
	}
	return scope
}

func (m *Metrics) resolved(scope, outcome string, d time.Duration) {
	if m == nil {
		return
	}
	kind := scopeKind(scope)
	if c, ok := m.resolvedOK[kind]; ok && outcome == "ok" {
		c.Inc()
	} else {
		m.resolutions.WithLabelValues(kind, outcome).Inc()
	}
	m.resolveLatency.Observe(d.Seconds())
}

func (m *Metrics) spoofed(verb string) {
	if m != nil {
		m.spoofedTotal.WithLabelValues(verb).Inc()
	}
}

func (m *Metrics) kvChange(bucket, op string, invalid bool) {
	if m == nil {
		return
	}
	m.kvChanges.WithLabelValues(bucket, op).Inc()
	if invalid {
		m.kvInvalid.WithLabelValues(bucket).Inc()
	}
}

// bucketEvent counts a re-created bucket and flags a misconfigured one
// (kvconfig.StoreConfig.OnBucket).
func (m *Metrics) bucketEvent(bucket, problem string) {
	if m == nil {
		return
	}
	switch problem {
	case "deleted":
	case "re-created":
		m.bucketDeleted.WithLabelValues(bucket).Inc()
	case "":
		m.bucketProblem.WithLabelValues(bucket).Set(0)
	default:
		m.bucketProblem.WithLabelValues(bucket).Set(1)
	}
}

func (m *Metrics) watcherRestarted(bucket string) {
	if m != nil {
		m.watcherRestart.WithLabelValues(bucket).Inc()
	}
}

func (m *Metrics) reconnected() {
	if m != nil {
		m.natsReconnects.Inc()
	}
}

func (m *Metrics) replyRefused(endpoint string) {
	if m != nil {
		m.repliesRefused.WithLabelValues(endpoint).Inc()
	}
}

func (m *Metrics) permissionError() {
	if m != nil {
		m.permErrors.Inc()
	}
}
