package agentproto

import (
	"cmp"
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
)

// probeSeq numbers self-probes across the process.
var probeSeq atomic.Uint64

// healthSubject is the client's private probe subject,
// _INBOX_<agent>.probe.<instance>.
func (c *Client) healthSubject() string {
	return InboxPrefix(c.cfg.Agent) + ".probe." + c.instance
}

// kickHealth asks for a health round with a probe now.
func (c *Client) kickHealth() {
	select {
	case c.healthKick <- struct{}{}:
	default:
	}
}

// What the health loop costs and proves. Every HealthInterval it runs
// local checks that cost the server nothing: a connection closed for good
// or reconnecting for RebuildAfter is rebuilt, a subscription the server
// refused or dropped is re-created (every tick while refused, so it flows
// within a tick of being allowed again), an invalid one too. Link
// liveness is a PING every PingInterval (a black hole is found
// within BlackHoleBound): the client's own pings (liveness.go); health
// rounds add no round trip of their own.
//
// Every ProbeInterval (two heartbeats by default, jittered ±10 %) one
// self-probe goes out, through the next probed subscription in turn: it
// proves the connection's whole delivery path (server routing, the
// socket, nats.go's dispatch) and that subscription's interest and
// handler. A subscription whose handler received a message since its last
// turn is skipped (that message proved it), and so is a round whose
// subscriptions all had traffic. A lost probe makes the loop suspicious:
// from the next tick it probes every tick, through the private health
// subscription (whose handler does nothing, so it proves the connection
// alone) and every subscription whose probe was lost or that is being
// re-created, until all come back. A probe counts as lost only when it
// is not back within ProbeTimeout, the server then answers a flush (so it
// had routed the probe) and it is still not back within another
// ProbeTimeout; if the flush fails the round is inconclusive, since a slow
// or dead link is for the link's pings to judge (a rebuild on top of an
// overloaded link only adds load). The connection fails a round when the
// health subscription's probe is lost and is rebuilt after HealthFailures
// such rounds; a subscription whose own probe is lost HealthFailures
// times in a row while its handler makes no progress is re-created.

// healthState is the health loop's memory between rounds.
type healthState struct {
	fails     int       // connection rounds failed in a row
	suspect   bool      // a probe was lost: probe every tick
	nextProbe time.Time // next routine probe
	cursor    uint64    // rotation: the last subscription id probed
}

// probeGap is the wait to the next routine probe: ProbeInterval ±10 %.
func (c *Client) probeGap() time.Duration {
	return jittered(c.cfg.ProbeInterval, 0.1, rand.Float64())
}

// jittered is d scaled by 1 − f + 2·f·u, u in [0, 1): within ±f of d.
func jittered(d time.Duration, f, u float64) time.Duration {
	return time.Duration(float64(d) * (1 - f + 2*f*u))
}

// healthLoop runs the local checks every HealthInterval and the probe
// rounds described above, until the client closes.
func (c *Client) healthLoop() {
	t := time.NewTicker(c.cfg.HealthInterval)
	defer t.Stop()
	st := healthState{nextProbe: time.Now().Add(c.probeGap())}
	for {
		kicked := false
		select {
		case <-c.ctx.Done():
			return
		case <-t.C:
		case <-c.healthKick:
			kicked = true
		}
		c.healthRound(&st, kicked)
	}
}

// healthRound runs one tick: local checks, then a probe round if one is
// due.
func (c *Client) healthRound(st *healthState, kicked bool) {
	nc, gen := c.conn()
	switch {
	case nc == nil:
		st.fails, st.suspect = 0, false
		return // rebuilding
	case nc.IsClosed():
		c.requestRebuild(gen, "connection closed (found by the health loop)")
		st.fails = 0
		return
	case !nc.IsConnected():
		since := c.reconnSince.Load()
		if since != 0 && reconnectingTooLong(time.Unix(0, since), time.Now(), c.cfg.RebuildAfter) {
			c.requestRebuild(gen, fmt.Sprintf("reconnecting for more than %v", c.cfg.RebuildAfter))
		}
		st.fails = 0
		return // nats.go is on it
	}
	subs := c.snapshotSubs()
	for _, s := range subs {
		if reason, refused := s.refused(); refused {
			c.restore(s, gen, reason)
		}
	}
	now := time.Now()
	if !kicked && !st.suspect && now.Before(st.nextProbe) && !anyRestoring(subs) {
		c.judgeUnprobed(gen, subs, nil) // local checks only
		return
	}
	if !st.suspect {
		st.nextProbe = now.Add(c.probeGap())
	}
	armed := c.pickProbes(st, subs)
	r := c.probeRound(nc, armed)
	if c.ctx.Err() != nil || !nc.IsConnected() {
		return // closing, or the link dropped during the round: nats.go is on it
	}
	c.judgeRound(st, gen, subs, r)
}

// anyRestoring reports whether a subscription awaits confirmation of its
// re-creation (its probe, or a tick without a refusal).
func anyRestoring(subs []*Subscription) bool {
	for _, s := range subs {
		s.mu.Lock()
		r := s.restoring
		s.mu.Unlock()
		if r {
			return true
		}
	}
	return false
}

// armed is a probe in flight through one subscription.
type armed struct {
	s      *Subscription
	tok    string
	back   <-chan struct{}
	health bool // the private health subscription: proves the connection
}

