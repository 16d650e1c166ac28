package agentproto

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/kvconfig"
)

// State is what a Client reports about itself (Client.State).
type State string

// The states of a Client. Heartbeats carry all but StateDegraded, which is
// StateConnected while some config is served stale.
const (
	StateConnected    State = ConnConnected
	StateReconnecting State = ConnReconnecting
	StateRebuilding   State = ConnRebuilding
	StateDegraded     State = "degraded"
	StateClosed       State = ConnClosed
)

// Log field names of the client.
const (
	logKeyAgent    = "agent"
	logKeyInstance = "instance"
	logKeyConnGen  = "conn_gen"
	logKeySubject  = "subject"
	logKeyEvent    = "event"
	logKeyCmdID    = "cmd_id"
	logKeyCmdType  = "cmd_type"
	logKeyVia      = "via"
	logKeyBucket   = "bucket"
	logKeyRevision = "revision"
	logKeyTookMS   = "took_ms"
	logKeyFailures = "failures"
)

// Client is an agent's connection to Tether: a NATS connection kept alive
// by a watchdog, the agent's subscriptions and KV watchers (restored after
// every reconnect or rebuild), heartbeats, supervisor commands and the
// resolve client. Create one with Connect; end it with Drain or Close.
// Its methods are safe for concurrent use.
type Client struct {
	cfg      Config
	log      zerolog.Logger
	instance string
	resolver *Resolver
	calls    *CallStats
	cmds     *commander
	hb       heartbeater
	handlers inflight

	deniedReqs deniedWatch // requests in flight, ended at once by a permission violation

	ctx    context.Context // cancelled by Close and Drain
	cancel context.CancelFunc
	wg     sync.WaitGroup // every goroutine the client starts

	mu         sync.Mutex
	nc         *nats.Conn // nil while rebuilding
	gen        uint64     // connection generation, +1 per rebuild
	rebuilding bool
	closing    bool
	subs       map[*Subscription]struct{}
	kvs        map[*KVWatch]struct{}
	consumers  map[*Consumer]struct{} // Consume: declared in heartbeats, restarted by reconnect commands
	closeOnce  sync.Once
	closeErr   error

	rebuildCh     chan rebuildReq
	healthKick    chan struct{}
	reconnSince   atomic.Int64 // unix nanos nats.go started reconnecting; 0: not
	rttNanos      atomic.Int64
	born          time.Time    // Connect's start: the monotonic base of reconnectedAt
	reconnectedAt atomic.Int64 // since born, +1, of the latest reconnect or rebuild (0: none): the stale limit's grace
	fleetHint     atomic.Int64 // the supervisor's fleet_size (resolveall); 0: none yet
	// noSupervisor counts heartbeats answered "no responders".
	noSupervisor atomic.Uint64
	stats        counters
}

// rebuildQueue bounds rebuild requests waiting for the watchdog; more are
// redundant (the health loop asks again if one was needed).
const rebuildQueue = 8

// rebuildReq asks the watchdog to rebuild connection generation gen.
type rebuildReq struct {
	gen    uint64
	reason string
}

