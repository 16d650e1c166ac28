package agentproto

import (
	"context"
	"errors"
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
//   - the link is stale when that PONG is not back within
//     PingInterval × MaxPingsOut and nothing else arrived from the server
//     meanwhile (a link that delivers messages is alive, however late its
//     PONG). A black hole is thus found within BlackHoleBound, as with
//     nats.go's rule;
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
// grace.
func (c *Client) markReconnected() { c.reconnectedAt.Store(time.Now().UnixNano()) }

// livenessLoop pings the link every PingInterval until the client closes.
func (c *Client) livenessLoop() {
	t := time.NewTicker(c.cfg.PingInterval)
	defer t.Stop()
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
		if limit, stale := c.pingLink(nc); stale {
			c.staleLink(nc, gen, limit)
		}
	}
}

// pingLink sends one PING and waits for its PONG; it reports the link
// stale when the PONG is not back within the limit and no message arrived
// meanwhile.
func (c *Client) pingLink(nc *nats.Conn) (time.Duration, bool) {
	since := time.Duration(math.MaxInt64) // never reconnected: no grace
	if at := c.reconnectedAt.Load(); at != 0 {
		since = time.Since(time.Unix(0, at))
	}
	limit := staleLimit(since, c.grace(), c.cfg.PingInterval, c.cfg.MaxPingsOut)
	in := nc.Stats().InMsgs
	ctx, cancel := context.WithTimeout(c.ctx, limit)
	err := nc.FlushWithContext(ctx)
	cancel()
	if err == nil || c.ctx.Err() != nil || !errors.Is(err, context.DeadlineExceeded) {
		return limit, false // answered, closing, or the connection already dropped
	}
	return limit, nc.IsConnected() && nc.Stats().InMsgs == in
}

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