// pickProbes arms this round's probes: while suspect, the health
// subscription and every subscription under suspicion (lost probes, being
// re-created); otherwise those being re-created and the next subscription
// in turn that had no traffic since its last turn.
func (c *Client) pickProbes(st *healthState, subs []*Subscription) []armed {
	slices.SortFunc(subs, func(a, b *Subscription) int { return cmp.Compare(a.id, b.id) })
	var out []armed
	arm := func(s *Subscription) bool {
		tok := c.instance + "." + strconv.FormatUint(probeSeq.Add(1), 10)
		if ch := s.arm(tok); ch != nil {
			out = append(out, armed{s: s, tok: tok, back: ch, health: s.subject == c.healthSubject()})
			return true
		}
		return false
	}
	rotating := !st.suspect
	for _, s := range subs {
		if st.suspect && s.subject == c.healthSubject() || s.suspected() {
			arm(s)
		}
	}
	if !rotating {
		return out
	}
	// The next subscription after the cursor, wrapping, not armed above.
	start, _ := slices.BinarySearchFunc(subs, st.cursor+1, func(s *Subscription, id uint64) int { return cmp.Compare(s.id, id) })
	for i := range subs {
		s := subs[(start+i)%len(subs)]
		if slices.ContainsFunc(out, func(a armed) bool { return a.s == s }) {
			continue
		}
		if arm(s) {
			st.cursor = s.id
			break
		}
	}
	return out
}

// roundResult is what one probe round measured.
type roundResult struct {
	probes []armed
	back   []bool
	rtt    time.Duration // to the first probe back; 0: none came back
	// inconclusive: a probe was lost but the publish or the flush after it
	// failed too, so the link itself is slow or dead: the link's pings are
	// the judge of that, not the probes.
	inconclusive bool
	pubErr       error
}

// probeRound publishes the armed probes and waits up to ProbeTimeout for
// them. Only when one is lost does it flush: a probe is lost only if the
// server answered the flush (it had routed the probe before) and the
// probe still did not come back within another ProbeTimeout (it was not
// merely queued behind a slow process).
func (c *Client) probeRound(nc *nats.Conn, probes []armed) roundResult {
	r := roundResult{probes: probes, back: make([]bool, len(probes))}
	if len(probes) == 0 {
		return r
	}
	start := time.Now()
	for _, p := range probes {
		m := nats.NewMsg(p.s.probeSub)
		m.Header.Set(HeaderProbe, p.tok)
		if err := nc.PublishMsg(m); err != nil && r.pubErr == nil {
			r.pubErr = err
		}
	}
	if r.pubErr != nil {
		r.inconclusive = true
		return r
	}
	if c.awaitProbes(&r, start) {
		return r
	}
	fctx, fcancel := context.WithTimeout(c.ctx, c.cfg.ProbeTimeout)
	err := nc.FlushWithContext(fctx)
	fcancel()
	if err != nil {
		r.inconclusive = true
		return r
	}
	c.awaitProbes(&r, start)
	return r
}

// awaitProbes waits up to ProbeTimeout for the probes not yet back and
// reports whether all are.
func (c *Client) awaitProbes(r *roundResult, start time.Time) bool {
	ctx, cancel := context.WithTimeout(c.ctx, c.cfg.ProbeTimeout)
	defer cancel()
	all := true
	for i, p := range r.probes {
		if r.back[i] {
			continue
		}
		select {
		case <-p.back:
			r.back[i] = true
			if r.rtt == 0 {
				r.rtt = time.Since(start)
			}
		case <-ctx.Done():
			select { // the deadline passed: only what is already back counts
			case <-p.back:
				r.back[i] = true
			default:
				all = false
			}
		}
	}
	return all
}

// judgeRound turns a probe round into verdicts: the connection's (its
// health probe lost although the server answered a flush is a failed
// round; any lost or inconclusive probe makes the loop suspicious) and
// each probed subscription's, then runs the local checks on the others.
func (c *Client) judgeRound(st *healthState, gen uint64, subs []*Subscription, r roundResult) {
	if r.rtt > 0 {
		c.rttNanos.Store(int64(r.rtt))
	}
	if r.inconclusive {
		for _, p := range r.probes {
			p.s.cancelProbe()
		}
		st.suspect = true
		why := "self-probe not back and the server round trip failed too: left to the link's pings"
		if r.pubErr != nil {
			why = "self-probe not published: " + r.pubErr.Error()
		}
		c.log.Debug().Str("reason", why).Uint64(logKeyConnGen, gen).Msg("agentproto: health round inconclusive")
		return
	}
	why := ""
	st.suspect = false
	for i, p := range r.probes {
		if !r.back[i] {
			st.suspect = true
			if p.health {
				why = "the self-probe of the health subscription did not come back, though the server answered a round trip"
			}
		}
	}
	if why == "" {
		st.fails = 0
		probed := make([]*Subscription, len(r.probes))
		for i, p := range r.probes {
			probed[i] = p.s
			if reason, restore := p.s.judge(r.back[i], c.cfg.HealthFailures); restore {
				c.restore(p.s, gen, reason)
			}
		}
		c.judgeUnprobed(gen, subs, probed)
		return
	}
	for _, p := range r.probes {
		p.s.cancelProbe()
	}
	st.fails++
	c.log.Warn().Str("reason", why).Int(logKeyFailures, st.fails).Uint64(logKeyConnGen, gen).Msg("agentproto: health check failed")
	c.emit(Event{Kind: EventHealthFailed, Gen: gen, Reason: why})
	if st.fails >= c.cfg.HealthFailures {
		c.requestRebuild(gen, fmt.Sprintf("%d failed health rounds in a row: %s", st.fails, why))
		st.fails, st.suspect = 0, false
	}
}

// judgeUnprobed runs the local checks on the subscriptions not probed this
// round: re-creates those no longer valid, confirms re-creations the
// server did not refuse.
func (c *Client) judgeUnprobed(gen uint64, subs, probed []*Subscription) {
	for _, s := range subs {
		if slices.Contains(probed, s) {
			continue
		}
		if reason, restore := s.judge(false, c.cfg.HealthFailures); restore {
			c.restore(s, gen, reason)
		}
	}
}
