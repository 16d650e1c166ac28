package fleet

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/internal/logsample"
	"github.com/tether-dev/tether/kvconfig"
)

// Heartbeat subscription pending limits: about 10 s of a 100k-agent fleet
// at 1 Hz before anything is dropped (drops are counted).
const (
	hbPendingMsgs  = 1 << 20
	hbPendingBytes = 512 << 20
)

// Errors of the fleet API.
var (
	// ErrUnknownAgent is returned for an agent that never sent a heartbeat.
	ErrUnknownAgent = errors.New("fleet: agent not in the fleet")
	// ErrNotLeader is returned by commands on a replica that is not the leader.
	ErrNotLeader = errors.New("fleet: not the leader; commands are sent by the leader only")
)

// Fleet watches the agents: it tracks heartbeats, judges states, probes,
// sends and re-sends commands, staggers recovery, pushes config changes to
// exactly the affected agents and serves mcp.v1.fleet.status. It is owned
// by the Supervisor; Close stops every goroutine it started and waits.
type Fleet struct {
	cfg        Config
	prefix     string
	log        zerolog.Logger
	nc         *nats.Conn
	t          *tracker
	cmd        *dispatcher
	push       *pusher
	sub        atomic.Pointer[nats.Subscription] // heartbeats; replaced by the self-probe
	probe      selfProbe
	kv         jetstream.KeyValue // mcp_fleet
	forget     *kvconfig.Watcher  // operator deletes of mcp_fleet records
	watchCheck time.Duration
	buckets    *kvconfig.BucketConfig
	relSub     *nats.Subscription // mcp.v1.fleet.release
	leadership atomic.Pointer[func() (string, time.Duration)]

	// hbGate lets Close wait for a heartbeat handler already running: each
	// handler holds it shared, Close takes it exclusively and sets hbClosed.
	hbGate   sync.RWMutex
	hbClosed bool

	dropped int // heartbeats dropped so far; sweep goroutine only

	queue queueState // the queue checker goroutine's (queue.go)

	cancel    context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once
}

// Options are what New needs besides the Config.
type Options struct {
	// Config sets judgement, probes, re-sends, recovery pacing and
	// quarantine. Required; Validate is checked.
	Config Config
	// Prefix is the subject prefix ("mcp"). Required.
	Prefix string
	// Conn is the supervisor's NATS connection: heartbeats are subscribed
	// and probes and commands published on it. Required.
	Conn *nats.Conn
	// KV is the mcp_fleet bucket: the fleet's picture is read from it at
	// Start and TakeLead and written to it while leading. Nil keeps the
	// picture in memory only.
	KV jetstream.KeyValue
	// WatchCheckInterval is the stall check of the watcher that follows
	// operator deletes of mcp_fleet records; zero is
	// kvconfig.DefaultCheckInterval.
	WatchCheckInterval time.Duration
	// Buckets, when set, re-creates a deleted mcp_fleet with these settings
	// (the records are gone; the leader writes its picture again).
	Buckets *kvconfig.BucketConfig
	// Metrics receives the fleet's metrics; nil counts nothing.
	Metrics *Metrics
	// Logger is the parent logger; the fleet logs as component fleet,
	// dispatcher and push.
	Logger zerolog.Logger
}

// New builds the fleet. It takes config changes (ConfigChanged) from the
// moment it returns, so it is built before the KV store opens; Start
// begins tracking.
func New(o Options) (*Fleet, error) {
	if o.Conn == nil || o.Prefix == "" {
		return nil, errors.New("fleet: Options need Conn and Prefix")
	}
	if err := o.Config.Validate(); err != nil {
		return nil, err
	}
	o.Config = o.Config.withDerived()
	log := o.Logger.With().Str("component", "fleet").Logger()
	cmd, err := newDispatcher(o.Conn, o.KV, o.Prefix, o.Config.IsLeader, o.Logger.With().Str("component", "dispatcher").Logger(), o.Metrics)
	if err != nil {
		return nil, fmt.Errorf("fleet: dispatcher: %w", err)
	}
	cmd.fence = o.Config.Fence
	t := newTracker(o.Config, o.Prefix, cmd, log, o.Metrics)
	return &Fleet{cfg: o.Config, prefix: o.Prefix, log: log, nc: o.Conn, t: t, cmd: cmd, kv: o.KV, watchCheck: o.WatchCheckInterval, buckets: o.Buckets,
		push: newPusher(t, o.Logger.With().Str("component", "push").Logger(), o.Metrics)}, nil
}