// Connect validates cfg, connects (retrying with backoff until ctx ends),
// subscribes to the agent's command subject, heartbeat replies and health
// probes, and starts the watchdog, health loop, heartbeats and command
// runner. Unless cfg.SkipInitialResolve, a ResolveAll runs in the
// background so heartbeats carry configs.
func Connect(ctx context.Context, cfg Config) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	c := &Client{
		cfg:        cfg,
		instance:   rand.Text(),
		calls:      cfg.CallStats,
		subs:       map[*Subscription]struct{}{},
		kvs:        map[*KVWatch]struct{}{},
		consumers:  map[*Consumer]struct{}{},
		rebuildCh:  make(chan rebuildReq, rebuildQueue),
		healthKick: make(chan struct{}, 1),
		born:       time.Now(),
	}
	if c.calls == nil {
		c.calls = new(CallStats)
	}
	c.log = cfg.Logger.With().Str(logKeyAgent, cfg.Agent).Str(logKeyInstance, c.instance).Logger()
	r, err := NewResolver(ResolverConfig{
		Guard: c.deniedReqs.guard,
		Agent: cfg.Agent, Subjects: cfg.Subjects, Conn: c.Conn, Policy: cfg.ResolvePolicy,
		RequestTimeout: cfg.RequestTimeout, CacheFile: cfg.ConfigCache, AllowCommands: cfg.AllowCommands, OnFleetSize: c.setFleetHint, Logger: cfg.Logger.With().Str(logKeyInstance, c.instance).Str("component", "resolver").Logger(), // the resolver adds the agent id
	})
	if err != nil {
		return nil, err
	}
	c.resolver = r
	c.cmds = newCommander(c)
	c.hb.init(c)
	if err := c.registerSystemSubs(); err != nil {
		return nil, err
	}
	nc, err := c.dial(ctx, 1, false)
	if err != nil {
		return nil, fmt.Errorf("agentproto: connect %s: %w", kvconfig.MaskURLs(cfg.URLs), err)
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.mu.Lock()
	c.install(nc, 1)
	c.mu.Unlock()
	fctx, fcancel := context.WithTimeout(ctx, c.cfg.ConnectTimeout)
	if err := nc.FlushWithContext(fctx); err != nil { // subscriptions are registered
		c.log.Warn().Err(err).Msg("agentproto: first flush failed; the health loop will check")
	}
	fcancel()
	c.goFn(c.watchdog)
	c.goFn(c.healthLoop)
	c.goFn(c.livenessLoop)
	c.goFn(c.hb.loop)
	c.goFn(c.cmds.run)
	if !cfg.SkipInitialResolve {
		c.cmds.enqueueInternal(CmdReresolve, "initial resolve")
	}
	c.emit(Event{Kind: EventConnected, Gen: 1})
	return c, nil
}

// goFn runs f in a goroutine that Close waits for.
func (c *Client) goFn(f func()) {
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		f()
	}()
}

// Agent is the agent id.
func (c *Client) Agent() string { return c.cfg.Agent }

// Instance identifies this client (the heartbeat's "instance"), unique per
// process start.
func (c *Client) Instance() string { return c.instance }

// Conn returns the current NATS connection, nil while it is being rebuilt
// or after Close. Do not keep it: a rebuild replaces it, and subscriptions
// made on it directly are not restored (use Subscribe).
func (c *Client) Conn() *nats.Conn {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nc
}

// conn returns the connection and its generation.
func (c *Client) conn() (*nats.Conn, uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nc, c.gen
}

// Resolver is the client's resolve client.
func (c *Client) Resolver() *Resolver { return c.resolver }

// CallStats counts the agent's tool calls for heartbeats: set it as
// Policy.Stats (or pass it to agentproto/mcp Options.Stats).
func (c *Client) CallStats() *CallStats { return c.calls }

// PermissionGuard is the ResolverConfig.Guard that ends a request at once
// when the server refuses its publish on this client's connection, for
// Resolvers built on Client.Conn.
func (c *Client) PermissionGuard() func(context.Context, string) (context.Context, func()) {
	return c.deniedReqs.guard
}

// AllowCommands is a copy of Config.AllowCommands, for agentproto/mcp's
// Options.AllowCommands.
func (c *Client) AllowCommands() []string { return slices.Clone(c.cfg.AllowCommands) }

// Resolve resolves one server's config (see Resolver.Resolve).
func (c *Client) Resolve(ctx context.Context, server string) (Resolved, error) {
	return c.resolver.Resolve(ctx, server)
}

// ResolveAll resolves every server visible to the agent (see
// Resolver.ResolveAll).
func (c *Client) ResolveAll(ctx context.Context) (map[string]Resolved, error) {
	return c.resolver.ResolveAll(ctx)
}

// OnConfigChange registers fn to be told of every config that changes
// revision (after a reresolve command, a rebuild or a Resolve call). An
// error from fn reports the revision as not applied in heartbeats.
func (c *Client) OnConfigChange(fn func(Resolved) error) { c.resolver.Subscribe(fn) }

// State reports the client's state: connected, reconnecting (nats.go is
// reconnecting), rebuilding (the watchdog is making a new connection),
// degraded (connected, but some config is served stale) or closed.
func (c *Client) State() State {
	s := c.connState()
	if s == StateConnected && c.resolver.Degraded() {
		return StateDegraded
	}
	return s
}

