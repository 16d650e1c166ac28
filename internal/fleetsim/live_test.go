package fleetsim

import (
	"context"
	"testing"
	"time"

	"github.com/tether-dev/tether/agentproto"
)

// liveTestTimings are millisecond timings for a small live fleet: 100 ms
// heartbeats (so probes every 200 ms), 100 ms health ticks, and a 1 s
// reconnect window (ConnectRate = agents per second).
func liveTestTimings(agents int) func(*agentproto.Config) {
	return func(c *agentproto.Config) {
		c.HealthInterval, c.ProbeTimeout = 100*ms, 100*ms
		c.PingInterval, c.ConnectTimeout = 200*ms, 500*ms
		c.ConnectRate = agents
	}
}

const liveTestAgents = 60

func runLiveTest(t *testing.T, kind LiveKind, outage time.Duration) LiveResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r, err := RunLive(ctx, LiveConfig{
		Agents: liveTestAgents, Kind: kind, HeartbeatInterval: 100 * ms,
		Warmup: 500 * ms, Steady: 2 * time.Second, Outage: outage, Cap: 10 * time.Second,
		Tether: liveTestTimings(liveTestAgents), Logf: t.Logf,
	})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// In steady state the watchdog (probes every two heartbeats, in rotation,
// no flush round trips) costs the server at most as many messages again
// as the heartbeats: tether's messages per agent are within 2× a bare
// client's that only heartbeats (1.5× by design: one probe in and out per
// two heartbeats in and out). Counted per heartbeat the consumer
// received, so a run whose timers a loaded machine delayed compares like
// with like; message counts, not timings.
func TestLiveSteadyStateWithinTwiceTheFloor(t *testing.T) {
	bare := runLiveTest(t, KindBare, -1)
	tether := runLiveTest(t, KindTether, -1)
	perBeat := func(r LiveResult) float64 { return (r.InPerAgentSec + r.OutPerAgentSec) / r.HeartbeatsPerAgentSec }
	t.Logf("messages per agent per second: bare %.2f (%.2f heartbeats), tether %.2f (%.2f heartbeats); per heartbeat: bare %.2f, tether %.2f: %.2f×",
		bare.InPerAgentSec+bare.OutPerAgentSec, bare.HeartbeatsPerAgentSec, tether.InPerAgentSec+tether.OutPerAgentSec,
		tether.HeartbeatsPerAgentSec, perBeat(bare), perBeat(tether), perBeat(tether)/perBeat(bare))
	if bare.HeartbeatsPerAgentSec == 0 || tether.HeartbeatsPerAgentSec == 0 {
		t.Fatal("no heartbeats in the steady window")
	}
	if perBeat(tether) > 2*perBeat(bare) {
		t.Fatalf("tether %.2f messages per heartbeat against the floor's %.2f: above 2×", perBeat(tether), perBeat(bare))
	}
}

// A small fleet through a server crash: each agent connects exactly once
// after the server's return (its first attempt, at its slot, succeeds),
// every connect falls within one reconnect window of the return, so no
// 100 ms bucket holds more connects than the agents whose phases lie in
// one 100 ms (plus the attempt's latency) arc of the window, and every
// agent works within the window plus one marker period (50 ms) and that
// latency.
func TestLiveFleetRestartSpreadByPhase(t *testing.T) {
	r := runLiveTest(t, KindTether, 2*time.Second)
	window := agentproto.ReconnectWindow(liveTestAgents, liveTestAgents, agentproto.DefaultReconnectWait, agentproto.DefaultMaxReconnectWait)
	// An attempt reaches the server late by its dial and handshake (a few
	// ms on loopback) plus the scheduling delay its timer suffered, which
	// the run measured with a 10 ms timer of its own.
	latency := 20*ms + r.TimerLateness
	var phases []time.Duration
	for i := range liveTestAgents {
		phases = append(phases, agentproto.ReconnectPhase(agentID(i), window))
	}
	limit := maxInArc(phases, window, 100*ms+latency)
	t.Logf("window %v, timers up to %v late: %d connects, peak %d per 100 ms (limit %d), per second %v; working p50 %v p99 %v all %v, per second %v",
		window, r.TimerLateness, r.Connects, r.PeakConnects, limit, r.ConnectsPerSec, r.P50, r.P99, r.AllWorking, r.WorkingPerSec)
	if r.Connects != liveTestAgents {
		t.Errorf("%d connects after the return, want one per agent (%d)", r.Connects, liveTestAgents)
	}
	if r.PeakConnects > limit {
		t.Errorf("peak %d connects per 100 ms, above the phases' %d", r.PeakConnects, limit)
	}
	if bound := window + 50*ms + latency; r.AllWorking < 0 || r.AllWorking > bound {
		t.Errorf("all working after %v, want ≤ %v", r.AllWorking, bound)
	}
}

// maxInArc is the most phases in any arc of width w of the circle of
// circumference window, starting at a phase.
func maxInArc(phases []time.Duration, window, w time.Duration) int {
	best := 0
	for _, s := range phases {
		n := 0
		for _, p := range phases {
			if d := (p - s + window) % window; d < w {
				n++
			}
		}
		best = max(best, n)
	}
	return best
}

func TestLiveConfigValidate(t *testing.T) {
	if err := (LiveConfig{Kind: "other"}).Validate(); err == nil {
		t.Fatal("unknown kind accepted")
	}
	if err := (LiveConfig{Agents: -1}).Validate(); err == nil {
		t.Fatal("negative agents accepted")
	}
}