// Start rebuilds the picture from mcp_fleet, subscribes to heartbeats and
// starts the sweep, persistence, push and drift loops. ix is the config
// index pushes and drift checks resolve against.
func (f *Fleet) Start(ctx context.Context, ix *kvconfig.Index) error {
	f.t.index.Store(ix)
	if f.kv != nil {
		n, err := f.t.load(ctx, f.kv)
		if err != nil {
			return err
		}
		if n > 0 {
			f.log.Info().Int("agents", n).Dur("grace_ms", f.cfg.LostWindow()).
				Msg("fleet rebuilt from mcp_fleet; no agent is declared lost before one detection window")
		}
	}
	f.t.grace.Store(f.t.now())
	if err := f.subscribe(); err != nil {
		return err
	}
	f.probe.init(f.prefix, f.cfg)
	lctx, cancel := context.WithCancel(context.Background())
	f.cancel = cancel
	f.wg.Go(func() { f.loop(lctx, f.cfg.CheckInterval, f.sweep) })
	f.wg.Go(func() { f.loop(lctx, f.cfg.PersistInterval, f.t.flush) })
	f.wg.Go(func() { f.loop(lctx, f.cfg.CheckInterval, f.checkQueues) })
	f.wg.Go(func() { f.push.run(lctx) })
	var prev drift
	f.wg.Go(func() { f.loop(lctx, reconcileEvery(&f.cfg), func() { f.reconcileDrift(&prev) }) })
	rel, err := f.nc.Subscribe(agentproto.Subjects{Prefix: f.prefix}.FleetRelease(), f.handleRelease)
	if err != nil {
		return fmt.Errorf("fleet: subscribe to %s: %w", agentproto.Subjects{Prefix: f.prefix}.FleetRelease(), err)
	}
	f.relSub = rel
	if f.kv != nil {
		if f.forget, err = f.watchForgets(); err != nil {
			return err
		}
	}
	return nil
}

// watchForgets follows deletes of mcp_fleet records, which is how an
// operator forgets an agent ('tetherctl agent forget ID' or 'nats kv del
// mcp_fleet ID'); every replica hears them. Values are not fetched.
func (f *Fleet) watchForgets() (*kvconfig.Watcher, error) {
	js, err := jetstream.New(f.nc)
	if err != nil {
		return nil, fmt.Errorf("fleet: jetstream: %w", err)
	}
	var ready bool // watcher goroutine only
	var missing func(context.Context) error
	if f.buckets != nil {
		bc := *f.buckets
		missing = func(ctx context.Context) error {
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			if err := kvconfig.RecreateFleet(rctx, js, bc); err != nil {
				f.log.Error().Err(err).Msg("mcp_fleet deleted and cannot be re-created; retrying")
				return err
			}
			f.log.Error().Msg("mcp_fleet was deleted: re-created empty; the leader writes every agent's record again")
			f.t.markAllDirty()
			return nil
		}
	}
	w, err := kvconfig.StartWatcher(kvconfig.WatcherConfig{
		Missing:       missing,
		Bucket:        kvconfig.BucketFleet,
		JetStream:     func() (jetstream.JetStream, error) { return js, nil },
		MetaOnly:      true,
		CheckInterval: f.watchCheck,
		Handle: func(e jetstream.KeyValueEntry) {
			switch {
			case e == nil:
				ready = true // only deletes made from now on are forgets
			case ready && (e.Operation() == jetstream.KeyValueDelete || e.Operation() == jetstream.KeyValuePurge):
				f.t.forgetDeleted(e.Key())
			}
		},
		Logger: &f.log,
	})
	if err != nil {
		return nil, fmt.Errorf("fleet: watch %s: %w", kvconfig.BucketFleet, err)
	}
	return w, nil
}

func (f *Fleet) loop(ctx context.Context, every time.Duration, fn func()) {
	tk := time.NewTicker(every)
	defer tk.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tk.C:
			fn()
		}
	}
}

func (f *Fleet) sweep() {
	f.t.behind.Store(f.behind())
	f.t.sweepOnce()
	f.selfProbe()
	if sub := f.sub.Load(); sub != nil {
		if d, err := sub.Dropped(); err == nil && d > f.dropped {
			f.t.metrics.dropped(d - f.dropped)
			f.log.Error().Int("dropped", d-f.dropped).Msg("heartbeats dropped: the supervisor cannot keep up (slow consumer)")
			f.dropped = d
		}
	}
}