// connState is the heartbeat's conn.state.
func (c *Client) connState() State {
	c.mu.Lock()
	nc, rebuilding, closing := c.nc, c.rebuilding, c.closing
	c.mu.Unlock()
	switch {
	case closing:
		return StateClosed
	case rebuilding || nc == nil:
		return StateRebuilding
	}
	switch nc.Status() {
	case nats.CONNECTED, nats.DRAINING_SUBS, nats.DRAINING_PUBS:
		return StateConnected
	case nats.CLOSED:
		return StateRebuilding // the watchdog is about to rebuild it
	}
	return StateReconnecting
}

// RTT is the server round trip measured by the last health round.
func (c *Client) RTT() time.Duration { return time.Duration(c.rttNanos.Load()) }

// Close stops the client at once: it stops every loop and KV watcher,
// closes the connection without draining (messages in flight are lost, no
// goodbye heartbeat) and waits for every goroutine the client started and
// every message handler running. It is safe to call more than once and
// concurrently with Drain.
func (c *Client) Close() {
	c.closeOnce.Do(func() { c.shutdown(nil) })
}

// Drain stops the client gracefully: it stops the loops, sends a last
// heartbeat with goodbye set (so the supervisor marks the agent gone rather
// than lost), then drains the connection: every subscription stops taking
// messages, handlers finish those already received, pending publishes are
// flushed. If ctx ends first the connection is closed. Drain waits like
// Close and returns ctx's error in that case; after Close (or a second
// Drain) it returns nil.
func (c *Client) Drain(ctx context.Context) error {
	c.closeOnce.Do(func() { c.shutdown(ctx) })
	return c.closeErr
}

// shutdown is Close (ctx nil) or Drain.
func (c *Client) shutdown(ctx context.Context) {
	c.mu.Lock()
	c.closing = true
	c.mu.Unlock()
	c.cancel()
	c.wg.Wait() // loops, KV watchers and the watchdog are done: c.nc stays
	nc := c.Conn()
	if ctx != nil && nc != nil {
		c.closeErr = c.drainConn(ctx, nc)
	}
	if nc != nil {
		nc.Close()
	}
	c.mu.Lock()
	c.nc = nil
	gen := c.gen
	c.mu.Unlock()
	c.handlers.closeAndWait()
	c.emit(Event{Kind: EventClosed, Gen: gen, Reason: "client closed"})
	c.log.Info().Msg("agentproto: client closed")
}

// drainConn sends the goodbye heartbeat and drains nc within ctx.
func (c *Client) drainConn(ctx context.Context, nc *nats.Conn) error {
	fctx, cancel := context.WithTimeout(ctx, c.cfg.ConnectTimeout) // nats.go needs a deadline
	defer cancel()
	if err := c.hb.publish(nc, true); err != nil {
		c.log.Warn().Err(err).Msg("agentproto: goodbye heartbeat not sent")
	} else if err := nc.FlushWithContext(fctx); err != nil {
		c.log.Warn().Err(err).Msg("agentproto: goodbye heartbeat not flushed")
	}
	closed := make(chan struct{})
	nc.SetClosedHandler(func(*nats.Conn) { close(closed) })
	if nc.IsClosed() {
		return nil
	}
	if err := nc.Drain(); err != nil {
		if errors.Is(err, nats.ErrConnectionClosed) {
			return nil
		}
		return fmt.Errorf("agentproto: drain: %w", err)
	}
	select {
	case <-closed:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("agentproto: drain: %w", context.Cause(ctx))
	}
}

// isClosing reports whether Close or Drain began.
func (c *Client) isClosing() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closing
}

// inflight tracks running message handlers so Close can wait for them,
// without the Add-after-Wait race of a sync.WaitGroup.
type inflight struct {
	mu     sync.Mutex
	cond   *sync.Cond
	n      int
	closed bool
}

// enter registers a handler call; false once closed (skip the call).
func (f *inflight) enter() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return false
	}
	f.n++
	return true
}

func (f *inflight) exit() {
	f.mu.Lock()
	f.n--
	if f.n == 0 && f.cond != nil {
		f.cond.Broadcast()
	}
	f.mu.Unlock()
}

// closeAndWait refuses new calls and waits for running ones.
func (f *inflight) closeAndWait() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	if f.cond == nil {
		f.cond = sync.NewCond(&f.mu)
	}
	for f.n > 0 {
		f.cond.Wait()
	}
}
