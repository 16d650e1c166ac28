package fleetsim

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/agentproto"
	"golang.org/x/sync/errgroup"
)

// LiveKind is the client a live run connects.
type LiveKind string

// The kinds of client compared.
const (
	// KindTether is agentproto.Client with DefaultConfig (FleetSize set to
	// the run's agents, which is what an operator sets).
	KindTether LiveKind = "tether"
	// KindBare is the floor: plain nats.go with its defaults that only
	// heartbeats (a body of a real heartbeat's size every
	// HeartbeatInterval) and holds the run's one subscription.
	KindBare LiveKind = "bare"
	// KindTuned is KindBare with the reconnect options agentproto used
	// before reconnect slots (50 ms doubling to 2 s, half taken off at
	// random; 900 ms pings): the exponential backoff a competitor tunes.
	KindTuned LiveKind = "tuned"
)

// Defaults of LiveConfig.
const (
	DefaultLiveAgents = 1000
	DefaultWarmup     = 15 * time.Second
	DefaultSteady     = 30 * time.Second
	DefaultLiveOutage = 8 * time.Second
	DefaultLiveCap    = 30 * time.Second
)

// LiveConfig is one live run: Agents real clients of Kind against one
// NATS server, a steady-state measurement, then a server crash and
// restart. Zero fields take the defaults named.
type LiveConfig struct {
	// Agents is the fleet size. Zero means DefaultLiveAgents.
	Agents int
	// Kind is the client. Empty means KindTether.
	Kind LiveKind
	// ServerArgv runs the server in a child process (Serve); nil runs it
	// in this process, where its CPU and memory are not separable.
	ServerArgv []string
	// HeartbeatInterval of every kind. Zero means
	// agentproto.DefaultHeartbeatInterval.
	HeartbeatInterval time.Duration
	// Warmup is waited after the fleet connected; Steady is the window
	// the server's counters are measured over. Zero means DefaultWarmup,
	// DefaultSteady.
	Warmup, Steady time.Duration
	// Outage is how long the server stays down. Zero means
	// DefaultLiveOutage; negative skips the restart.
	Outage time.Duration
	// Cap bounds the wait for every agent to work after the restart. Zero
	// means DefaultLiveCap.
	Cap time.Duration
	// Tether adjusts each KindTether client's config (tests: millisecond
	// timings); nil leaves DefaultConfig.
	Tether func(*agentproto.Config)
	// Ping is KindTuned's PingInterval. Zero means
	// agentproto.DefaultPingInterval.
	Ping time.Duration
	// SizeFromSupervisor leaves each KindTether client's FleetSize at its
	// default and lets it resolve: the stand-in supervisor answers
	// resolveall with fleet_size = Agents, as the real one does, so the
	// clients size their window from it.
	SizeFromSupervisor bool
	// Logf, if set, reports progress.
	Logf func(format string, args ...any)
}

func (c LiveConfig) withDefaults() LiveConfig {
	c.Agents = orDefaultInt(c.Agents, DefaultLiveAgents)
	if c.Kind == "" {
		c.Kind = KindTether
	}
	c.HeartbeatInterval = orDefaultDur(c.HeartbeatInterval, agentproto.DefaultHeartbeatInterval)
	c.Warmup = orDefaultDur(c.Warmup, DefaultWarmup)
	c.Steady = orDefaultDur(c.Steady, DefaultSteady)
	c.Outage = orDefaultDur(c.Outage, DefaultLiveOutage)
	c.Cap = orDefaultDur(c.Cap, DefaultLiveCap)
	c.Ping = orDefaultDur(c.Ping, agentproto.DefaultPingInterval)
	if c.Logf == nil {
		c.Logf = func(string, ...any) {}
	}
	return c
}

// Validate reports an impossible LiveConfig, wrapping ErrInvalidConfig.
func (c LiveConfig) Validate() error {
	c = c.withDefaults()
	switch {
	case c.Agents < 0 || c.HeartbeatInterval < 0 || c.Warmup < 0 || c.Steady < 0 || c.Cap < 0:
		return fmt.Errorf("%w: negative field in live config", ErrInvalidConfig)
	case c.Kind != KindTether && c.Kind != KindBare && c.Kind != KindTuned:
		return fmt.Errorf("%w: kind %q: want %s, %s or %s", ErrInvalidConfig, c.Kind, KindTether, KindBare, KindTuned)
	}
	return nil
}

