package fleet

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/kvconfig"
)

// ingest applies one decoded heartbeat to a record; the shard lock is held.
func (t *tracker) ingest(a *agent, hb *hbIn, now int64, wall time.Time, canReply bool, out *ingestOut) {
	if !t.checkInstance(a, hb, now, out) {
		out.discard = DiscardOldSeq // a stale heartbeat's acks and probe_ack count for nothing
		return
	}
	out.acked = t.applyAcks(a, hb)
	silence := now - max(a.heard, t.grace.Load())
	returning := !out.created && !out.restarted && !a.goodbye &&
		(a.live == StateLost || a.live == StateGone || time.Duration(silence) >= t.lostAfter(a))
	a.seq, a.heard, a.heardWall = hb.Seq, now, wall.UnixNano()
	a.intervalMS = hb.IntervalMS
	t.updateInfo(a, hb, wall, out)
	if hb.Servers != nil || a.servers != nil {
		t.ingestServers(a, hb.Servers, now)
	}
	if hb.Goodbye {
		a.goodbye, a.live, a.zombie, a.qzombie = true, StateGone, false, false
		a.setReason("said goodbye")
		a.setPending(nil)
		a.probes = nil
		a.dirty |= dirtyOther
	} else {
		if a.live != StateHealthy {
			a.goodbye = false
			a.probes = nil // probes sent into the gap prove nothing
			for _, p := range a.pending() {
				p.lastSent = 0 // back: re-send at once
			}
		}
		a.live = StateHealthy
		if returning {
			a.zombie = false
			t.recovery(a, now, "back after "+time.Duration(silence).Round(time.Millisecond).String()+" of silence", out)
		}
	}
	out.from, out.changed = t.setState(a, deriveState(a.live, a.zombie || a.qzombie, a.quarantined), now)
	out.to = a.state
	if canReply && a.zombie && len(a.pending()) > 0 && t.cmd.Leader() {
		out.reply, out.replyResend = t.dueReply(a, now)
	}
}

// applyAcks removes acknowledged commands and answered probes.
func (t *tracker) applyAcks(a *agent, hb *hbIn) int {
	acked := 0
	for _, id := range hb.Acks {
		pending := a.pending()
		for i, p := range pending {
			if p.cmd.ID != id {
				continue
			}
			t.metrics.commandAcked(p.cmd.Type)
			if p.cmd.Type == agentproto.CmdReconnect {
				a.probes = nil // it rebuilt: verify afresh
			}
			a.rare.pending = append(pending[:i], pending[i+1:]...)
			a.dirty |= dirtyOther
			acked++
			break
		}
	}
	if a.rare != nil && len(a.rare.pending) == 0 {
		a.rare.pending = nil
	}
	if hb.ProbeAck != "" {
		// Only a probe actually sent to this agent counts: a made-up nonce
		// naming a later one must not answer them all.
		if seq, ok := t.cmd.parseNonce(hb.ProbeAck); ok && seq > a.probeAcked && seq <= a.probeSent {
			// A newer probe arrived: the command subscription works.
			a.probeAcked = seq
			i := 0
			for i < len(a.probes) && a.probes[i].seq <= seq {
				i++
			}
			a.probes = append(a.probes[:0], a.probes[i:]...)
			if a.zombie {
				a.zombie = false
				dropUnsentReconnects(a)
				a.dirty |= dirtyOther
			}
		}
	}
	return acked
}

// dropUnsentReconnects forgets reconnects a zombie no longer needs.
func dropUnsentReconnects(a *agent) {
	pending := a.pending()
	kept := pending[:0]
	for _, p := range pending {
		if p.cmd.Type != agentproto.CmdReconnect || p.sends > 0 {
			kept = append(kept, p)
		}
	}
	a.setPending(kept)
}

// checkInstance handles restarts, duplicate ids and old sequence numbers.
// It reports false when the heartbeat is stale and must be discarded.
func (t *tracker) checkInstance(a *agent, hb *hbIn, now int64, out *ingestOut) bool {
	switch {
	case a.instance == hb.Instance:
	case a.instance == "":
		a.instance = strings.Clone(hb.Instance)
		a.dirty |= dirtyOther
		return true
	case a.prevInst() == hb.Instance:
		// An instance that was replaced came back: instance ids are unique
		// per process start, so two processes share this agent id.
		r := a.rare // not nil: prevInst is set
		a.instance, r.prevInst = r.prevInst, a.instance
		a.seq, r.prevSeq = r.prevSeq, a.seq
		if !a.duplicate {
			a.duplicate, out.dup = true, true
			a.dirty |= dirtyOther
			if r.lastRestart != 0 && r.restarts > 0 {
				// The "restart" that introduced the second instance was not one.
				r.restarts--
				if n := len(r.recoveries); n > 0 && r.recoveries[n-1] == r.lastRestart {
					r.recoveries = r.recoveries[:n-1]
				}
			}
		}
		r.dupAt = now
	default:
		r := a.more()
		r.prevInst, r.prevSeq = a.instance, a.seq
		a.instance, a.seq = strings.Clone(hb.Instance), 0
		r.restarts++
		r.lastRestart = now
		r.pending, a.probes, a.zombie = nil, nil, false // a new process resolves everything itself
		a.qzombie, r.queues = false, nil                // and binds its consumers afresh
		a.dirty |= dirtyOther
		out.restarted = true
		t.recovery(a, now, "restarted as instance "+a.instance, out)
		return true
	}
	return hb.Seq > a.seq || a.seq == 0
}

