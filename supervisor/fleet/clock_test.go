package fleet

import (
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/internal/natstest"
)

// The fleet tracker's state machine under an injected clock: heartbeats
// are handed to the tracker and sweeps run by the test, so every threshold
// is asserted to the nanosecond instead of within wall-clock slack.

// manualClock is a Clock that moves only when the test says so.
type manualClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *manualClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *manualClock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// clockRig drives one tracker by hand. Probes and commands go over a real
// embedded server to a subscription on the same connection, so after a
// flush every message the last sweep sent is readable.
type clockRig struct {
	t       testing.TB
	clk     *manualClock
	cfg     Config
	tr      *tracker
	nc      *nats.Conn
	metrics *Metrics
	cmds    *nats.Subscription
	seq     map[string]uint64
	inst    map[string]string
	start   time.Time
}

// rigConfig is a 1 s heartbeat fleet whose sweep resolution is 100 ms.
func rigConfig() Config {
	cfg := DefaultConfig()
	cfg.HeartbeatInterval = time.Second
	cfg.CheckInterval = 100 * time.Millisecond
	cfg.ProbeInterval = time.Second
	cfg.ProbeTimeout = 2 * time.Second
	cfg.ResendInterval = time.Second
	cfg.QuarantinePeriod = 10 * time.Second
	cfg.MassSilenceMin = 1000 // one agent is never a mass silence
	return cfg
}

func newClockRig(t testing.TB, cfg Config) *clockRig {
	t.Helper()
	srv := natstest.RunServer(t, natstest.WithoutJetStream())
	nc := srv.Connect()
	clk := &manualClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	cfg.Clock = clk
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	m := NewMetrics(prometheus.NewRegistry(), nil)
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	cmd, err := newDispatcher(nc, nil, "mcp", nil, log, m)
	if err != nil {
		t.Fatal(err)
	}
	cmds, err := nc.SubscribeSync("mcp.v1.cmd.*")
	if err != nil {
		t.Fatal(err)
	}
	return &clockRig{t: t, clk: clk, cfg: cfg, tr: newTracker(cfg, "mcp", cmd, log, m), nc: nc, metrics: m,
		cmds: cmds, seq: map[string]uint64{}, inst: map[string]string{}, start: clk.Now()}
}

// at is how far the rig's clock has moved since it started.
func (r *clockRig) at() time.Duration { return r.clk.Now().Sub(r.start) }

// heartbeat hands the tracker one heartbeat from id's current instance.
func (r *clockRig) heartbeat(id, probeAck string) {
	r.t.Helper()
	if r.inst[id] == "" {
		r.inst[id] = id + "-i1"
	}
	r.seq[id]++
	body := fmt.Sprintf(`{"agent":%q,"instance":%q,"seq":%d,"interval_ms":%d`, id, r.inst[id], r.seq[id], r.cfg.HeartbeatInterval.Milliseconds())
	if probeAck != "" {
		body += fmt.Sprintf(`,"probe_ack":%q`, probeAck)
	}
	body += "}"
	r.tr.handleHeartbeat(&nats.Msg{Subject: agentproto.Subjects{}.Heartbeat(id), Reply: agentproto.HeartbeatReply(id), Data: []byte(body)})
}

// restart makes id heartbeat from a new process.
func (r *clockRig) restart(id string, n int) {
	r.inst[id], r.seq[id] = fmt.Sprintf("%s-i%d", id, n), 0
	r.heartbeat(id, "")
}

// sweep runs one judgement pass and returns the probe nonces it sent.
func (r *clockRig) sweep() []string {
	r.t.Helper()
	r.tr.sweepOnce()
	if err := r.nc.Flush(); err != nil {
		r.t.Fatal(err)
	}
	var nonces []string
	for {
		m, err := r.cmds.NextMsg(0)
		if err != nil {
			return nonces
		}
		var c agentproto.Command
		if err := json.Unmarshal(m.Data, &c); err != nil {
			r.t.Fatalf("command %s: %v", m.Data, err)
		}
		if c.Type == agentproto.CmdProbe {
			nonces = append(nonces, c.Nonce)
		}
	}
}

// step advances the clock by one check interval and sweeps.
func (r *clockRig) step() []string {
	r.clk.advance(r.cfg.CheckInterval)
	return r.sweep()
}

func (r *clockRig) state(id string) State {
	st, ok := r.tr.lookup(id)
	if !ok {
		r.t.Fatalf("agent %s not tracked", id)
	}
	return st.State
}

func (r *clockRig) want(id string, st State) {
	r.t.Helper()
	if got := r.state(id); got != st {
		r.t.Fatalf("at %v: %s is %v, want %v", r.at(), id, got, st)
	}
}

