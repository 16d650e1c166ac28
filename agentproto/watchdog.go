package agentproto

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/nats-io/nats.go"
	"github.com/tether-dev/tether/kvconfig"
)

// Reconnect design. While a client has no connection it tries to connect
// once per reconnect window W (Config.FleetSize / Config.ConnectRate, kept
// within [ReconnectWait, MaxReconnectWait]; 400 ms by default) at its own
// phase, a hash of the agent id: its attempts fall on the wall-clock
// instants ≡ phase (mod W). Two properties follow, whatever the outage's
// length (an exponential backoff has neither):
//
//   - one agent is working again at most W after its server returns (plus
//     one connect), because it tries once in every window;
//   - a server that returns under N agents sees at most N/W connects per
//     second, evenly spread, because the phases are uniform over W.
//
// An attempt against a server that is down is a refused TCP dial, which
// costs the server nothing, so trying once per window while it is down is
// itself the cheap reachability probe: no separate probe is needed, and
// the first attempt that reaches the server is the agent's one connect.
// The same slots drive nats.go's reconnect loop (through
// nats.ReconnectToServer, which also walks a cluster's servers in turn, so
// a failover to the other nodes is spread the same way) and the watchdog's
// rebuild loop (after CLOSED, a rebuild command or failed health rounds).

// reconnectTo is the nats.ReconnectToServer callback: the next server of
// the pool in turn, tried at the agent's next slot of the current window
// (nats.go holds the connection's lock while calling it: the pool comes
// as an argument).
func (c *Client) reconnectTo() nats.ReconnectToServerHandler {
	var next atomic.Uint64
	return func(pool []nats.Server, _ nats.ServerInfo) (*nats.Server, time.Duration) {
		if len(pool) == 0 {
			return nil, 0
		}
		s := pool[next.Add(1)%uint64(len(pool))]
		w := c.window(len(pool))
		return &s, SlotDelay(time.Now(), w, ReconnectPhase(c.cfg.Agent, w))
	}
}

// options are the nats.go options of connection generation gen: the
// agent's private inbox prefix, reconnects on the agent's slots, link
// pings, a bounded reconnect buffer, and lifecycle handlers bound to gen
// so a replaced connection's late callbacks are ignored.
func (c *Client) options(gen uint64) []nats.Option {
	cfg := &c.cfg
	opts := []nats.Option{
		nats.Name(cfg.Name),
		nats.CustomInboxPrefix(InboxPrefix(cfg.Agent)),
		nats.MaxReconnects(cfg.MaxReconnects),
		nats.ReconnectToServer(c.reconnectTo()),
		nats.ReconnectBufSize(cfg.ReconnectBufSize),
		nats.Timeout(cfg.ConnectTimeout),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) { c.onDisconnect(gen, err) }),
		nats.ReconnectHandler(func(nc *nats.Conn) { c.onReconnect(gen, nc) }),
		nats.ReconnectErrHandler(func(_ *nats.Conn, err error) {
			c.emit(Event{Kind: EventReconnectFailed, Gen: gen, Err: err})
		}),
		nats.ClosedHandler(func(nc *nats.Conn) { c.onClosed(gen, nc) }),
		nats.LameDuckModeHandler(func(*nats.Conn) {
			c.log.Warn().Uint64(logKeyConnGen, gen).Msg("agentproto: server entering lame duck mode; will reconnect elsewhere")
			c.emit(Event{Kind: EventLameDuck, Gen: gen})
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) { c.onAsyncError(gen, sub, err) }),
	}
	switch {
	case cfg.CredsFile != "":
		opts = append(opts, nats.UserCredentials(cfg.CredsFile))
	case cfg.User != "" || cfg.Password != "":
		opts = append(opts, nats.UserInfo(cfg.User, cfg.Password))
	case cfg.Token != "":
		opts = append(opts, nats.Token(cfg.Token))
	}
	return opts
}

// dial connects generation gen, retrying at the agent's reconnect slots
// until it succeeds or ctx ends (backoff v5 with no elapsed-time cap). A
// rebuild (slotFirst) makes even its first attempt at a slot: a fleet
// whose connections all closed together (an auth change) rebuilds spread.
func (c *Client) dial(ctx context.Context, gen uint64, slotFirst bool) (*nats.Conn, error) {
	w := c.window(c.knownServers())
	b := &slotBackOff{window: w, phase: ReconnectPhase(c.cfg.Agent, w), now: time.Now}
	if slotFirst {
		t := time.NewTimer(b.NextBackOff())
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, context.Cause(ctx)
		case <-t.C:
		}
	}
	attempt := 0
	return backoff.Retry(ctx, func() (*nats.Conn, error) {
		attempt++
		nc, err := nats.Connect(c.cfg.URLs, c.options(gen)...)
		if err != nil {
			c.log.Warn().Err(err).Int(logKeyAttempt, attempt).Uint64(logKeyConnGen, gen).Msg("agentproto: connect failed; retrying")
			c.emit(Event{Kind: EventConnectFailed, Gen: gen, Err: err})
			return nil, err
		}
		if ctx.Err() != nil { // closed while dialing
			nc.Close()
			return nil, backoff.Permanent(context.Cause(ctx))
		}
		return nc, nil
	}, backoff.WithBackOff(b), backoff.WithMaxElapsedTime(0))
}