// lostAfter is the silence that makes this agent lost.
func (t *tracker) lostAfter(a *agent) time.Duration {
	return time.Duration(t.cfg.LostAfter) * effectiveInterval(t.cfg.HeartbeatInterval, a.intervalMS)
}

// updateInfo copies what dashboards show; nothing here is judged.
func (t *tracker) updateInfo(a *agent, hb *hbIn, wall time.Time, out *ingestOut) {
	a.conn.State = internConn(a.conn.State, hb.Conn.State)
	a.conn.Reconnects, a.conn.RTTMS = hb.Conn.Reconnects, hb.Conn.RTTMS
	if hb.Calls != nil {
		last := a.calls.LastErrorClass
		a.calls = *hb.Calls
		a.calls.LastErrorClass = internSmall(last, hb.Calls.LastErrorClass)
	}
	updateQueues(a, hb.Consumers)
	if hb.configsChanged {
		a.configsHash, a.configs = hb.configsHash, hb.applied
		a.dirty |= dirtyOther
	}
	if hb.SentAt != "" {
		if sent, err := time.Parse(time.RFC3339Nano, hb.SentAt); err == nil {
			a.skewMS = sent.Sub(wall).Milliseconds()
			skewed := time.Duration(abs(a.skewMS))*time.Millisecond > t.cfg.MaxClockSkew
			if skewed != a.skewed {
				a.skewed, out.skewFlag = skewed, skewed
				a.dirty |= dirtyOther
			}
		}
	}
}

func abs(x int64) int64 {
	if x < 0 {
		return -x
	}
	return x
}

// decodeApplied decodes and bounds the configs object of a heartbeat
// (entries, strings, revisions: see bounds.go); server names are interned
// (a fleet shares a handful), invalid ones skipped.
func decodeApplied(raw json.RawMessage) ([]serverApplied, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var m map[string]appliedConfig
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("configs: %w", err)
	}
	if len(m) > MaxConfigEntries {
		return nil, fmt.Errorf("%d configs entries, over %d", len(m), MaxConfigEntries)
	}
	out := make([]serverApplied, 0, len(m))
	for s, c := range m {
		switch {
		case len(s) > MaxStringBytes || len(c.Error) > MaxStringBytes:
			return nil, fmt.Errorf("a configs entry is over %d bytes", MaxStringBytes)
		case c.Revision > MaxSafeInt:
			return nil, fmt.Errorf("configs revision %d is over 2^53-1", c.Revision)
		case !kvconfig.ValidID(s):
			continue
		}
		c.Error = kvconfig.Truncate(c.Error, 200)
		out = append(out, serverApplied{server: internSmall("", s), appliedConfig: c})
	}
	return out, nil
}

// recovery records a recovery event (restart, return, zombie); past the
// restart intensity the agent is quarantined, otherwise a return gets a
// staggered re-resolve.
func (t *tracker) recovery(a *agent, now int64, why string, out *ingestOut) {
	if t.noteRecovery(a, now, why) {
		out.quarantined = true
		return
	}
	if a.quarantined || out.restarted || !t.cmd.Leader() {
		return
	}
	t.addPending(a, agentproto.Command{Type: agentproto.CmdReresolve, Reason: why}, true, now)
	out.recq = true
}

// noteRecovery appends a recovery event and reports whether it just
// quarantined the agent. The quarantine is counted here, under the shard
// lock with the state change, so whoever can see the quarantined state also
// sees it counted.
func (t *tracker) noteRecovery(a *agent, now int64, why string) bool {
	r := a.more()
	r.recoveries = append(r.recoveries, now)
	ev, over := intensity(r.recoveries, now, t.cfg.QuarantinePeriod, t.cfg.QuarantineAfter)
	if len(ev) > t.cfg.QuarantineAfter+1 {
		ev = ev[len(ev)-t.cfg.QuarantineAfter-1:]
	}
	r.recoveries = append(r.recoveries[:0], ev...)
	if !over || a.quarantined {
		return false
	}
	a.quarantined = true
	t.metrics.quarantine()
	r.reason = "quarantined: needed recovery " + itoa(len(ev)) + " times within " + t.cfg.QuarantinePeriod.String() + "; last: " + why
	kept := r.pending[:0]
	for _, p := range r.pending {
		if !p.recovery {
			kept = append(kept, p)
		}
	}
	r.pending = kept
	a.dirty |= dirtyOther
	return true
}