func TestTrackerClockSuspectAndLostAtExactIntervals(t *testing.T) {
	for _, tc := range []struct {
		name          string
		announcedMS   int64 // 0: the configured interval
		suspect, lost int
		wantInterval  time.Duration
	}{
		{"defaults", 0, 2, 3, time.Second},
		{"suspect 3 lost 5", 0, 3, 5, time.Second},
		{"announced 2s", 2000, 2, 3, 2 * time.Second},
		{"announced 100ms, the lowest accepted (a tenth of 1 s)", 100, 2, 3, 100 * time.Millisecond},
		{"announced 30s, clamped to 10x", 30000, 2, 3, 10 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := rigConfig()
			cfg.SuspectAfter, cfg.LostAfter = tc.suspect, tc.lost
			cfg.ProbeInterval = time.Hour // liveness only
			r := newClockRig(t, cfg)
			if tc.announcedMS != 0 {
				r.cfg.HeartbeatInterval = time.Duration(tc.announcedMS) * time.Millisecond
			}
			r.heartbeat("a1", "")
			r.sweep()
			r.want("a1", StateHealthy)
			suspectAt := time.Duration(tc.suspect) * tc.wantInterval
			lostAt := time.Duration(tc.lost) * tc.wantInterval
			r.clk.advance(suspectAt - time.Nanosecond)
			r.sweep()
			r.want("a1", StateHealthy)
			r.clk.advance(time.Nanosecond)
			r.sweep()
			r.want("a1", StateSuspect)
			r.clk.advance(lostAt - suspectAt - time.Nanosecond)
			r.sweep()
			r.want("a1", StateSuspect)
			r.clk.advance(time.Nanosecond)
			r.sweep()
			r.want("a1", StateLost)
			if got := r.tr.counts[StateLost].Load(); got != 1 {
				t.Fatalf("lost count %d", got)
			}
			// One heartbeat brings it back at once.
			r.heartbeat("a1", "")
			r.want("a1", StateHealthy)
		})
	}
}

// probeLog records, per sweep, the time each probe was sent.
type probeLog struct{ sent []time.Duration }

func (p *probeLog) add(at time.Duration, n int) {
	for range n {
		p.sent = append(p.sent, at)
	}
}

// overdue counts probes sent at least timeout before at.
func (p *probeLog) overdue(at, timeout time.Duration) int {
	n := 0
	for _, s := range p.sent {
		if s+timeout <= at {
			n++
		}
	}
	return n
}

func TestTrackerClockZombieAfterExactlyZombieAfterOverdueProbes(t *testing.T) {
	for _, zombieAfter := range []int{1, 3, 5} {
		t.Run(fmt.Sprint("ZombieAfter=", zombieAfter), func(t *testing.T) {
			cfg := rigConfig()
			cfg.ZombieAfter = zombieAfter
			r := newClockRig(t, cfg)
			var probes probeLog
			ticks := int(cfg.HeartbeatInterval / cfg.CheckInterval)
			r.heartbeat("z1", "")
			for i := 1; ; i++ {
				if i > 200 {
					t.Fatalf("no zombie after %v", r.at())
				}
				if i%ticks == 0 {
					r.heartbeat("z1", "") // alive, but never acks a probe
				}
				sent := r.step()
				probes.add(r.at(), len(sent))
				if r.state("z1") == StateZombie {
					break
				}
				// Healthy up to here: fewer than ZombieAfter probes overdue.
				if n := probes.overdue(r.at(), cfg.ProbeTimeout); n >= zombieAfter {
					t.Fatalf("at %v: %d probes overdue, still %v", r.at(), n, r.state("z1"))
				}
			}
			if n := probes.overdue(r.at(), cfg.ProbeTimeout); n != zombieAfter {
				t.Fatalf("zombie at %v with %d overdue probes, want exactly %d (sent at %v)", r.at(), n, zombieAfter, probes.sent)
			}
			if want := probes.sent[zombieAfter-1] + cfg.ProbeTimeout; r.at() != want {
				t.Fatalf("zombie at %v, want the moment probe %d became overdue: %v", r.at(), zombieAfter, want)
			}
			// A heartbeat naming the latest probe ends the episode at once.
			r.heartbeat("z1", lastNonce(t, r))
			r.want("z1", StateHealthy)
		})
	}
}

// lastNonce sends one probe (by moving to the agent's next probe time) and
// returns its nonce.
func lastNonce(t *testing.T, r *clockRig) string {
	t.Helper()
	for range 100 {
		if n := r.step(); len(n) > 0 {
			return n[len(n)-1]
		}
		r.heartbeat("z1", "")
	}
	t.Fatal("no probe sent")
	return ""
}