// install makes nc the connection of generation gen and (re)subscribes
// every registered subscription on it; c.mu must be held.
func (c *Client) install(nc *nats.Conn, gen uint64) {
	c.nc, c.gen, c.rebuilding = nc, gen, false
	c.reconnSince.Store(0)
	if gen > 1 {
		c.markReconnected() // a rebuild: after a failure, maybe the whole fleet's
	}
	for s := range c.subs {
		if err := s.attach(nc); err != nil {
			// Only an invalid subject or a closed connection fail here;
			// the health loop retries the closed case by rebuilding.
			c.log.Error().Err(err).Str(logKeySubject, s.subject).Msg("agentproto: resubscribe failed")
		}
	}
	for w := range c.kvs {
		w.restart()
	}
}

// requestRebuild asks the watchdog to rebuild generation gen. Requests for
// a generation already replaced are ignored by the watchdog.
func (c *Client) requestRebuild(gen uint64, reason string) {
	select {
	case c.rebuildCh <- rebuildReq{gen: gen, reason: reason}:
	default: // a request is already pending
	}
}

// watchdog owns connection replacement: it runs every rebuild, one at a
// time, until the client closes.
func (c *Client) watchdog() {
	for {
		select {
		case <-c.ctx.Done():
			return
		case r := <-c.rebuildCh:
			if _, gen := c.conn(); r.gen != gen {
				continue // that connection was already replaced
			}
			c.rebuild(r.reason)
		}
	}
}

// rebuild tears the connection down and makes a new one from scratch with
// backoff, then restores every subscription and KV watcher, sends a
// heartbeat and re-resolves the agent's configs.
func (c *Client) rebuild(reason string) {
	start := time.Now()
	c.mu.Lock()
	old, gen := c.nc, c.gen+1
	c.nc, c.gen, c.rebuilding = nil, gen, true
	c.mu.Unlock()
	c.log.Warn().Str("reason", reason).Uint64(logKeyConnGen, gen).Msg("agentproto: rebuilding the connection")
	c.emit(Event{Kind: EventRebuildStarted, Gen: gen, Reason: reason})
	if old != nil {
		old.Close() // its handlers belong to an older generation: ignored
	}
	nc, err := c.dial(c.ctx, gen, true)
	if err != nil {
		return // the client is closing
	}
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		nc.Close()
		return
	}
	c.install(nc, gen)
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(c.ctx, c.cfg.ProbeTimeout)
	ferr := nc.FlushWithContext(ctx) // subscriptions are registered at the server
	cancel()
	took := time.Since(start)
	c.stats.lastRebuild.Store(int64(took))
	c.log.Info().Err(ferr).Uint64(logKeyConnGen, gen).Int64(logKeyTookMS, took.Milliseconds()).
		Msg("agentproto: connection rebuilt; subscriptions restored")
	c.emit(Event{Kind: EventRebuilt, Gen: gen, Reason: reason, Took: took})
	c.hb.kickNow()
	c.cmds.enqueueInternal(CmdReresolve, "after rebuild")
}

func (c *Client) current(gen uint64) bool {
	_, g := c.conn()
	return g == gen
}

func (c *Client) onDisconnect(gen uint64, err error) {
	if !c.current(gen) || c.isClosing() {
		return
	}
	c.reconnSince.CompareAndSwap(0, time.Now().UnixNano())
	c.log.Warn().Err(err).Uint64(logKeyConnGen, gen).Msg("agentproto: disconnected; nats.go is reconnecting")
	c.emit(Event{Kind: EventDisconnected, Gen: gen, Err: err})
}

// onReconnect: nats.go has re-sent every subscription; KV watchers are
// re-created from their last revision (a watcher's consumer may not have
// survived), a heartbeat goes out and the data path is checked now.
func (c *Client) onReconnect(gen uint64, nc *nats.Conn) {
	if !c.current(gen) || c.isClosing() {
		return
	}
	since := c.reconnSince.Swap(0)
	c.markReconnected()
	ev := c.log.Info().Uint64(logKeyConnGen, gen).Str("server", kvconfig.MaskURL(nc.ConnectedUrl()))
	var took time.Duration
	if since != 0 {
		took = time.Since(time.Unix(0, since))
		ev = ev.Int64(logKeyTookMS, took.Milliseconds())
	}
	ev.Msg("agentproto: reconnected")
	c.emit(Event{Kind: EventReconnected, Gen: gen, Took: took})
	c.mu.Lock()
	for w := range c.kvs {
		w.restart()
	}
	c.mu.Unlock()
	c.hb.kickNow()
	c.kickHealth()
}

// onClosed: nats.go gave up (reconnects exhausted, auth failures): the
// watchdog takes over.
func (c *Client) onClosed(gen uint64, nc *nats.Conn) {
	if !c.current(gen) || c.isClosing() {
		return
	}
	c.log.Error().Err(nc.LastError()).Uint64(logKeyConnGen, gen).Msg("agentproto: connection closed for good; watchdog rebuilding")
	c.emit(Event{Kind: EventConnClosed, Gen: gen, Err: nc.LastError()})
	c.requestRebuild(gen, "connection closed")
}

func (c *Client) onAsyncError(gen uint64, sub *nats.Subscription, err error) {
	subject := ""
	if sub != nil {
		subject = sub.Subject
	}
	kind := EventAsyncError
	switch {
	case errors.Is(err, nats.ErrSlowConsumer):
		kind = EventSlowConsumer
	case errors.Is(err, nats.ErrPermissionViolation):
		kind = EventPermissionError
		c.onPermissionError(err)
	}
	c.log.Error().Err(err).Str(logKeySubject, subject).Uint64(logKeyConnGen, gen).Str(logKeyEvent, string(kind)).
		Msg("agentproto: asynchronous error")
	c.emit(Event{Kind: kind, Gen: gen, Subject: subject, Err: err})
}