// behind reports whether more than half an interval's worth of heartbeats
// (plus 1,000) waits unprocessed: the supervisor is late, so silence
// measured now would blame agents for its own backlog.
func (f *Fleet) behind() bool {
	sub := f.sub.Load()
	if sub == nil {
		return false
	}
	msgs, _, err := sub.Pending()
	if err != nil {
		return false
	}
	var agents int64
	for s := StateHealthy; s < numStates; s++ {
		agents += f.t.counts[s].Load()
	}
	late := msgs > int(agents)/2+1000
	if late {
		f.t.warn.Error().Int("backlog", msgs).Msg("heartbeat backlog: the supervisor is behind; not judging silence until it catches up")
	}
	return late
}

// Close unsubscribes and stops every loop, waiting for them; an mcp_fleet
// write in flight is abandoned (its records stay unwritten), so Close does
// not wait on a dead link. Immediate: a last mcp_fleet write only happens
// in Drain. Safe to call twice.
func (f *Fleet) Close() {
	f.Stop()
	f.CloseWatcher()
}

// Stop is Close without waiting for the mcp_fleet watcher, whose stop asks
// the server to delete its consumer and so may wait on a dead link: the
// owner finishes with CloseWatcher, which it can run beside its other
// polite requests. Safe to call twice.
func (f *Fleet) Stop() {
	f.closeOnce.Do(func() {
		f.cmd.abort()
		if sub := f.sub.Load(); sub != nil {
			_ = sub.Unsubscribe()
		}
		if f.relSub != nil {
			_ = f.relSub.Unsubscribe()
		}
		f.hbGate.Lock() // waits for a handler already running
		f.hbClosed = true
		f.hbGate.Unlock()
		if f.cancel != nil {
			f.cancel()
		}
		f.wg.Wait()
		if sub := f.sub.Load(); sub != nil {
			_ = sub.Unsubscribe() // one the self-probe made before the loops ended
		}
	})
}

// CloseWatcher stops the watcher of operator deletes in mcp_fleet and
// waits for it. Safe to call twice.
func (f *Fleet) CloseWatcher() {
	if f.forget != nil {
		f.forget.Close()
	}
}

// Drain stops taking heartbeats, writes every changed record to mcp_fleet
// and stops (Stop), bounded by ctx: when ctx ends, the heartbeats still
// queued are dropped and the writes in flight abandoned. CloseWatcher (or
// Close) finishes.
func (f *Fleet) Drain(ctx context.Context) {
	defer context.AfterFunc(ctx, f.cmd.abort)()
	if sub := f.sub.Load(); sub != nil {
		// Let the heartbeats already queued be handled before the last write.
		if sub.Drain() == nil {
			deadline := time.Now().Add(drainWait)
			for sub.IsValid() && time.Now().Before(deadline) && ctx.Err() == nil {
				time.Sleep(5 * time.Millisecond)
			}
		}
	}
	if f.cancel != nil {
		f.cancel()
	}
	f.wg.Wait()
	f.t.flush()
	f.Stop()
}

// drainWait bounds Drain's wait for queued heartbeats.
const drainWait = 2 * time.Second

// handleHeartbeat passes a heartbeat to the tracker unless the fleet closed.
func (f *Fleet) handleHeartbeat(msg *nats.Msg) {
	f.hbGate.RLock()
	defer f.hbGate.RUnlock()
	if f.hbClosed {
		return
	}
	if msg.Header != nil {
		if v := msg.Header.Get(agentproto.HeaderProbe); v != "" {
			f.probe.back(v) // ours proves the subscription; an agent's is ignored
			return
		}
	}
	f.t.handleHeartbeat(msg)
}

// LinkDown and LinkUp are told about the supervisor's own NATS link: while
// it is down nothing is judged, and silence is counted afresh after it.
func (f *Fleet) LinkDown() { f.t.linkDown.Store(true) }

// LinkUp: see LinkDown.
func (f *Fleet) LinkUp() {
	f.t.grace.Store(f.t.now())
	f.t.linkDown.Store(false)
}

// ConfigChanged queues an applied KV change (mcp_configs or mcp_agents)
// for config push: the agents whose resolution it changes get reresolve.
// It never blocks; call it from the KV watcher for every change.
func (f *Fleet) ConfigChanged(ch kvconfig.Change) { f.push.enqueue(ch) }