// LiveResult is what a live run measured.
type LiveResult struct {
	Kind   LiveKind
	Agents int
	// ConnectTook is how long the fleet took to connect at the start.
	ConnectTook time.Duration
	// InPerAgentSec and OutPerAgentSec are the server's messages in and
	// out per agent per second in the steady window (a heartbeat consumer,
	// standing in for the supervisor, receives every heartbeat).
	InPerAgentSec, OutPerAgentSec float64
	// HeartbeatsPerAgentSec is the heartbeats the consumer received per
	// agent per second in the steady window: the floor's own traffic, by
	// which a run's message counts can be normalised when a loaded
	// machine delays timers.
	HeartbeatsPerAgentSec float64
	// CPUPerAgentSec is the server's CPU per agent per second of the
	// steady window; CPUKnown false: the server ran in this process.
	CPUPerAgentSec time.Duration
	CPUKnown       bool
	// ServerRSS is the server's RSS with the fleet connected (0: unknown);
	// ClientHeap the heap in use in this process per agent.
	ServerRSS  uint64
	ClientHeap uint64
	// Restarted is false when the run skipped the restart.
	Restarted bool
	// Connects is the agents' CONNECTs the server saw after its return,
	// PeakConnects the most in one 100 ms bucket from its return, and
	// ConnectsPerSec the curve per second.
	Connects, PeakConnects int
	ConnectsPerSec         []int
	// WorkingPerSec is how many agents work by the end of each second
	// after the return (a message through their subscription), AllWorking
	// when the last did (-1: not within Cap), P50/P99 over agents.
	WorkingPerSec []int
	AllWorking    time.Duration
	P50, P99      time.Duration
	// Tether only, from the crash to the end: disconnects (one per agent
	// is the crash itself), rebuilds, failed health rounds and links its
	// pings found stale.
	Disconnects, Rebuilds, HealthFails, StaleLinks int64
	// WindowsSized is how many tether clients had sized their reconnect
	// window for the whole fleet from fleet_size before the crash
	// (SizeFromSupervisor only).
	WindowsSized int
	// TimerLateness is the most a 10 ms timer in this process fired late
	// while the fleet recovered: the scheduling delay every client's
	// timers suffered too (a loaded machine pauses processes).
	TimerLateness time.Duration
	// RecoveryCPU is the restarted server's CPU from its start until every
	// agent worked (CPUKnown only): the handshakes, resubscriptions and
	// first messages of the whole fleet.
	RecoveryCPU time.Duration
}

// liveAgent is one client of any kind.
type liveAgent struct {
	first  atomic.Int64 // unix ns of the first "after" marker; 0: none yet
	close  func()
	window func() time.Duration // KindTether: its reconnect window now
}

// liveSubject is agent i's own subject: markers prove its subscription.
func liveSubject(i int) string { return "fleet." + agentID(i) }

// liveFleet is the run's clients and their helpers.
type liveFleet struct {
	cfg    LiveConfig
	srv    liveServer
	agents []*liveAgent
	stop   chan struct{}
	wg     sync.WaitGroup // bare heartbeat loops
	// Tether clients' events: disconnects (the server's crash, then any
	// the link's pings found after its return), rebuilds, failed health
	// rounds.
	disconnects, rebuilds, healthFails, stale atomic.Int64
	heartbeats                                atomic.Int64 // received by the consumer
	whyMu                                     sync.Mutex
	why                                       map[string]int // disconnect errors
}

// onEvent counts a tether client's events.
func (f *liveFleet) onEvent(e agentproto.Event) {
	switch e.Kind {
	case agentproto.EventDisconnected:
		f.disconnects.Add(1)
		why := "none"
		switch {
		case e.Err == nil:
			why = "closed by the client (a stale link)"
		case strings.Contains(e.Err.Error(), "connection reset"):
			why = "connection reset" // the crash; addresses vary
		default:
			why = e.Err.Error()
		}
		f.whyMu.Lock()
		if f.why == nil {
			f.why = map[string]int{}
		}
		if len(f.why) < 32 {
			f.why[why]++
		} else {
			f.why["other"]++
		}
		f.whyMu.Unlock()
	case agentproto.EventRebuildStarted:
		f.rebuilds.Add(1)
	case agentproto.EventHealthFailed:
		f.healthFails.Add(1)
	case agentproto.EventLinkStale:
		f.stale.Add(1)
	}
}

