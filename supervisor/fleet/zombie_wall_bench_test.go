package fleet_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/internal/natstest"
	"github.com/tether-dev/tether/supervisor"
	"github.com/tether-dev/tether/supervisor/fleet"
)

// BenchmarkZombieDetectionWall is the wall-clock cross-check of
// BenchmarkZombieDetection at 500 ms beats: a real supervisor with the
// production fleet defaults (5 s configured interval; sweeps every 500 ms,
// and every 50 ms) on the SyncAlways embedded server, 1,000 simulated
// agents beating every 500 ms (all in one phase, from one publisher) whose
// command subscriptions die at once. Time from the fault to each agent's
// zombie state, in its intervals, against the same target.
//
//	go test -run '^$' -bench 'ZombieDetectionWall' -benchtime 3x ./supervisor/fleet/
func BenchmarkZombieDetectionWall(b *testing.B) {
	const n, beat = 1000, 500 * time.Millisecond
	for _, check := range []time.Duration{fleet.DefaultCheckInterval, 50 * time.Millisecond} {
		b.Run(fmt.Sprintf("wall/beat=%v/check=%v", beat, check), func(b *testing.B) {
			var all []float64
			for b.Loop() {
				all = append(all, zombieDetectionWall(b, check, beat, n)...)
			}
			slices.Sort(all)
			at := func(p float64) float64 { return all[min(int(float64(len(all))*p), len(all)-1)] }
			target := float64(fleet.DefaultZombieAfter) + 1
			b.ReportMetric(at(0.5), "p50-intervals")
			b.ReportMetric(at(0.99), "p99-intervals")
			b.ReportMetric(all[len(all)-1], "max-intervals")
			b.ReportMetric(all[0], "min-intervals")
			b.ReportMetric(target, "target-intervals")
			b.Logf("%d agents: zombie after p50 %.2f, p99 %.2f, max %.2f (min %.2f) of their intervals; target %.2f",
				len(all), at(0.5), at(0.99), all[len(all)-1], all[0], target)
		})
	}
}

func zombieDetectionWall(b *testing.B, check, beat time.Duration, n int) []float64 {
	b.StopTimer()
	defer b.StartTimer()
	srv := benchServer(b)
	cfg := testConfig(b, srv)
	cfg.Logger = zerolog.New(zerolog.NewTestWriter(b)).Level(zerolog.ErrorLevel)
	cfg.Admission = supervisor.AdmitAny
	cfg.Fleet.CheckInterval = check
	s := startSupervisor(b, cfg)
	f := startSimFleet(b, srv.URL(), n, beat, false)
	defer f.Stop()
	waitAllState(b, s.Fleet(), f, fleet.StateHealthy, 30*time.Second)
	natstest.CheckFor(b, 10*time.Second, 10*time.Millisecond, func() error { // probes answered fleet-wide
		if v := s.Metrics().Fleet.CounterValue("tether_probes_sent_total"); v < 2*float64(n) {
			return fmt.Errorf("%v probes sent", v)
		}
		return nil
	})
	fault := time.Now()
	f.set(f.ids, func(a *simAgent) { a.deaf = true })
	found := map[string]time.Duration{}
	natstest.CheckFor(b, 20*time.Second, 5*time.Millisecond, func() error {
		for _, id := range f.ids {
			if _, ok := found[id]; !ok {
				if st, _ := s.Fleet().Agent(id); st.State == fleet.StateZombie {
					found[id] = time.Since(fault)
				}
			}
		}
		if len(found) < n {
			return fmt.Errorf("%d of %d zombies", len(found), n)
		}
		return nil
	})
	out := make([]float64, 0, n)
	for _, d := range found {
		out = append(out, float64(d)/float64(beat))
	}
	return out
}
