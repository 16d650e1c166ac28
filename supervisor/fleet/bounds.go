package fleet

import (
	"fmt"
	"math"
	"time"

	"github.com/tether-dev/tether/kvconfig"
)

// Heartbeat bounds (the wire contract's): anything over them is discarded
// and counted, so no agent can make the supervisor hold, log, persist or
// serve more than this of it.
const (
	MaxHeartbeatBytes = 64 << 10
	MaxInstanceBytes  = 128
	MaxConfigEntries  = 256
	MaxAcks           = 256
	MaxStringBytes    = 1 << 10
	MaxSafeInt        = 1<<53 - 1 // beyond it JavaScript dashboards lose precision
	MinIntervalMS     = 100
	MaxIntervalMS     = 3_600_000
	// MaxRTTMS bounds conn.rtt_ms: an hour; anything larger is not an RTT.
	MaxRTTMS = 3_600_000
	// MaxConsumers bounds the consumers a heartbeat declares
	// (agentproto.MaxConsumers).
	MaxConsumers = 16
)

// maxDecodedConsumers is where the fast decoder stops and lets the slow
// path (and then the bounds) decide.
const maxDecodedConsumers = MaxConsumers + 1

// Discard reasons of bounds (label values of tether_heartbeats_discarded_total).
const (
	DiscardTooLarge    = "too_large"
	DiscardOutOfBounds = "out_of_bounds"
)

// minIntervalMS is the lowest interval_ms accepted: MinIntervalMS, or a
// tenth of the configured heartbeat when that is shorter (test timings).
func minIntervalMS(configured time.Duration) int64 {
	return max(1, min(MinIntervalMS, configured.Milliseconds()/10))
}

// checkBounds reports why a decoded heartbeat is out of bounds, or nil;
// minInterval is minIntervalMS of the configuration.
func checkBounds(hb *hbIn, minInterval int64) error {
	for _, f := range []struct {
		name, v string
		max     int
	}{
		{"instance", hb.Instance, MaxInstanceBytes}, {"agent", hb.Agent, MaxStringBytes},
		{"sent_at", hb.SentAt, MaxStringBytes}, {"probe_ack", hb.ProbeAck, MaxStringBytes},
		{"conn.state", hb.Conn.State, MaxStringBytes},
	} {
		if len(f.v) > f.max {
			return fmt.Errorf("%s is %d bytes, over %d", f.name, len(f.v), f.max)
		}
	}
	if len(hb.Acks) > MaxAcks {
		return fmt.Errorf("%d acks, over %d", len(hb.Acks), MaxAcks)
	}
	for _, a := range hb.Acks {
		if len(a) > MaxStringBytes {
			return fmt.Errorf("an ack is %d bytes, over %d", len(a), MaxStringBytes)
		}
	}
	if hb.Seq > MaxSafeInt {
		return fmt.Errorf("seq %d is over 2^53-1", hb.Seq)
	}
	if hb.IntervalMS != 0 && (hb.IntervalMS < minInterval || hb.IntervalMS > MaxIntervalMS) {
		return fmt.Errorf("interval_ms %d is outside [%d, %d]", hb.IntervalMS, minInterval, MaxIntervalMS)
	}
	if r := hb.Conn.RTTMS; math.IsNaN(r) || math.IsInf(r, 0) || r < 0 || r > MaxRTTMS {
		return fmt.Errorf("conn.rtt_ms %v is outside [0, %d]", r, MaxRTTMS)
	}
	if hb.Conn.Reconnects > MaxSafeInt {
		return fmt.Errorf("conn.reconnects %d is over 2^53-1", hb.Conn.Reconnects)
	}
	if c := hb.Calls; c != nil {
		if c.OK > MaxSafeInt || c.Retried > MaxSafeInt || c.Failed > MaxSafeInt || c.Unknown > MaxSafeInt {
			return fmt.Errorf("a calls counter is over 2^53-1")
		}
		if len(c.LastErrorClass) > MaxStringBytes {
			return fmt.Errorf("calls.last_error_class is %d bytes, over %d", len(c.LastErrorClass), MaxStringBytes)
		}
	}
	if len(hb.Servers) > 0 {
		if err := checkServers(hb.Servers); err != nil {
			return err
		}
	}
	return checkConsumers(hb.Consumers) // configs are bounded where they are decoded: decodeApplied
}

// checkConsumers bounds the declared consumers: count, identifiers (the
// supervisor puts them into JetStream API subjects), counters.
func checkConsumers(cs []consumerIn) error {
	if len(cs) > MaxConsumers {
		return fmt.Errorf("%d consumers, over %d", len(cs), MaxConsumers)
	}
	for i, c := range cs {
		if !kvconfig.ValidID(c.Stream) || !kvconfig.ValidID(c.Durable) {
			return fmt.Errorf("consumers[%d]: stream %q and durable %q must be 1-64 of [A-Za-z0-9_-]",
				i, kvconfig.Truncate(c.Stream, 80), kvconfig.Truncate(c.Durable, 80))
		}
		if c.Handled > MaxSafeInt || c.Acked > MaxSafeInt || c.Naked > MaxSafeInt || c.InFlight > MaxSafeInt ||
			c.LastAckMSAgo != nil && *c.LastAckMSAgo > MaxSafeInt {
			return fmt.Errorf("consumers[%d]: a counter is over 2^53-1", i)
		}
		for j := range i {
			if cs[j].Stream == c.Stream && cs[j].Durable == c.Durable {
				return fmt.Errorf("consumers[%d]: %s/%s declared twice", i, c.Stream, c.Durable)
			}
		}
	}
	return nil
}
