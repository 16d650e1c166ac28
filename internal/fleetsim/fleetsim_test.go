package fleetsim

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tether-dev/tether/agentproto"
)

const ms = time.Millisecond

// simModes are the four policies compared: the default schedule with each
// jitter mode.
func simPolicies(attempts int, maxDelay time.Duration) []agentproto.Policy {
	var out []agentproto.Policy
	for _, m := range []agentproto.JitterMode{agentproto.JitterNone, agentproto.JitterAdditive, agentproto.JitterFull, agentproto.JitterDecorrelated} {
		p := agentproto.DefaultPolicy()
		p.JitterMode = m
		p.MaxAttempts = attempts
		p.MaxDelay = maxDelay
		p.MaxElapsed = 0
		out = append(out, p)
	}
	return out
}

func fmtDone(d time.Duration) string {
	if d < 0 {
		return "never"
	}
	return fmt.Sprintf("%.2fs", d.Seconds())
}

// TestFleetSimTable logs the comparison table (go test -v -run FleetSimTable).
func TestFleetSimTable(t *testing.T) {
	scenarios := []struct {
		name     string
		attempts int
		maxDelay time.Duration
		capacity int
	}{
		{"uncapped attempts, max delay 30s, unlimited capacity", -1, 30 * time.Second, 0},
		{"uncapped attempts, max delay 5s, unlimited capacity", -1, 5 * time.Second, 0},
		{"uncapped attempts, max delay 30s, capacity 100 per 100ms", -1, 30 * time.Second, 100},
		{"uncapped attempts, max delay 5s, capacity 100 per 100ms", -1, 5 * time.Second, 100},
		{"default 5 attempts, max delay 30s, unlimited capacity", 5, 30 * time.Second, 0},
	}
	for _, sc := range scenarios {
		var b strings.Builder
		fmt.Fprintf(&b, "\n1000 agents, 10s outage, %s\n", sc.name)
		fmt.Fprintf(&b, "%-13s %13s %16s %10s %9s %8s %8s\n", "jitter", "peak retries", "peak after down", "all done", "attempts", "rejected", "gave up")
		for _, p := range simPolicies(sc.attempts, sc.maxDelay) {
			r, err := Simulate(Config{Policy: p, Capacity: sc.capacity, Seed: 1})
			if err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(&b, "%-13s %13d %16d %10s %9d %8d %8d\n", p.JitterMode, r.PeakRetries, r.PeakAfterOutage, fmtDone(r.AllDone), r.Attempts, r.Rejected, r.GaveUp)
		}
		t.Log(b.String())
	}
}

func TestFleetSimNoJitterIsExact(t *testing.T) {
	p := agentproto.Policy{MaxAttempts: -1, JitterMode: agentproto.JitterNone}
	r, err := Simulate(Config{Policy: p})
	if err != nil {
		t.Fatal(err)
	}
	// Waits 0.5, 1, 2, 4, 8 s: calls at 0, 0.5, 1.5, 3.5, 7.5 and 15.5 s.
	want := Result{Mode: agentproto.JitterNone, PeakRetries: 1000, PeakAt: 500 * ms, PeakAfterOutage: 1000,
		AllDone: 15500 * ms, Succeeded: 1000, Attempts: 6000}
	if r != want {
		t.Errorf("result = %+v\nwant     %+v", r, want)
	}
}

func TestFleetSimDeterministic(t *testing.T) {
	cfg := Config{Policy: agentproto.Policy{MaxAttempts: -1, JitterMode: agentproto.JitterDecorrelated}, Seed: 7, Spread: time.Second, Capacity: 50}
	a, err := Simulate(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := Simulate(cfg); a != b {
		t.Errorf("same config, different results: %+v vs %+v", a, b)
	}
	cfg.Seed = 8
	if c, _ := Simulate(cfg); a == c {
		t.Errorf("different seeds gave the same result %+v", a)
	}
}

func TestFleetSimJitterLowersPeaks(t *testing.T) {
	var none Result
	for _, p := range simPolicies(-1, agentproto.DefaultMaxDelay) {
		r, err := Simulate(Config{Policy: p, Seed: 1})
		if err != nil {
			t.Fatal(err)
		}
		if r.Succeeded != 1000 || r.AllDone < 10*time.Second {
			t.Errorf("%s: %+v", p.JitterMode, r)
		}
		if p.JitterMode == agentproto.JitterNone {
			none = r
			continue
		}
		if r.PeakRetries >= none.PeakRetries || r.PeakAfterOutage*10 > none.PeakAfterOutage {
			t.Errorf("%s: peaks %d/%d not well below no jitter's %d/%d", p.JitterMode, r.PeakRetries, r.PeakAfterOutage, none.PeakRetries, none.PeakAfterOutage)
		}
	}
}

func TestFleetSimCapsAndCapacity(t *testing.T) {
	// The article's 5 attempts end by 9.75 s: a 10 s outage outlasts them.
	r, err := Simulate(Config{Policy: agentproto.ArticlePolicy(), Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	if r.GaveUp != 1000 || r.Succeeded != 0 || r.AllDone != -1 || r.Attempts != 5000 {
		t.Errorf("article policy: %+v", r)
	}
	// MaxElapsed ends the retries too.
	p := agentproto.Policy{MaxAttempts: -1, MaxElapsed: 5 * time.Second, JitterMode: agentproto.JitterNone}
	if r, _ := Simulate(Config{Policy: p}); r.GaveUp != 1000 || r.Attempts != 4000 {
		t.Errorf("MaxElapsed 5s: %+v", r)
	}
	// A server that answers 100 calls per window rejects the herd.
	p = agentproto.Policy{MaxAttempts: -1, JitterMode: agentproto.JitterNone, MaxDelay: 5 * time.Second}
	r, _ = Simulate(Config{Policy: p, Capacity: 100})
	if r.Rejected == 0 || r.Succeeded != 1000 || r.AllDone <= 15*time.Second {
		t.Errorf("capacity 100: %+v", r)
	}
	// An agent still retrying at the horizon is neither done nor gave up.
	r, _ = Simulate(Config{Policy: p, Agents: 10, Horizon: 3 * time.Second})
	if r.Succeeded != 0 || r.GaveUp != 0 || r.AllDone != -1 || r.Attempts != 30 { // calls at 0, 0.5, 1.5 s
		t.Errorf("horizon: %+v", r)
	}
}

func TestFleetSimRejectsBadConfig(t *testing.T) {
	for _, cfg := range []Config{
		{Agents: -1},
		{Capacity: -1},
		{Policy: agentproto.Policy{Jitter: 3}},
	} {
		if _, err := Simulate(cfg); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("Simulate(%+v) err = %v", cfg, err)
		}
	}
}

// BenchmarkFleetSim runs the fleet simulation (1,000 agents, 10 s outage,
// no attempt cap) for each jitter mode and reports its results as metrics:
// peak retries per 100 ms window, peak calls per window after the outage,
// seconds until all succeeded, total attempts. See TestFleetSimTable for
// more scenarios.
func BenchmarkFleetSim(b *testing.B) {
	for _, p := range simPolicies(-1, agentproto.DefaultMaxDelay) {
		b.Run(p.JitterMode.String(), func(b *testing.B) {
			var r Result
			for b.Loop() {
				var err error
				if r, err = Simulate(Config{Policy: p, Seed: 1}); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(r.PeakRetries), "peak-retries/100ms")
			b.ReportMetric(float64(r.PeakAfterOutage), "peak-after-outage/100ms")
			b.ReportMetric(r.AllDone.Seconds(), "all-done-s")
			b.ReportMetric(float64(r.Attempts), "attempts")
		})
	}
}