// RunLive runs cfg: it connects the fleet, measures the steady state,
// crashes and restarts the server, and measures the recovery.
func RunLive(ctx context.Context, cfg LiveConfig) (LiveResult, error) {
	if err := cfg.Validate(); err != nil {
		return LiveResult{}, err
	}
	cfg = cfg.withDefaults()
	var srv liveServer
	var err error
	if cfg.ServerArgv != nil {
		srv, err = newChildServer(cfg.ServerArgv)
	} else {
		srv, err = newInProcServer()
	}
	if err != nil {
		return LiveResult{}, err
	}
	if _, err := srv.Start(); err != nil {
		return LiveResult{}, err
	}
	defer srv.Stop()
	f := &liveFleet{cfg: cfg, srv: srv, stop: make(chan struct{})}
	defer f.closeAll()
	res := LiveResult{Kind: cfg.Kind, Agents: cfg.Agents, AllWorking: -1}
	hb, err := f.hbConsumer()
	if err != nil {
		return res, err
	}
	defer hb.Close()
	start := time.Now()
	if err := f.connectAll(ctx); err != nil {
		return res, err
	}
	res.ConnectTook = time.Since(start)
	cfg.Logf("%s: %d agents connected in %v", cfg.Kind, cfg.Agents, res.ConnectTook.Round(time.Millisecond))
	if cfg.SizeFromSupervisor {
		deadline := time.Now().Add(cfg.Warmup)
		for res.WindowsSized = f.windowsSized(); res.WindowsSized < cfg.Agents && time.Now().Before(deadline); res.WindowsSized = f.windowsSized() {
			if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
				return res, err
			}
		}
		cfg.Logf("%s: %d of %d clients sized their reconnect window from the stand-in supervisor's fleet_size", cfg.Kind, res.WindowsSized, cfg.Agents)
	}
	if err := f.steady(ctx, &res); err != nil {
		return res, err
	}
	if cfg.Outage < 0 {
		return res, nil
	}
	return res, f.restart(ctx, &res)
}

// hbConsumer subscribes, as the supervisor would, to every heartbeat.
func (f *liveFleet) hbConsumer() (*nats.Conn, error) {
	nc, err := nats.Connect(f.srv.URL(), nats.Name("fleetsim-supervisor"), nats.MaxReconnects(-1),
		nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		return nil, fmt.Errorf("fleetsim: heartbeat consumer: %w", err)
	}
	if _, err := nc.Subscribe(agentproto.Subjects{}.Heartbeat("*"), func(*nats.Msg) { f.heartbeats.Add(1) }); err != nil {
		nc.Close()
		return nil, fmt.Errorf("fleetsim: heartbeat consumer: %w", err)
	}
	if f.cfg.SizeFromSupervisor {
		if _, err := nc.Subscribe(agentproto.Subjects{}.ResolveAll("*"), f.answerResolveAll); err != nil {
			nc.Close()
			return nil, fmt.Errorf("fleetsim: resolveall responder: %w", err)
		}
	}
	return nc, nc.Flush()
}

// answerResolveAll answers a resolveall as a supervisor with no configs
// that tracks the whole fleet would.
func (f *liveFleet) answerResolveAll(m *nats.Msg) {
	agent := strings.TrimPrefix(m.Subject, agentproto.Subjects{}.ResolveAll(""))
	data, _ := json.Marshal(agentproto.ResolveAllReply{Agent: agent, Servers: map[string]agentproto.ResolveResult{}, FleetSize: agentproto.FleetSizeHint(f.cfg.Agents)})
	_ = m.Respond(data)
}

// windowsSized counts the tether clients whose window is the one for the
// whole fleet (SizeFromSupervisor).
func (f *liveFleet) windowsSized() int {
	want := agentproto.ReconnectWindow(f.cfg.Agents, agentproto.DefaultConnectRate, agentproto.DefaultReconnectWait, agentproto.DefaultMaxReconnectWait)
	n := 0
	for _, a := range f.agents {
		if a != nil && a.window != nil && a.window() >= want {
			n++
		}
	}
	return n
}

