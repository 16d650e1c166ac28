package fleet

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/tether-dev/tether/agentproto"
)

// SelfProbeID is the heartbeat subject token on which the supervisor
// probes its own heartbeat subscription (DESIGN, behaviour 7: the
// supervisor is a NATS client too). A probe carries the Tether-Probe
// header, which the heartbeat handler never takes for a heartbeat.
const SelfProbeID = "tether-self-probe"

// selfProbe proves the heartbeat subscription end to end: a server that
// dropped it (a permission reload) leaves nats.go's subscription looking
// valid while nothing arrives, and the whole fleet would look silent.
// Every period a probe is published on the heartbeat subject; two periods
// without it back make the tracker blind (nobody is judged on silence),
// the subscription is re-created, and judgement resumes (silence counted
// from then) once a probe comes back.
type selfProbe struct {
	subject  string
	tag      string // "<random>." : this fleet's probes
	period   time.Duration
	sent     uint64 // sweep goroutine only
	sentAt   time.Time
	misses   int
	got      atomic.Uint64 // the latest probe seen back
	off      atomic.Bool   // publishing the probe was refused
	restarts atomic.Uint64
}

func (p *selfProbe) init(prefix string, cfg Config) {
	var b [6]byte
	_, _ = rand.Read(b[:])
	p.subject = agentproto.Subjects{Prefix: prefix}.Heartbeat(SelfProbeID)
	p.tag = "sup-" + hex.EncodeToString(b[:]) + "."
	p.period = max(cfg.CheckInterval, cfg.HeartbeatInterval/4)
}

// back records a probe that arrived; others' probes are ignored.
func (p *selfProbe) back(v string) {
	n, ok := strings.CutPrefix(v, p.tag)
	if !ok {
		return
	}
	if seq, err := strconv.ParseUint(n, 10, 64); err == nil && seq > p.got.Load() {
		p.got.Store(seq)
	}
}

// selfProbe runs on the sweep goroutine: checks the last probe, re-creates
// a subscription that stopped receiving, and sends the next probe.
func (f *Fleet) selfProbe() {
	p := &f.probe
	if p.tag == "" || p.off.Load() || f.t.linkDown.Load() {
		return
	}
	now := time.Now()
	if p.sent > 0 && now.Sub(p.sentAt) < p.period {
		return
	}
	if p.sent > 0 {
		if p.got.Load() >= p.sent {
			p.misses = 0
			if f.t.blind.Swap(false) {
				f.t.grace.Store(f.t.now())
				f.log.Warn().Msg("heartbeat subscription receives again: judging the fleet, silence counted from now")
			}
		} else if f.queued() {
			// Heartbeats wait unread in the client: the probe may be among
			// them, so its absence proves nothing yet (and re-creating the
			// subscription would drop them).
		} else if p.misses++; p.misses >= 2 {
			p.misses = 0
			if !f.t.blind.Swap(true) {
				f.log.Error().Dur("silent_for_ms", 2*p.period).Msg("heartbeat subscription does not receive its own probe: not judging anyone on silence, re-creating it")
			}
			f.resubscribe()
		}
	}
	p.sent++
	msg := &nats.Msg{Subject: p.subject, Header: nats.Header{agentproto.HeaderProbe: []string{p.tag + strconv.FormatUint(p.sent, 10)}}}
	p.sentAt = now
	if err := f.nc.PublishMsg(msg); err != nil {
		f.log.Warn().Err(err).Msg("heartbeat self-probe not sent")
	}
}

// queued reports whether heartbeats are waiting in the client for the
// handler: a subscription with a backlog is receiving.
func (f *Fleet) queued() bool {
	sub := f.sub.Load()
	if sub == nil {
		return false
	}
	n, _, err := sub.Pending()
	return err == nil && n > 0
}

// SelfProbeRefused switches the self-probe off when the server refuses its
// publish (a NATS whose permissions do not grant the supervisor its probe
// subject): a probe that cannot be sent proves nothing.
func (f *Fleet) SelfProbeRefused() {
	if !f.probe.off.Swap(true) {
		f.t.blind.Store(false)
		f.log.Warn().Str("subject", f.probe.subject).Msg("heartbeat self-probe refused by NATS permissions: the heartbeat subscription is not self-checked; grant the supervisor publish on this subject")
	}
}

// SelfProbeSubject is the subject of the heartbeat self-probe.
func (f *Fleet) SelfProbeSubject() string { return f.probe.subject }

// HeartbeatsReceiving reports whether the heartbeat subscription is proven
// to receive (false, with why, while it is being re-created).
func (f *Fleet) HeartbeatsReceiving() (bool, string) {
	if f.t.blind.Load() {
		return false, "heartbeat subscription does not receive its own probe; re-creating it"
	}
	return true, ""
}

// subscribe (re)creates the heartbeat subscription.
func (f *Fleet) subscribe() error {
	sub, err := f.nc.Subscribe(agentproto.Subjects{Prefix: f.prefix}.Wildcard("hb"), f.handleHeartbeat)
	if err != nil {
		return fmt.Errorf("fleet: subscribe to heartbeats: %w", err)
	}
	if err := sub.SetPendingLimits(hbPendingMsgs, hbPendingBytes); err != nil {
		_ = sub.Unsubscribe()
		return fmt.Errorf("fleet: heartbeat pending limits: %w", err)
	}
	f.sub.Store(sub)
	return nil
}

// resubscribe replaces a heartbeat subscription that stopped receiving.
// The new one is made first and the old one drained, not dropped: if the
// old one was receiving after all (its probe late, not lost), nothing that
// was already on its way to it is lost; a heartbeat both deliver is
// applied once (the second is stale).
func (f *Fleet) resubscribe() {
	old := f.sub.Load()
	if err := f.subscribe(); err != nil {
		f.log.Error().Err(err).Msg("cannot re-create the heartbeat subscription; retrying")
		return
	}
	if old != nil {
		if err := old.Drain(); err != nil {
			_ = old.Unsubscribe()
		}
	}
	f.dropped = 0
	f.probe.restarts.Add(1)
	f.t.metrics.hbResubscribed()
}
