package fleet

import (
	"time"

	"github.com/tether-dev/tether/agentproto"
)

// sweepState is owned by the sweep goroutine.
type sweepState struct {
	bucket    *tokenBucket
	massSince int64
	massHeld  bool
	probes    []probeOut
	sends     []sendOut
	trans     []transOut
	forget    []forgotten
	quar      []string
	overdue   int
	srv       serverSweep
}

type probeOut struct{ agent, nonce string }

// forgotten is a gone agent the sweep dropped, with its record's revision.
type forgotten struct {
	id  string
	rev uint64
}

type sendOut struct {
	agent  string
	cmd    agentproto.Command
	resend bool
}

type transOut struct {
	agent    string
	from, to State
	why      string
}

// init sizes the recovery bucket to hold at least one sweep's worth of
// tokens: releases happen once per sweep, so a smaller bucket would cap
// the rate at burst per sweep.
func (s *sweepState) init(cfg Config, now int64) {
	perSweep := int(cfg.RecoveryRate*cfg.CheckInterval.Seconds()) + 1
	s.bucket = newTokenBucket(cfg.RecoveryRate, max(cfg.RecoveryBurst, perSweep), now)
}

// sweepOnce judges every agent once: escalates silence, detects zombies,
// sends due probes and pending commands, releases queued recovery
// commands at the fleet-wide rate, and forgets long-gone agents. While the
// supervisor's own link is down nothing happens; while heartbeats wait
// unread (it is behind) silence and probes prove nothing, so nobody is
// judged or probed, but pending commands still go out.
func (t *tracker) sweepOnce() {
	if t.linkDown.Load() {
		return
	}
	behind := t.behind.Load()
	now := t.now()
	s := &t.sweep
	s.probes, s.sends, s.trans, s.forget, s.quar, s.overdue = s.probes[:0], s.sends[:0], s.trans[:0], s.forget[:0], s.quar[:0], 0
	leader := t.cmd.Leader()
	freeze := t.massActive(now)
	var silent, candidates int
	t.beginServers()
	servers := t.anyServers.Load() // a fleet whose agents report no MCP servers skips them
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		for i := 0; i < len(sh.list); i++ {
			a := sh.list[i]
			// Only established agents count for mass silence: ids heard once
			// and never again (a one-shot publisher) must not freeze judgement.
			est := t.isEstablished(a)
			if est && (a.live == StateHealthy || a.live == StateSuspect) {
				candidates++
			}
			if !behind && t.judge(a, now, freeze) && est {
				silent++
			}
			if servers && a.servers != nil {
				t.tallyServers(a)
			}
			if a.live == StateGone && t.cfg.ForgetAfter > 0 && now-a.heard >= int64(t.cfg.ForgetAfter) {
				t.counts[a.state].Add(-1)
				sh.remove(a)
				t.size.Add(-1)
				s.forget = append(s.forget, forgotten{a.id, a.kvRev})
				i-- // the last agent moved into this slot
				continue
			}
			if leader && !freeze {
				t.commandDue(a, now, behind)
			}
			t.settle(a, now)
		}
		sh.mu.Unlock()
	}
	if !behind {
		t.updateMass(now, silent, candidates)
	}
	t.judgeServers(now, t.clock.Now(), leader && !freeze)
	if leader && !freeze {
		if t.gap.Swap(false) {
			// Pushes were dropped while this replica did not command (its
			// lease lapsed): nothing else would deliver them.
			t.reconcile(reasonGap, nil)
		}
		t.releaseRecoveries(now)
	}
	t.act()
}