// connectAll connects every agent, 16 at a time; the first failure stops
// it.
func (f *liveFleet) connectAll(ctx context.Context) error {
	f.agents = make([]*liveAgent, f.cfg.Agents)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(16)
	for i := range f.agents {
		if gctx.Err() != nil {
			break
		}
		g.Go(func() error {
			a, err := f.connectOne(gctx, i)
			f.agents[i] = a
			return err
		})
	}
	return g.Wait()
}

// agentID is agent i's id.
func agentID(i int) string { return fmt.Sprintf("fleet-%05d", i) }

// connectOne connects agent i of the run's kind and subscribes it to its
// own subject (for tether, probed by default like any literal subject).
func (f *liveFleet) connectOne(ctx context.Context, i int) (*liveAgent, error) {
	a := &liveAgent{}
	onMsg := func(m *nats.Msg) {
		if string(m.Data) == "after" {
			a.first.CompareAndSwap(0, time.Now().UnixNano())
		}
	}
	if f.cfg.Kind == KindTether {
		cfg := agentproto.DefaultConfig(agentID(i))
		cfg.URLs, cfg.FleetSize, cfg.SkipInitialResolve = f.srv.URL(), f.cfg.Agents, true
		if f.cfg.SizeFromSupervisor {
			cfg.FleetSize, cfg.SkipInitialResolve = agentproto.DefaultFleetSize, false
		}
		cfg.HeartbeatInterval, cfg.Logger, cfg.OnEvent = f.cfg.HeartbeatInterval, zerolog.Nop(), f.onEvent
		if f.cfg.Tether != nil {
			f.cfg.Tether(&cfg)
		}
		c, err := agentproto.Connect(ctx, cfg)
		if err != nil {
			return nil, fmt.Errorf("fleetsim: agent %d: %w", i, err)
		}
		a.close, a.window = c.Close, c.ReconnectWindow
		if _, err := c.Subscribe(liveSubject(i), onMsg); err != nil {
			c.Close()
			return nil, fmt.Errorf("fleetsim: agent %d: %w", i, err)
		}
		return a, nil
	}
	nc, err := nats.Connect(f.srv.URL(), f.bareOptions(i)...)
	if err != nil {
		return nil, fmt.Errorf("fleetsim: agent %d: %w", i, err)
	}
	a.close = nc.Close
	if _, err := nc.Subscribe(liveSubject(i), onMsg); err != nil {
		nc.Close()
		return nil, fmt.Errorf("fleetsim: agent %d: %w", i, err)
	}
	f.wg.Add(1)
	go f.bareHeartbeats(nc, agentID(i))
	return a, nc.Flush()
}

// bareOptions are KindBare's (nats.go defaults, unlimited reconnects) or
// KindTuned's options.
func (f *liveFleet) bareOptions(i int) []nats.Option {
	opts := []nats.Option{nats.Name("tether-agent-" + agentID(i)), nats.MaxReconnects(-1)}
	if f.cfg.Kind == KindTuned {
		opts = append(opts,
			nats.CustomReconnectDelay(func(n int) time.Duration {
				return agentproto.ReconnectDelay(n, 50*time.Millisecond, 2*time.Second, 0.5, rand.Float64())
			}),
			nats.PingInterval(f.cfg.Ping), nats.MaxPingsOutstanding(agentproto.DefaultMaxPingsOut))
	}
	return opts
}

// bareHeartbeat is a body the size of a real agentproto heartbeat.
var bareHeartbeat = make([]byte, 320)

// bareHeartbeats publishes agent's heartbeats every HeartbeatInterval
// (from a random phase) until the fleet stops.
func (f *liveFleet) bareHeartbeats(nc *nats.Conn, agent string) {
	defer f.wg.Done()
	subject := agentproto.Subjects{}.Heartbeat(agent)
	select {
	case <-time.After(time.Duration(rand.Int64N(int64(f.cfg.HeartbeatInterval)))):
	case <-f.stop:
		return
	}
	t := time.NewTicker(f.cfg.HeartbeatInterval)
	defer t.Stop()
	for {
		_ = nc.Publish(subject, bareHeartbeat)
		select {
		case <-t.C:
		case <-f.stop:
			return
		}
	}
}

