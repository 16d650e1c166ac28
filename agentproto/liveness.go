package agentproto

import (
	"context"
	"math"
	"time"

	"github.com/nats-io/nats.go"
)

// Link liveness. nats.go's own pings cannot tell a server that answers
// late from a dead path: its stale rule (MaxPingsOut PINGs unanswered)
// fires as readily when a server busy taking back its fleet answers a
// PING in two seconds, and every healthy connection it drops comes back as
// another CONNECT on the same busy server, which delays more PONGs: a
// storm that feeds itself (BENCHMARKS.md, "A fleet through a server
// crash": 23,223 CONNECTs for 10,000 agents). So the client keeps the
// link's liveness itself, in one goroutine:
//
//   - every PingInterval it sends one PING (a flush) and waits for its
//     PONG, one at a time;
//   - the link is stale when that PONG is not back and nothing has
//     arrived from the server for PingInterval × MaxPingsOut, counted from
//     the PING or the latest message (a link that delivers messages is
//     alive, however late its PONG). A black hole is thus found within
//     BlackHoleBound of its start, as with nats.go's rule;
//   - within linkGrace of a reconnect or rebuild (2 reconnect windows
//     plus BlackHoleBound), when the server may be taking back a whole
//     fleet, the limit is staleGraceFactor times longer. Not after the
//     first connect: a link that fails right after it is found as fast
//     as at any other time;
//   - a stale link is closed at once and nats.go reconnects it at the
//     agent's next slot (its subscriptions re-sent, as after any drop), so
//     a fleet that goes stale together reconnects spread.
//
// nats.go's own pings stay at its defaults (2 minutes, 2 outstanding) as a
// last net.

// staleGraceFactor stretches the stale limit within linkGrace of a
// reconnect.
const staleGraceFactor = 4

// linkGrace is how long after a reconnect the stale limit is stretched: the
// time a fleet needs to reconnect (one window) and settle (another), plus
// one black-hole bound.
func linkGrace(window, interval time.Duration, maxOut int) time.Duration {
	return 2*window + BlackHoleBound(interval, maxOut)
}

// staleLimit is how long one PING may go unanswered, with nothing else
// received, before the link is taken for dead, sinceReconnect after the
// latest reconnect.
func staleLimit(sinceReconnect, grace, interval time.Duration, maxOut int) time.Duration {
	d := time.Duration(maxOut) * interval
	if sinceReconnect < grace {
		d *= staleGraceFactor
	}
	return d
}

// grace is linkGrace for the client's current window.
func (c *Client) grace() time.Duration {
	return linkGrace(c.ReconnectWindow(), c.cfg.PingInterval, c.cfg.MaxPingsOut)
}

// markReconnected stamps a reconnect or rebuild for the stale limit's
// grace, on the monotonic clock (as an offset from the client's start,
// +1 so that 0 means never).
func (c *Client) markReconnected() { c.reconnectedAt.Store(int64(time.Since(c.born)) + 1) }

// sinceReconnect is the time since the latest reconnect or rebuild; never
// reconnected is forever (no grace).
func (c *Client) sinceReconnect() time.Duration {
	at := c.reconnectedAt.Load()
	if at == 0 {
		return time.Duration(math.MaxInt64)
	}
	return time.Since(c.born) - time.Duration(at-1)
}

// livenessLoop pings the link every PingInterval until the client closes.
// A reconnect is also noticed from nats.go's counter, since its reconnect
// callback (which stamps the grace too) may run after the first PING.
func (c *Client) livenessLoop() {
	t := time.NewTicker(c.cfg.PingInterval)
	defer t.Stop()
	var reconnects uint64
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-t.C:
		}
		nc, gen := c.conn()
		if nc == nil || !nc.IsConnected() {
			continue // rebuilding or reconnecting: nothing to ping
		}
		if r := nc.Stats().Reconnects; r != reconnects {
			if reconnects != 0 || r > 0 {
				c.markReconnected()
			}
			reconnects = r
		}
		if limit, stale := c.pingLink(nc); stale {
			c.staleLink(nc, gen, limit)
		}
	}
}

// pingLink sends one PING and waits for its PONG, watching the link's
// inbound messages meanwhile (every livenessPoll of the interval): it
// reports the link stale when the PONG is not back and nothing arrived for
// the limit, counted from the PING or the latest message seen, whichever
// is later. So a black hole is found within one interval plus the limit of
// its start (BlackHoleBound) even when messages were arriving until then.
func (c *Client) pingLink(nc *nats.Conn) (time.Duration, bool) {
	limit := staleLimit(c.sinceReconnect(), c.grace(), c.cfg.PingInterval, c.cfg.MaxPingsOut)
	// nats.go needs a deadline; past it (messages kept the link alive that
	// long) the next tick sends a new PING.
	ctx, cancel := context.WithTimeout(c.ctx, livenessPoll*limit)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- nc.FlushWithContext(ctx) }() // waited for on every path below
	poll := time.NewTicker(max(c.cfg.PingInterval/livenessPoll, time.Millisecond))
	defer poll.Stop()
	silent := time.NewTimer(limit) // the limit after the PING or the latest message seen
	defer silent.Stop()
	in := nc.Stats().InMsgs
	for {
		select {
		case <-done:
			// Answered; or closing, the connection dropped (nats.go is on
			// it), or messages kept arriving past the flush's deadline.
			return limit, false
		case <-poll.C:
			if n := nc.Stats().InMsgs; n != in {
				in = n
				silent.Reset(limit)
			}
		case <-silent.C:
			if n := nc.Stats().InMsgs; n != in {
				in = n
				silent.Reset(limit)
				continue
			}
			cancel()
			<-done
			return limit, c.ctx.Err() == nil && nc.IsConnected()
		}
	}
}

// livenessPoll is how many times per PingInterval a waiting PING checks
// whether messages arrived (a message is seen up to PingInterval /
// livenessPoll after it came, and the limit counted from then).
const livenessPoll = 4

// staleLink closes a stale link; nats.go reconnects it at the agent's next
// slot (its reconnect loop waits the ReconnectToServer delay first).
func (c *Client) staleLink(nc *nats.Conn, gen uint64, limit time.Duration) {
	if cur, g := c.conn(); cur != nc || g != gen || !nc.IsConnected() {
		return // replaced or dropped meanwhile
	}
	c.log.Warn().Uint64(logKeyConnGen, gen).Int64("unanswered_ms", limit.Milliseconds()).
		Msg("agentproto: link stale: a PING went unanswered and nothing arrived; reconnecting at the next slot")
	c.emit(Event{Kind: EventLinkStale, Gen: gen, Reason: "PING unanswered for " + limit.String()})
	_ = nc.ForceReconnect()
}
