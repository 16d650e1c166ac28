package fleet

import (
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// Test hooks for the end-to-end tests in package fleet_test.

// PushBacklog is the number of config changes queued or being pushed.
func (f *Fleet) PushBacklog() int64 { return f.push.backlog.Load() }

// RecoveryBacklog is the number of recovery commands waiting for the
// fleet-wide rate.
func (f *Fleet) RecoveryBacklog() int { return f.t.recoveryBacklog() }

// StatusHeadroom is what a fleet.status page leaves free under the max
// payload.
const StatusHeadroom = statusHeadroom

// Tracker is the fleet's heartbeat tracker alone, without a connection,
// for the tracker benchmarks.
type Tracker struct{ t *tracker }

// NewTracker returns a tracker whose dispatcher has no connection (probes
// and commands go nowhere); isLeader nil means leader.
func NewTracker(cfg Config, isLeader func() bool) *Tracker {
	cmd, _ := newDispatcher(nil, nil, "mcp", isLeader, zerolog.Nop(), nil)
	return &Tracker{t: newTracker(cfg, "mcp", cmd, zerolog.Nop(), nil)}
}

// NewUnboundedTracker is NewTracker without the heartbeat bounds (decoded
// configs are still bounded where they are decoded), for measuring what
// the bounds cost.
func NewUnboundedTracker(cfg Config) *Tracker {
	tr := NewTracker(cfg, nil)
	tr.t.unbounded = true
	return tr
}

// HandleHeartbeat ingests one heartbeat message.
func (x *Tracker) HandleHeartbeat(m *nats.Msg) { x.t.handleHeartbeat(m) }

// Sweep runs one judgement pass.
func (x *Tracker) Sweep() { x.t.sweepOnce() }

// HeartbeatPendingLimits are the pending limits of the fleet's heartbeat
// subscription, for reference subscribers measured beside it.
const (
	HeartbeatPendingMsgs  = hbPendingMsgs
	HeartbeatPendingBytes = hbPendingBytes
)

// CounterValue reads one fleet counter or gauge by metric name (and label
// values, for a vector) without gathering the whole registry, so a
// benchmark can poll it cheaply; -1 if unknown.
func (m *Metrics) CounterValue(name string, labelValues ...string) float64 {
	var c prometheus.Collector
	switch name {
	case "tether_heartbeats_received_total":
		c = m.hbReceived
	case "tether_heartbeats_discarded_total":
		c = m.hbDiscarded.WithLabelValues(labelValues...)
	case "tether_fleet_kv_writes_total":
		c = m.kvWrites.WithLabelValues(labelValues...)
	case "tether_probes_sent_total":
		c = m.probesSent
	default:
		return -1
	}
	return counterValue(c)
}

// Established counts the agents that count for mass silence (heard over
// EstablishedAfter intervals).
func (f *Fleet) Established() int {
	n := 0
	for i := range f.t.shards {
		sh := &f.t.shards[i]
		sh.mu.Lock()
		for _, a := range sh.list {
			if a.established {
				n++
			}
		}
		sh.mu.Unlock()
	}
	return n
}

// DropHeartbeatSubscription makes the heartbeat subscription stop
// receiving without the fleet being told, as a server that removed it on
// a permission reload does.
func (f *Fleet) DropHeartbeatSubscription() {
	if sub := f.sub.Load(); sub != nil {
		_ = sub.Unsubscribe()
	}
}