func TestTrackerClockAnsweredProbesNeverMakeAZombie(t *testing.T) {
	cfg := rigConfig()
	cfg.ZombieAfter = 1
	r := newClockRig(t, cfg)
	ticks := int(cfg.HeartbeatInterval / cfg.CheckInterval)
	ack, sent := "", 0
	r.heartbeat("h1", "")
	for i := 1; i <= 20*ticks; i++ {
		if i%ticks == 0 {
			r.heartbeat("h1", ack)
		}
		if n := r.step(); len(n) > 0 {
			ack, sent = n[len(n)-1], sent+len(n)
		}
		r.want("h1", StateHealthy)
	}
	if sent < 15 {
		t.Fatalf("only %d probes in 20 intervals", sent)
	}
}

func TestTrackerClockQuarantineOnRecoveryPastIntensity(t *testing.T) {
	const k = 2
	cfg := rigConfig()
	cfg.QuarantineAfter = k
	cfg.ProbeInterval = time.Hour
	r := newClockRig(t, cfg)
	r.heartbeat("q1", "")
	r.sweep()
	r.want("q1", StateHealthy)
	// K recoveries within the period are tolerated; the one past them
	// quarantines, counted exactly once.
	var last time.Duration
	for n := 2; n <= k+2; n++ {
		r.clk.advance(cfg.HeartbeatInterval)
		r.restart("q1", n)
		last = r.at()
		r.sweep()
		recoveries := n - 1
		quarantined := recoveries > k
		wantState, wantMetric := StateHealthy, 0.0
		if quarantined {
			wantState, wantMetric = StateQuarantined, 1
		}
		r.want("q1", wantState)
		if got := counterValue(r.metrics.quarantines); got != wantMetric {
			t.Fatalf("after recovery %d: quarantines metric %v, want %v", recoveries, got, wantMetric)
		}
	}
	// Healthy heartbeats keep it quarantined until a whole period has passed
	// since its last recovery, and release it at exactly that moment.
	release := last + cfg.QuarantinePeriod
	ticks := int(cfg.HeartbeatInterval / cfg.CheckInterval)
	for i := 1; r.at() < release; i++ {
		if i%ticks == 0 {
			r.heartbeat("q1", "")
		}
		r.step()
		if r.at() < release {
			r.want("q1", StateQuarantined)
		}
	}
	if r.at() != release {
		t.Fatalf("stepped past the release time: %v vs %v", r.at(), release)
	}
	r.want("q1", StateHealthy)
	if got := counterValue(r.metrics.quarantines); got != 1 {
		t.Fatalf("quarantines metric %v after release, want 1", got)
	}
}

// counterValue reads a counter or gauge without the testutil package.
func counterValue(c prometheus.Collector) float64 {
	ch := make(chan prometheus.Metric, 1)
	c.Collect(ch)
	var d dto.Metric
	if err := (<-ch).Write(&d); err != nil {
		return -1
	}
	if d.Gauge != nil {
		return d.GetGauge().GetValue()
	}
	return d.GetCounter().GetValue()
}

// Sweeps come every CheckInterval give or take the ticker's latency. With
// probes due every sweep (probe interval = check interval), a sweep that
// starts a millisecond earlier, relative to its tick, than the one that
// sent the last probe must still send the next: before, the probe slipped
// to the sweep after, so probes went out every other interval and a
// zombie took twice as long to find (8 intervals at 500 ms beats under the
// default 500 ms sweep, BENCHMARKS.md issue 13).
func TestTrackerClockProbeCadenceWithSweepLatency(t *testing.T) {
	cfg := rigConfig()
	cfg.CheckInterval = cfg.HeartbeatInterval // a sweep per interval, as 500 ms beats get by default
	r := newClockRig(t, cfg)
	ack, sent := "", 0
	const sweeps = 20
	for k := 0; k <= sweeps; k++ {
		// The sweep of tick k starts 1 ms late on odd ticks, on time on even ones.
		r.clk.set(r.start.Add(time.Duration(k)*cfg.CheckInterval + time.Duration(k%2)*time.Millisecond))
		r.heartbeat("p1", ack)
		if n := r.sweep(); len(n) > 0 {
			ack, sent = n[len(n)-1], sent+len(n)
		}
		r.want("p1", StateHealthy)
	}
	if sent < sweeps-1 {
		t.Fatalf("%d probes in %d sweeps a probe interval apart, want one a sweep", sent, sweeps)
	}
}