// judge escalates an agent's liveness from its silence; it reports whether
// the agent counts as silent for mass-silence detection.
func (t *tracker) judge(a *agent, now int64, freeze bool) bool {
	heard := a.heard
	if a.live < StateLost {
		heard = max(heard, t.grace.Load())
	}
	interval := effectiveInterval(t.cfg.HeartbeatInterval, a.intervalMS)
	silence := time.Duration(now - heard)
	live := liveness(silence, interval, t.cfg.SuspectAfter, t.cfg.LostAfter, t.cfg.GoneAfter)
	wasLive := a.live == StateHealthy || a.live == StateSuspect
	if freeze && wasLive && live > StateSuspect {
		live = StateSuspect // mass silence: blame the broker, not the agents
	}
	if a.goodbye {
		live = StateGone
	}
	if live > a.live {
		a.live = live
		switch live {
		case StateSuspect:
			a.setReason("no heartbeat for " + silence.Round(time.Millisecond).String())
		case StateLost:
			a.setReason("no heartbeat for " + silence.Round(time.Millisecond).String())
			a.zombie, a.qzombie, a.probes = false, false, nil
		case StateGone:
			if !a.goodbye {
				a.setReason("lost for " + silence.Round(time.Second).String())
			}
			dropOwed(a)
		}
	}
	return wasLive && live >= StateSuspect
}

// dropOwed forgets what a gone agent was owed: its pending commands and
// probes. Nothing would deliver them, and a returning agent owes nothing
// either: a new process resolves everything itself, the same one is
// re-resolved in full as a recovery (or, quarantined, by the leader's
// drift check), so only an operator's reconnect is not carried over.
func dropOwed(a *agent) {
	if len(a.pending()) > 0 {
		a.rare.pending = nil
		a.dirty |= dirtyOther
	}
	a.probes = nil
}

// agentTiming is one agent's probe cadence, probe deadline and re-send
// interval: the configured ones in its own interval.
type agentTiming struct {
	interval, probeEvery, probeTimeout, resend time.Duration
}

func (t *tracker) timing(a *agent) agentTiming {
	hb := t.cfg.HeartbeatInterval
	iv := effectiveInterval(hb, a.intervalMS)
	return agentTiming{interval: iv, probeEvery: scaled(t.cfg.ProbeInterval, hb, iv),
		probeTimeout: scaled(t.cfg.ProbeTimeout, hb, iv), resend: scaled(t.cfg.ResendInterval, hb, iv)}
}

// isEstablished reports whether a has been heard over EstablishedAfter of
// its intervals; once established, always (until forgotten).
func (t *tracker) isEstablished(a *agent) bool {
	if !a.established {
		span := time.Duration(a.heard - a.joined)
		a.established = span >= time.Duration(t.cfg.EstablishedAfter)*effectiveInterval(t.cfg.HeartbeatInterval, a.intervalMS)
	}
	return a.established
}

// commandDue detects zombies, schedules probes and collects pending
// commands due on the command subject. Leader only.
func (t *tracker) commandDue(a *agent, now int64, behind bool) {
	s := &t.sweep
	if a.live != StateHealthy {
		return
	}
	tm := t.timing(a)
	s.overdue += overdueProbes(a.probes, now, tm.probeTimeout)
	if !behind && zombieDue(a.probes, now, tm.probeTimeout, t.cfg.ZombieAfter) {
		t.zombieEpisode(a, now)
	}
	switch {
	case behind: // answers may be in the backlog: neither judge nor add probes
	case a.probeNext == 0:
		a.probeNext = now + int64(hashOffset(a.id, tm.probeEvery))
	case now >= a.probeNext-int64(t.cfg.CheckInterval)/2:
		// Sweeps come every CheckInterval, give or take the ticker's
		// latency: a probe due within half a sweep goes now. Otherwise a
		// probe due one sweep after the last would slip to the next one
		// whenever this sweep starts a little earlier after its tick than
		// that one did (at a probe interval of one sweep: every other one).
		nonce, seq := t.cmd.newNonce()
		a.probeSent = seq
		if len(a.probes) < t.cfg.ZombieAfter {
			a.probes = append(a.probes, probeRec{seq: seq, at: now})
		}
		a.probeNext = now + int64(tm.probeEvery)
		s.probes = append(s.probes, probeOut{agent: a.id, nonce: nonce})
	}
	if a.zombie {
		return // its commands ride on heartbeat replies
	}
	for _, p := range a.pending() {
		if p.queued || p.lastSent != 0 && now-p.lastSent < int64(tm.resend) {
			continue
		}
		s.sends = append(s.sends, sendOut{agent: a.id, cmd: p.cmd, resend: p.sends > 0})
		p.lastSent = now
		p.sends++
	}
}

