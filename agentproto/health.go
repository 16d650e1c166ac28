package agentproto

import (
	"context"
	"fmt"
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

// kickHealth asks for a health round now.
func (c *Client) kickHealth() {
	select {
	case c.healthKick <- struct{}{}:
	default:
	}
}

// healthLoop proves the data path every HealthInterval: a server round
// trip and a self-probe through every probed subscription. A connection
// failing HealthFailures rounds in a row, closed for good, or reconnecting
// for RebuildAfter is rebuilt; a single dead subscription is re-created.
func (c *Client) healthLoop() {
	t := time.NewTicker(c.cfg.HealthInterval)
	defer t.Stop()
	fails := 0
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-t.C:
		case <-c.healthKick:
		}
		fails = c.healthRound(fails)
	}
}

// roundResult is what one health round measured.
type roundResult struct {
	rtt      time.Duration
	flushErr error
	probed   []*Subscription
	back     []bool
}

// healthRound runs one round and returns the connection's failed rounds
// in a row.
func (c *Client) healthRound(fails int) int {
	nc, gen := c.conn()
	switch {
	case nc == nil:
		return 0 // rebuilding
	case nc.IsClosed():
		c.requestRebuild(gen, "connection closed (found by the health loop)")
		return 0
	case !nc.IsConnected():
		since := c.reconnSince.Load()
		if since != 0 && reconnectingTooLong(time.Unix(0, since), time.Now(), c.cfg.RebuildAfter) {
			c.requestRebuild(gen, fmt.Sprintf("reconnecting for more than %v", c.cfg.RebuildAfter))
		}
		return 0 // nats.go is on it; pings found the fault
	}
	// A subscription the server refused or dropped cannot bring a probe
	// back: re-create it before probing (every round while refused, so it
	// flows within a round of being allowed again); this round's probe
	// then proves the new one.
	for _, s := range c.snapshotSubs() {
		if reason, refused := s.refused(); refused {
			c.restore(s, gen, reason)
		}
	}
	r := c.probeRound(nc)
	if c.ctx.Err() != nil || !nc.IsConnected() {
		return 0 // closing, or the link dropped during the round: nats.go is on it
	}
	c.rttNanos.Store(int64(r.rtt))
	lost := 0
	for _, b := range r.back {
		if !b {
			lost++
		}
	}
	var why string
	switch {
	case r.flushErr != nil:
		why = "server round trip failed: " + r.flushErr.Error()
	case len(r.probed) > 0 && lost == len(r.probed):
		why = "no self-probe came back through any subscription"
	default:
		// The connection works: re-create any single dead subscription.
		for i, s := range r.probed {
			if reason, restore := s.judge(r.back[i], c.cfg.HealthFailures); restore {
				c.restore(s, gen, reason)
			}
		}
		c.judgeUnprobed(gen, r.probed)
		return 0
	}
	fails++
	c.log.Warn().Str("reason", why).Int(logKeyFailures, fails).Uint64(logKeyConnGen, gen).Msg("agentproto: health check failed")
	c.emit(Event{Kind: EventHealthFailed, Gen: gen, Reason: why})
	if fails >= c.cfg.HealthFailures {
		c.requestRebuild(gen, fmt.Sprintf("%d failed health rounds in a row: %s", fails, why))
		return 0
	}
	return fails
}

// probeRound publishes a self-probe to every probed subscription, flushes
// (the round trip, measured), and waits up to ProbeTimeout for the probes.
func (c *Client) probeRound(nc *nats.Conn) roundResult {
	ctx, cancel := context.WithTimeout(c.ctx, c.cfg.ProbeTimeout)
	defer cancel()
	var (
		r     roundResult
		chans []<-chan struct{}
	)
	for _, s := range c.snapshotSubs() {
		tok := c.instance + "." + strconv.FormatUint(probeSeq.Add(1), 10)
		ch := s.arm(tok)
		if ch == nil {
			continue
		}
		m := nats.NewMsg(s.probeSub)
		m.Header.Set(HeaderProbe, tok)
		if err := nc.PublishMsg(m); err != nil {
			r.flushErr = err
		}
		r.probed, chans = append(r.probed, s), append(chans, ch)
	}
	start := time.Now()
	if err := nc.FlushWithContext(ctx); err != nil && r.flushErr == nil {
		r.flushErr = err
	}
	r.rtt = time.Since(start)
	r.back = make([]bool, len(chans))
	for i, ch := range chans {
		select {
		case <-ch:
			r.back[i] = true
		case <-ctx.Done():
			select { // the deadline passed: only what is already back counts
			case <-ch:
				r.back[i] = true
			default:
			}
		}
	}
	return r
}

// judgeUnprobed re-creates subscriptions without a probe that the server
// refused or that are no longer valid.
func (c *Client) judgeUnprobed(gen uint64, probed []*Subscription) {
	isProbed := make(map[*Subscription]bool, len(probed))
	for _, s := range probed {
		isProbed[s] = true
	}
	for _, s := range c.snapshotSubs() {
		if isProbed[s] {
			continue
		}
		if reason, restore := s.judge(false, c.cfg.HealthFailures); restore {
			c.restore(s, gen, reason)
		}
	}
}