// closeAll closes every agent, 16 at a time.
func (f *liveFleet) closeAll() {
	close(f.stop)
	f.wg.Wait()
	var g errgroup.Group
	g.SetLimit(16)
	for _, a := range f.agents {
		if a != nil {
			g.Go(func() error { a.close(); return nil })
		}
	}
	_ = g.Wait()
}

// steady measures the server's counters over the steady window.
func (f *liveFleet) steady(ctx context.Context, res *LiveResult) error {
	if err := sleepCtx(ctx, f.cfg.Warmup); err != nil {
		return err
	}
	s0, err := f.srv.Stats()
	if err != nil {
		return err
	}
	h0 := f.heartbeats.Load()
	if err := sleepCtx(ctx, f.cfg.Steady); err != nil {
		return err
	}
	s1, err := f.srv.Stats()
	if err != nil {
		return err
	}
	per := float64(f.cfg.Agents) * f.cfg.Steady.Seconds()
	res.HeartbeatsPerAgentSec = float64(f.heartbeats.Load()-h0) / per
	res.InPerAgentSec = float64(s1.InMsgs-s0.InMsgs) / per
	res.OutPerAgentSec = float64(s1.OutMsgs-s0.OutMsgs) / per
	if res.CPUKnown = s1.CPUKnown; res.CPUKnown {
		res.CPUPerAgentSec = time.Duration(float64(s1.CPU-s0.CPU) / per)
	}
	res.ServerRSS = s1.RSS
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	res.ClientHeap = ms.HeapInuse / uint64(f.cfg.Agents)
	f.cfg.Logf("%s: steady state: %.3f in, %.3f out per agent per second; server CPU %v per agent-second (known %v)",
		f.cfg.Kind, res.InPerAgentSec, res.OutPerAgentSec, res.CPUPerAgentSec, res.CPUKnown)
	return nil
}

// restart crashes the server, keeps it down for Outage and starts it.
// Then every 50 ms it sends an "after" marker to each agent whose CONNECT
// the server has seen and that has not received one yet, until all have
// or Cap passed: an agent works when a marker comes through its
// subscription, at most ~50 ms after it does, and the markers cost about
// one message per agent (a fan-out to the whole fleet would load the
// machine the clients share).
func (f *liveFleet) restart(ctx context.Context, res *LiveResult) error {
	d0, r0, h0, s0 := f.disconnects.Load(), f.rebuilds.Load(), f.healthFails.Load(), f.stale.Load()
	defer func() {
		res.Disconnects, res.Rebuilds, res.HealthFails = f.disconnects.Load()-d0, f.rebuilds.Load()-r0, f.healthFails.Load()-h0
		res.StaleLinks = f.stale.Load() - s0
	}()
	f.srv.Stop()
	if err := sleepCtx(ctx, f.cfg.Outage); err != nil {
		return err
	}
	ready, err := f.srv.Start()
	if err != nil {
		return err
	}
	res.Restarted = true
	stopLate := make(chan struct{})
	lateDone := make(chan time.Duration, 1)
	go func() { lateDone <- timerLateness(stopLate) }()
	defer func() {
		close(stopLate)
		res.TimerLateness = <-lateDone
	}()
	pub, err := nats.Connect(f.srv.URL(), nats.Name("fleetsim-publisher"))
	if err != nil {
		return fmt.Errorf("fleetsim: publisher: %w", err)
	}
	defer pub.Close()
	index := make(map[string]int, len(f.agents))
	for i := range f.agents {
		index[agentNamePrefix+agentID(i)] = i
	}
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for time.Since(ready) < f.cfg.Cap && f.working() < len(f.agents) {
		for _, c := range f.srv.Connects() {
			if i, ok := index[c.name]; ok && f.agents[i].first.Load() == 0 {
				if err := pub.Publish(liveSubject(i), []byte("after")); err != nil {
					return fmt.Errorf("fleetsim: publish: %w", err)
				}
			}
		}
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-t.C:
		}
	}
	if st, err := f.srv.Stats(); err == nil && st.CPUKnown {
		res.RecoveryCPU = st.CPU
	}
	f.recovery(ready, res)
	return nil
}