// zombieEpisode marks an agent whose probes go unanswered while it
// heartbeats, and (unless quarantined) queues a reconnect that travels on
// its heartbeat's reply subject.
func (t *tracker) zombieEpisode(a *agent, now int64) {
	n := len(a.probes)
	a.probes = nil // a further episode needs a fresh set of unanswered probes
	a.zombie = true
	why := "zombie: " + itoa(n) + " probes on its command subject unanswered while it heartbeats"
	a.setReason(why)
	a.dirty |= dirtyOther
	if t.noteRecovery(a, now, why) {
		t.sweep.quar = append(t.sweep.quar, a.id)
		return
	}
	if a.quarantined {
		return
	}
	for _, p := range a.pending() {
		if p.cmd.Type == agentproto.CmdReconnect {
			return
		}
	}
	t.addPending(a, agentproto.Command{Type: agentproto.CmdReconnect, Reason: why}, true, now)
	t.enqueueRecovery(a.id)
}

// settle releases quarantine and stale flags and records the state.
func (t *tracker) settle(a *agent, now int64) {
	if a.quarantined && a.live == StateHealthy && !a.zombie {
		if ev, _ := intensity(a.recoveries(), now, t.cfg.QuarantinePeriod, 0); len(ev) == 0 {
			a.quarantined = false
			a.setRecoveries(nil)
			a.dirty |= dirtyOther
		}
	}
	if a.duplicate && now-a.dupAt() >= 2*int64(t.cfg.LostWindow()) {
		a.duplicate = false
		a.dirty |= dirtyOther
	}
	if from, changed := t.setState(a, deriveState(a.live, a.zombie || a.qzombie, a.quarantined), now); changed {
		t.sweep.trans = append(t.sweep.trans, transOut{agent: a.id, from: from, to: a.state, why: a.reason()})
	}
	a.tidyRare()
}

// releaseRecoveries lets queued recovery commands go at the fleet-wide
// rate, each with a not_before spread by a hash of the agent id over the
// time the backlog takes at that rate.
func (t *tracker) releaseRecoveries(now int64) {
	s := &t.sweep
	t.recMu.Lock()
	backlog := len(t.recq)
	n := 0
	for n < len(t.recq) && s.bucket.take(now) {
		n++
	}
	ids := append([]string(nil), t.recq[:n]...)
	t.recq = append(t.recq[:0], t.recq[n:]...)
	t.recMu.Unlock()
	spread := spreadFor(backlog, t.cfg.RecoveryRate, t.cfg.MaxSpread)
	for _, id := range ids {
		sh := t.shard(id)
		sh.mu.Lock()
		if a := sh.m[id]; a != nil {
			t.release(a, now, spread)
		}
		sh.mu.Unlock()
	}
}

func (t *tracker) release(a *agent, now int64, spread time.Duration) {
	for _, p := range a.pending() {
		if !p.queued {
			continue
		}
		p.queued = false
		p.cmd.NotBefore = t.notBefore(a, hashOffset(a.id, spread))
		a.dirty |= dirtyOther
		if a.zombie || a.live != StateHealthy && a.live != StateSuspect {
			p.lastSent = 0 // a zombie's goes on its next heartbeat reply
			return
		}
		t.sweep.sends = append(t.sweep.sends, sendOut{agent: a.id, cmd: p.cmd})
		p.lastSent = now
		p.sends++
		return
	}
}

// notBefore is now+offset on the agent's clock (the supervisor's wall
// clock corrected by the skew its heartbeats show), RFC 3339 UTC; "" for
// no offset.
func (t *tracker) notBefore(a *agent, offset time.Duration) string {
	if offset <= 0 {
		return ""
	}
	at := t.clock.Now().Add(offset)
	if a.skewed {
		at = at.Add(time.Duration(a.skewMS) * time.Millisecond)
	}
	return at.UTC().Format(rfc3339Milli)
}

const rfc3339Milli = "2006-01-02T15:04:05.000Z07:00"

