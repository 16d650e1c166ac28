package fleet

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tether-dev/tether/agentproto"
)

// BenchmarkZombieDetection measures, on the injected clock, how long the
// tracker takes to call 1,000 agents zombies once their command
// subscriptions die (they keep heartbeating, repeating the last probe they
// received), in each agent's own heartbeat intervals: agents beating at
// 500 ms and at 5 s, against the production defaults (5 s configured
// interval, 500 ms sweeps, probes every interval, a deadline of 1.25
// intervals, zombie after 3), and at 500 ms with sweeps every 50 ms.
// Heartbeat phases and fault times are spread evenly over one interval,
// each agent's fault its own; probe phases are the tracker's own. The reference reported
// beside the figures is the target: ZombieAfter probe intervals plus one
// heartbeat interval. The wall-clock cross-check at 500 ms is
// BenchmarkZombieDetectionWall (fleet_test).
//
//	go test -run '^$' -bench 'ZombieDetection' -benchtime 3x ./supervisor/fleet/
func BenchmarkZombieDetection(b *testing.B) {
	const agents = 1000
	for _, c := range []struct{ beat, check time.Duration }{
		{500 * time.Millisecond, DefaultCheckInterval}, // the default sweep: one 500 ms interval
		{500 * time.Millisecond, 50 * time.Millisecond},
		{5 * time.Second, DefaultCheckInterval}, // a tenth of an interval
	} {
		b.Run(fmt.Sprintf("clock/beat=%v/check=%v", c.beat, c.check), func(b *testing.B) {
			cfg := DefaultConfig()
			cfg.CheckInterval = c.check
			target := float64(cfg.ZombieAfter) + 1 // the probe interval is the heartbeat interval by default
			var all []float64
			for b.Loop() {
				all = append(all, zombieDetectionClock(b, cfg, c.beat, agents)...)
			}
			reportIntervals(b, all, target)
		})
	}
}

// reportIntervals reports p50, p99 and max of detection times in
// intervals, and the target beside them.
func reportIntervals(b *testing.B, d []float64, target float64) {
	slices.Sort(d)
	at := func(p float64) float64 { return d[min(int(float64(len(d))*p), len(d)-1)] }
	b.ReportMetric(at(0.5), "p50-intervals")
	b.ReportMetric(at(0.99), "p99-intervals")
	b.ReportMetric(d[len(d)-1], "max-intervals")
	b.ReportMetric(d[0], "min-intervals")
	b.ReportMetric(target, "target-intervals")
	b.Logf("%d agents: zombie after p50 %.2f, p99 %.2f, max %.2f (min %.2f) of their intervals; target %.2f",
		len(d), at(0.5), at(0.99), d[len(d)-1], d[0], target)
}

// zombieDetectionClock runs one fleet of n agents beating every beat
// through the clock rig and returns each agent's time from the fault to
// its zombie state, in beats. The clock moves in hundredths of a beat;
// sweeps run every cfg.CheckInterval, as the sweep loop would, every other
// one a millisecond late.
func zombieDetectionClock(b *testing.B, cfg Config, beat time.Duration, n int) []float64 {
	b.Helper()
	b.StopTimer()
	defer b.StartTimer()
	r := newClockRig(b, cfg)
	r.cfg.HeartbeatInterval = beat // what the agents announce (interval_ms)
	tick := beat / 100
	if cfg.CheckInterval%tick != 0 {
		b.Fatalf("check interval %v is not a multiple of the tick %v", cfg.CheckInterval, tick)
	}
	ids := make([]string, n)
	next := make([]time.Duration, n)           // each agent's next heartbeat
	fault := make(map[string]time.Duration, n) // when its command subscription dies
	acks := make(map[string]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("z-%04d", i)
		next[i] = time.Duration(i) * beat / time.Duration(n)
		// After six intervals in which it answered its probes, at a
		// hundredth of an interval of its own (37 is prime to 100).
		fault[ids[i]] = 6*beat + time.Duration(i*37%100)*tick
	}
	found := make(map[string]time.Duration, n)
	for at := time.Duration(0); len(found) < n; at += tick {
		if at > 17*beat {
			b.Fatalf("only %d of %d agents zombies %v after the first fault", len(found), n, at-6*beat)
		}
		r.clk.set(r.start.Add(at))
		for i, id := range ids {
			for next[i] <= at {
				r.heartbeat(id, acks[id])
				next[i] += beat
			}
		}
		if at%cfg.CheckInterval != 0 {
			continue
		}
		// The sweep loop's ticker runs a little late, by more on some
		// ticks than on others: every other sweep starts 1 ms late.
		if at/cfg.CheckInterval%2 == 1 {
			r.clk.set(r.start.Add(at + time.Millisecond))
		}
		for id, nonce := range sweepProbes(r) {
			if at < fault[id] {
				acks[id] = nonce // received: named in every heartbeat until a newer one
			}
		}
		if at < beat {
			continue // not every agent has been heard yet
		}
		for _, id := range ids {
			if _, ok := found[id]; !ok && r.state(id) == StateZombie {
				if at < fault[id] {
					b.Fatalf("%s a zombie at %v, before its fault at %v", id, at, fault[id])
				}
				found[id] = at - fault[id]
			}
		}
	}
	out := make([]float64, 0, n)
	for _, d := range found {
		out = append(out, float64(d)/float64(beat))
	}
	return out
}

func (c *manualClock) set(t time.Time) {
	c.mu.Lock()
	c.now = t
	c.mu.Unlock()
}

// sweepProbes runs one judgement pass and returns, per agent, the nonce of
// the probe it was sent.
func sweepProbes(r *clockRig) map[string]string {
	r.t.Helper()
	r.tr.sweepOnce()
	if err := r.nc.Flush(); err != nil {
		r.t.Fatal(err)
	}
	prefix := strings.TrimSuffix(agentproto.Subjects{Prefix: "mcp"}.Command("x"), "x")
	out := map[string]string{}
	for {
		m, err := r.cmds.NextMsg(0)
		if err != nil {
			return out
		}
		var c agentproto.Command
		if json.Unmarshal(m.Data, &c) == nil && c.Type == agentproto.CmdProbe {
			out[strings.TrimPrefix(m.Subject, prefix)] = c.Nonce
		}
	}
}
