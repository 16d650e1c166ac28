package fleet

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the fleet's Prometheus metrics: the tracker's, the
// dispatcher's and config push's. Methods are safe on a nil *Metrics.
type Metrics struct {
	hbReceived      prometheus.Counter
	hbDiscarded     *prometheus.CounterVec
	agentsByState   *prometheus.GaugeVec
	transitions     *prometheus.CounterVec
	probesSent      prometheus.Counter
	probesOverdue   prometheus.Gauge
	cmdSent         *prometheus.CounterVec
	cmdResent       *prometheus.CounterVec
	cmdAcked        *prometheus.CounterVec
	pushes          *prometheus.CounterVec
	pushAgents      prometheus.Counter
	pushSkips       *prometheus.CounterVec
	massSilent      prometheus.Gauge
	fleetFullG      prometheus.Gauge
	hbResubs        prometheus.Counter
	duplicates      prometheus.Counter
	quarantines     prometheus.Counter
	recoveryBacklog prometheus.Gauge
	kvWrites        *prometheus.CounterVec
	spoofedTotal    *prometheus.CounterVec
	servers         serverMetrics
	queue           *queueMetrics
}

// NewMetrics creates the fleet's metrics and registers them with reg.
// identityMismatch is the supervisor-wide tether_identity_mismatch_total
// (label verb), which heartbeats share with resolve requests; nil creates
// and registers one here.
func NewMetrics(reg prometheus.Registerer, identityMismatch *prometheus.CounterVec) *Metrics {
	f := &Metrics{spoofedTotal: identityMismatch}
	if f.spoofedTotal == nil {
		f.spoofedTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_identity_mismatch_total", Help: "Messages whose body agent disagreed with the subject agent, by verb.",
		}, []string{"verb"})
		reg.MustRegister(f.spoofedTotal)
	}
	c := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
	}
	cv := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
	}
	g := func(name, help string) prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: help})
	}
	f.hbReceived = c("tether_heartbeats_received_total", "Heartbeats received, before validation.")
	f.hbDiscarded = cv("tether_heartbeats_discarded_total", "Heartbeats not applied, by reason (bad_subject, too_large, bad_json, out_of_bounds, agent_mismatch, no_instance, old_seq, slow_consumer, unregistered, fleet_full).", "reason")
	f.agentsByState = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "tether_fleet_agents", Help: "Agents by state."}, []string{"state"})
	f.transitions = cv("tether_fleet_transitions_total", "Agent state changes, by new state.", "to")
	f.probesSent = c("tether_probes_sent_total", "Probes sent on agents' command subjects.")
	f.probesOverdue = g("tether_probes_unacked", "Probes past their deadline without an answering heartbeat, fleet-wide, at the last sweep.")
	f.cmdSent = cv("tether_commands_sent_total", "Commands sent (first sends), by type and route (subject, reply).", "type", "route")
	f.cmdResent = cv("tether_commands_resent_total", "Commands sent again because no heartbeat acknowledged them, by type.", "type")
	f.cmdAcked = cv("tether_commands_acked_total", "Commands acknowledged by id in a heartbeat, by type.", "type")
	f.pushes = cv("tether_config_pushes_total", "KV changes worked through for config push, by bucket.", "bucket")
	f.pushAgents = c("tether_config_push_agents_total", "Agents sent reresolve because a change affected their resolution.")
	f.pushSkips = cv("tether_config_push_skipped_total", "KV changes not pushed, by reason (invalid).", "reason")
	f.massSilent = g("tether_fleet_mass_silence", "1 while a large share of the fleet is silent at once (broker or own link suspected).")
	f.fleetFullG = g("tether_fleet_full", "1 while the fleet holds --max-agents agents and heartbeats from new ids are discarded.")
	f.hbResubs = c("tether_heartbeat_subscription_restarts_total", "Heartbeat subscriptions re-created because the supervisor's own probe stopped arriving through them.")
	f.duplicates = c("tether_fleet_duplicate_agents_total", "Agent ids found heartbeating from two instances alternately.")
	f.quarantines = c("tether_fleet_quarantines_total", "Agents quarantined for exceeding the restart intensity.")
	f.recoveryBacklog = g("tether_recovery_backlog", "Recovery commands waiting for the fleet-wide recovery rate.")
	f.kvWrites = cv("tether_fleet_kv_writes_total", "mcp_fleet record writes, by outcome (ok, failed, conflict: the record was written by someone else, such as a deposed leader, and is written over).", "outcome")
	f.servers = newServerMetrics(reg)
	reg.MustRegister(f.hbReceived, f.hbDiscarded, f.agentsByState, f.transitions, f.probesSent, f.probesOverdue,
		f.cmdSent, f.cmdResent, f.cmdAcked, f.pushes, f.pushAgents, f.pushSkips, f.massSilent, f.fleetFullG, f.hbResubs, f.duplicates,
		f.quarantines, f.recoveryBacklog, f.kvWrites)
	f.queue = newQueueMetrics(reg)
	return f
}