// addPending adds a command to an agent's pending list. Recovery commands
// wait in the fleet-wide queue; others are due at once.
func (t *tracker) addPending(a *agent, cmd agentproto.Command, recovery bool, now int64) *pendingCmd {
	if cmd.ID == "" {
		cmd.ID = t.cmd.newID()
	}
	if len(a.pending()) >= t.cfg.MaxPending {
		t.collapsePending(a)
	}
	p := &pendingCmd{cmd: cmd, created: t.clock.Now().UnixNano(), queued: recovery, recovery: recovery}
	r := a.more()
	r.pending = append(r.pending, p)
	a.dirty |= dirtyOther
	return p
}

// collapsePending replaces an overflowing pending list's config pushes by
// one re-resolve of every server.
func (t *tracker) collapsePending(a *agent) {
	r := a.more()
	kept := r.pending[:0]
	for _, p := range r.pending {
		if p.cmd.Type != agentproto.CmdReresolve || p.recovery {
			kept = append(kept, p)
		}
	}
	r.pending = append(kept, &pendingCmd{
		cmd:     agentproto.Command{ID: t.cmd.newID(), Type: agentproto.CmdReresolve, Reason: "too many pending config pushes: re-resolve every server"},
		created: t.clock.Now().UnixNano(),
	})
	t.log.Warn().Str("agent", a.id).Int("max_pending", t.cfg.MaxPending).Msg("pending commands collapsed into one re-resolve")
}

// dueReply picks the first released pending command due for sending and
// marks it sent: a zombie's commands travel on its heartbeat's reply.
func (t *tracker) dueReply(a *agent, now int64) (*agentproto.Command, bool) {
	for _, p := range a.pending() {
		if p.queued || p.lastSent != 0 && now-p.lastSent < int64(t.timing(a).resend) {
			continue
		}
		resend := p.sends > 0
		p.lastSent = now
		p.sends++
		c := p.cmd
		return &c, resend
	}
	return nil, false
}

// afterIngest logs, counts and sends what a heartbeat caused, outside the lock.
func (t *tracker) afterIngest(id string, hb *hbIn, reply string, out *ingestOut) {
	if out.created {
		t.idsGen.Add(1)
		t.change.Debug().Str("agent", id).Str("instance", hb.Instance).Msg("agent joined")
	}
	if out.discard != "" {
		t.discard(out.discard, id, nil)
		return
	}
	if out.restarted && !out.created {
		t.change.Warn().Str("agent", id).Str("instance", hb.Instance).Msg("agent restarted")
	}
	if out.dup {
		t.metrics.duplicate()
		t.change.Error().Str("agent", id).Str("instance", hb.Instance).Msg("duplicate agent id: two instances heartbeat alternately under one id")
	}
	if out.skewFlag {
		t.change.Warn().Str("agent", id).Str("sent_at", hb.SentAt).Msg("agent clock skewed beyond MaxClockSkew (judgement uses the supervisor's clock only)")
	}
	if out.quarantined {
		t.change.Error().Str("agent", id).Msg("agent quarantined: restart intensity exceeded; no more recovery commands until it settles")
	}
	if out.changed {
		t.logTransition(id, out.from, out.to, "heartbeat")
	}
	if out.recq {
		t.enqueueRecovery(id)
	}
	if out.reply != nil {
		t.cmd.reply(id, reply, out.reply, out.replyResend)
	}
}

func (t *tracker) logTransition(id string, from, to State, why string) {
	t.metrics.transition(to)
	ev := t.change.Info()
	switch {
	case to == StateSuspect || from == StateSuspect && to == StateHealthy || from == StateUnknown:
		ev = t.change.Debug()
	case to == StateZombie || to == StateQuarantined || to == StateLost:
		ev = t.change.Warn()
	}
	ev.Str("agent", id).Stringer("from", from).Stringer("to", to).Str("cause", why).Msg("agent state changed")
}

func (t *tracker) enqueueRecovery(id string) {
	t.recMu.Lock()
	t.recq = append(t.recq, id)
	t.recMu.Unlock()
}

func itoa(n int) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			break
		}
	}
	return string(b[i:])
}