// timerLateness sleeps 10 ms at a time until stop and returns the most
// one sleep overran.
func timerLateness(stop <-chan struct{}) time.Duration {
	var worst time.Duration
	t := time.NewTimer(10 * time.Millisecond)
	defer t.Stop()
	for at := time.Now(); ; at = time.Now() {
		select {
		case <-stop:
			return worst
		case now := <-t.C:
			worst = max(worst, now.Sub(at)-10*time.Millisecond, time.Since(at)-10*time.Millisecond)
			t.Reset(10 * time.Millisecond)
		}
	}
}

// working counts the agents that received an "after" marker.
func (f *liveFleet) working() int {
	n := 0
	for _, a := range f.agents {
		if a.first.Load() != 0 {
			n++
		}
	}
	return n
}

// recovery fills the restart's figures.
func (f *liveFleet) recovery(ready time.Time, res *LiveResult) {
	var conns []time.Time // all since the new server started
	from := ready         // its listener opens just before it reports ready
	for _, c := range f.srv.Connects() {
		conns = append(conns, c.at)
		if c.at.Before(from) {
			from = c.at
		}
	}
	res.Connects = len(conns)
	res.PeakConnects = PeakPer(conns, from, 100*time.Millisecond)
	f.cfg.Logf("%s: connects per 100 ms in the first second after the server's listener opened: %v",
		f.cfg.Kind, firstBuckets(conns, from, 100*time.Millisecond, 10))
	res.ConnectsPerSec = PerSecond(conns, from, false)
	var took []time.Duration
	var at []time.Time
	for _, a := range f.agents {
		if ns := a.first.Load(); ns != 0 {
			took = append(took, time.Unix(0, ns).Sub(ready))
			at = append(at, time.Unix(0, ns))
		}
	}
	res.WorkingPerSec = PerSecond(at, ready, true)
	if len(took) == 0 {
		return
	}
	slices.Sort(took)
	res.P50, res.P99 = took[len(took)/2], took[(len(took)*99)/100]
	if len(took) == len(f.agents) {
		res.AllWorking = took[len(took)-1]
	}
	f.cfg.Logf("%s: restart: %d connects, peak %d per 100 ms; working p50 %v p99 %v all %v; connects per second %v",
		f.cfg.Kind, res.Connects, res.PeakConnects, res.P50, res.P99, res.AllWorking, res.ConnectsPerSec)
	f.whyMu.Lock()
	f.cfg.Logf("%s: since the start: %d disconnects (%v), %d rebuilds, %d failed health rounds",
		f.cfg.Kind, f.disconnects.Load(), f.why, f.rebuilds.Load(), f.healthFails.Load())
	f.whyMu.Unlock()
}

// perWindow counts ts at or after from by window-wide bucket k, the
// interval [from + k·window, from + (k+1)·window).
func perWindow(ts []time.Time, from time.Time, window time.Duration) map[int]int {
	count := map[int]int{}
	for _, t := range ts {
		if !t.Before(from) {
			count[int(t.Sub(from)/window)]++
		}
	}
	return count
}

// firstBuckets is perWindow's first n buckets.
func firstBuckets(ts []time.Time, from time.Time, window time.Duration, n int) []int {
	count := perWindow(ts, from, window)
	out := make([]int, n)
	for k := range out {
		out[k] = count[k]
	}
	return out
}

// PeakPer is the most of ts at or after from in one window-wide bucket
// [from + k·window, from + (k+1)·window).
func PeakPer(ts []time.Time, from time.Time, window time.Duration) int {
	peak := 0
	for _, n := range perWindow(ts, from, window) {
		peak = max(peak, n)
	}
	return peak
}

// PerSecond buckets ts from from by second: counts per second, or
// (cumulative) how many happened by the end of each second.
func PerSecond(ts []time.Time, from time.Time, cumulative bool) []int {
	count := perWindow(ts, from, time.Second)
	last := -1
	for k := range count {
		last = max(last, k)
	}
	out := make([]int, last+1)
	for k, n := range count {
		out[k] = n
	}
	if cumulative {
		for i := 1; i < len(out); i++ {
			out[i] += out[i-1]
		}
	}
	return out
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.C:
		return nil
	}
}