// SetLeadership installs what the fleet reports of leadership beyond
// whether this replica commands: the holder's replica id, and how long no
// replica has held the lease (zero while one does). The Supervisor sets it
// from its lease.
func (f *Fleet) SetLeadership(info func() (holder string, noLeader time.Duration)) {
	f.leadership.Store(&info)
}

// Leadership is the current holder and how long there has been none.
func (f *Fleet) Leadership() (holder string, noLeader time.Duration) {
	if p := f.leadership.Load(); p != nil {
		return (*p)()
	}
	return "", 0
}

// LogSamplers sample the fleet's log lines that agents cause: bad, refused
// or stale heartbeats, agent state changes and MCP server health
// transitions; the owner reports what
// they dropped.
func (f *Fleet) LogSamplers() []*logsample.Sampler {
	return []*logsample.Sampler{f.t.sampler, f.t.changeSampler, f.t.sweep.srv.sampler}
}

// AgentIDs returns every tracked agent id, sorted. The slice is shared:
// do not modify it.
func (f *Fleet) AgentIDs() []string { return f.t.sortedIDs() }

// Leader reports whether this fleet may send commands and write mcp_fleet
// (Config.IsLeader).
func (f *Fleet) Leader() bool { return f.cmd.Leader() }

// InvalidEntries returns up to n malformed operator entries (mcp_configs,
// mcp_agents), sorted by bucket and key.
func (f *Fleet) InvalidEntries(n int) []InvalidEntry { return f.push.invalidEntries(n) }

// UnconfiguredRoles returns up to n roles (0: all) that records in
// mcp_agents name but no key in mcp_configs does, sorted by role; nil
// before the config index is open and loaded.
func (f *Fleet) UnconfiguredRoles(n int) []kvconfig.RoleUse {
	if ix := f.t.index.Load(); ix != nil {
		return ix.UnconfiguredRoles(n)
	}
	return nil
}

// Agent returns one agent's status.
func (f *Fleet) Agent(id string) (AgentStatus, bool) { return f.t.lookup(id) }

// Counts returns agents per state.
func (f *Fleet) Counts() map[State]int {
	out := map[State]int{}
	for s := StateHealthy; s < numStates; s++ {
		out[s] = int(f.t.counts[s].Load())
	}
	return out
}

// Size is how many agents are tracked in any state but gone: the agents
// that would reconnect if their server restarted (the resolveall reply's
// fleet_size).
func (f *Fleet) Size() int {
	n := 0
	for s := StateHealthy; s < numStates; s++ {
		if s != StateGone {
			n += int(f.t.counts[s].Load())
		}
	}
	return n
}

// MassSilence reports whether the supervisor currently suspects the broker
// or its own link because a large share of the fleet went silent at once.
func (f *Fleet) MassSilence() bool { return f.t.mass.Load() }

// Pending returns the commands waiting for an agent's ack.
func (f *Fleet) Pending(id string) []agentproto.Command {
	sh := f.t.shard(id)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	a := sh.m[id]
	if a == nil {
		return nil
	}
	out := make([]agentproto.Command, 0, len(a.pending()))
	for _, p := range a.pending() {
		out = append(out, p.cmd)
	}
	return out
}

// Send queues a command (reconnect or reresolve) for a tracked agent, as an
// operator would: it is sent at once if the agent is live and re-sent until
// acknowledged, across supervisor restarts. It returns the command id.
func (f *Fleet) Send(id, typ string, servers []string, reason string) (string, error) {
	if typ != agentproto.CmdReconnect && typ != agentproto.CmdReresolve {
		return "", fmt.Errorf("fleet: command type %q: want %s or %s", typ, agentproto.CmdReconnect, agentproto.CmdReresolve)
	}
	for _, s := range servers {
		if err := kvconfig.ValidateID(kvconfig.KindServer, s); err != nil {
			return "", err
		}
	}
	if !f.cmd.Leader() {
		return "", ErrNotLeader
	}
	t := f.t
	now := t.now()
	sh := t.shard(id)
	sh.mu.Lock()
	a := sh.m[id]
	if a == nil {
		sh.mu.Unlock()
		return "", fmt.Errorf("%w: %q", ErrUnknownAgent, id)
	}
	p := t.addPending(a, agentproto.Command{Type: typ, Servers: servers, Reason: reason}, false, now)
	cmd, live := p.cmd, !a.zombie && (a.live == StateHealthy || a.live == StateSuspect)
	if live {
		p.lastSent, p.sends = now, 1
	}
	sh.mu.Unlock()
	if live {
		t.cmd.send(id, &cmd, false)
	}
	return cmd.ID, nil
}