// updateMass turns mass-silence mode on or off from this sweep's counts.
func (t *tracker) updateMass(now int64, silent, candidates int) {
	s := &t.sweep
	t.silent.Store(int64(silent))
	on := massSilent(silent, candidates, t.cfg.MassSilenceMin, t.cfg.MassSilenceShare)
	switch was := t.mass.Load(); {
	case on && !was:
		t.mass.Store(true)
		s.massSince, s.massHeld = now, false
		t.metrics.massSilence(true)
		t.log.Error().Int("silent", silent).Int("live", candidates).
			Msg("mass silence: a large share of the fleet went silent at once; suspecting the broker or the supervisor's own link, holding agents at suspect and sending nothing")
	case !on && was:
		t.mass.Store(false)
		t.metrics.massSilence(false)
		t.log.Warn().Int("silent", silent).Int("live", candidates).Dur("lasted_ms", time.Duration(now-s.massSince)).
			Msg("mass silence over; returning agents are re-resolved at the recovery rate")
	case on && !s.massHeld && now-s.massSince >= int64(t.cfg.MassSilenceHold):
		s.massHeld = true
		t.log.Error().Dur("held_ms", t.cfg.MassSilenceHold).Msg("mass silence outlasted MassSilenceHold: judging agents individually again")
	}
}

// massActive reports whether mass-silence mode holds agents and commands.
func (t *tracker) massActive(now int64) bool {
	return t.mass.Load() && now-t.sweep.massSince < int64(t.cfg.MassSilenceHold)
}

// act sends what the sweep decided and logs transitions, outside any lock.
func (t *tracker) act() {
	s := &t.sweep
	for _, p := range s.probes {
		t.cmd.probe(p.agent, p.nonce)
	}
	for i := range s.sends {
		t.cmd.send(s.sends[i].agent, &s.sends[i].cmd, s.sends[i].resend)
	}
	for _, id := range s.quar {
		t.log.Error().Str("agent", id).Msg("agent quarantined: restart intensity exceeded; no more recovery commands until it settles")
	}
	for _, tr := range s.trans {
		t.logTransition(tr.agent, tr.from, tr.to, tr.why)
	}
	if len(s.forget) > 0 {
		t.idsGen.Add(1)
		for _, f := range s.forget {
			t.change.Info().Str("agent", f.id).Msg("gone agent forgotten")
			t.cmd.forget(f.id, f.rev)
		}
	}
	t.actServers()
	t.checkRoom()
	t.metrics.fleetGauges(&t.counts, s.overdue, t.recoveryBacklog())
}

// forgetDeleted forgets an agent whose mcp_fleet record an operator
// deleted, unless it is live: a live agent's delete (or the supervisor's
// own forget racing the agent's return) is undone by writing its record
// again.
func (t *tracker) forgetDeleted(id string) {
	sh := t.shard(id)
	sh.mu.Lock()
	a := sh.m[id]
	if a == nil {
		sh.mu.Unlock()
		return
	}
	if a.live < StateLost {
		a.dirty |= dirtyOther
		st := a.state
		sh.mu.Unlock()
		t.log.Warn().Str("agent", id).Stringer("state", st).Msg("mcp_fleet record deleted while the agent is live: not forgotten, record written again (forget only lost or gone agents)")
		return
	}
	t.counts[a.state].Add(-1)
	sh.remove(a)
	t.size.Add(-1)
	sh.mu.Unlock()
	t.idsGen.Add(1)
	t.log.Info().Str("agent", id).Msg("agent forgotten: its mcp_fleet record was deleted")
	t.checkRoom()
}

// checkRoom clears the fleet-full flag once agents were forgotten.
func (t *tracker) checkRoom() {
	if n := t.size.Load(); n < int64(t.cfg.MaxAgents) && t.full.Swap(false) {
		t.metrics.fleetFull(false)
		t.log.Warn().Int64("agents", n).Int("max_agents", t.cfg.MaxAgents).Msg("fleet no longer full: new agent ids are tracked again")
	}
}

func (t *tracker) recoveryBacklog() int {
	t.recMu.Lock()
	defer t.recMu.Unlock()
	return len(t.recq)
}