func (m *Metrics) spoofed(verb string) {
	if m != nil {
		m.spoofedTotal.WithLabelValues(verb).Inc()
	}
}

func (m *Metrics) heartbeat() {
	if m != nil {
		m.hbReceived.Inc()
	}
}

func (m *Metrics) discarded(reason string) {
	if m != nil {
		m.hbDiscarded.WithLabelValues(reason).Inc()
	}
}

func (m *Metrics) dropped(n int) {
	if m != nil {
		m.hbDiscarded.WithLabelValues(DiscardDropped).Add(float64(n))
	}
}

func (m *Metrics) fleetGauges(counts *[numStates]atomic.Int64, overdue, backlog int) {
	if m == nil {
		return
	}
	for s := StateHealthy; s < numStates; s++ {
		m.agentsByState.WithLabelValues(s.String()).Set(float64(counts[s].Load()))
	}
	m.probesOverdue.Set(float64(overdue))
	m.recoveryBacklog.Set(float64(backlog))
}

func (m *Metrics) transition(to State) {
	if m != nil {
		m.transitions.WithLabelValues(to.String()).Inc()
	}
}

func (m *Metrics) probeSent() {
	if m != nil {
		m.probesSent.Inc()
	}
}

func (m *Metrics) commandSent(typ, route string, resend bool) {
	if m == nil {
		return
	}
	if resend {
		m.cmdResent.WithLabelValues(typ).Inc()
		return
	}
	m.cmdSent.WithLabelValues(typ, route).Inc()
}

func (m *Metrics) commandAcked(typ string) {
	if m != nil {
		m.cmdAcked.WithLabelValues(typ).Inc()
	}
}

func (m *Metrics) configPush(bucket string, agents int) {
	if m != nil {
		m.pushes.WithLabelValues(bucket).Inc()
		m.pushAgents.Add(float64(agents))
	}
}

func (m *Metrics) pushSkipped(reason string) {
	if m != nil {
		m.pushSkips.WithLabelValues(reason).Inc()
	}
}

func (m *Metrics) massSilence(on bool) {
	if m == nil {
		return
	}
	v := 0.0
	if on {
		v = 1
	}
	m.massSilent.Set(v)
}

func (m *Metrics) fleetFull(on bool) {
	if m == nil {
		return
	}
	v := 0.0
	if on {
		v = 1
	}
	m.fleetFullG.Set(v)
}

func (m *Metrics) hbResubscribed() {
	if m != nil {
		m.hbResubs.Inc()
	}
}

func (m *Metrics) duplicate() {
	if m != nil {
		m.duplicates.Inc()
	}
}

func (m *Metrics) quarantine() {
	if m != nil {
		m.quarantines.Inc()
	}
}

func (m *Metrics) fleetWrites(ok, failed, conflicts int) {
	if m == nil {
		return
	}
	m.kvWrites.WithLabelValues("ok").Add(float64(ok))
	if failed > 0 {
		m.kvWrites.WithLabelValues("failed").Add(float64(failed))
	}
	if conflicts > 0 {
		m.kvWrites.WithLabelValues("conflict").Add(float64(conflicts))
	}
}
