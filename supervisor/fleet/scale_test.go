package fleet_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/internal/natstest"
	"github.com/tether-dev/tether/supervisor"
	"github.com/tether-dev/tether/supervisor/fleet"
)

// peakPerSecond is the most events in any one-second window.
func peakPerSecond(times []time.Time) int {
	sort.Slice(times, func(i, j int) bool { return times[i].Before(times[j]) })
	peak, j := 0, 0
	for i := range times {
		for times[i].Sub(times[j]) >= time.Second {
			j++
		}
		peak = max(peak, i-j+1)
	}
	return peak
}

// percentiles returns p50, p99 and max of ds.
func percentiles(ds []time.Duration) (p50, p99, top time.Duration) {
	if len(ds) == 0 {
		return
	}
	slices.Sort(ds)
	at := func(q float64) time.Duration { return ds[min(len(ds)-1, int(q*float64(len(ds))))] }
	return at(0.50), at(0.99), ds[len(ds)-1]
}

// Scale tests keep the message rate low enough for an embedded server and
// a supervisor both running under -race on two cores.
const scaleInterval = 500 * time.Millisecond

func TestFleetMassSilenceNoStampede(t *testing.T) {
	const n, interval = 1000, scaleInterval
	srv := natstest.RunServer(t)
	cfg := fleetTestConfig(t, srv, interval)
	cfg.Fleet.RecoveryRate, cfg.Fleet.RecoveryBurst = 500, 10
	cfg.Fleet.MaxSpread = 5 * time.Second
	cfg.Fleet.ProbeInterval = time.Second
	s := startSupervisor(t, cfg)
	fl := s.Fleet()
	f := startSimFleet(t, srv.URL(), n, interval, false)
	waitAllState(t, fl, f, fleet.StateHealthy, 10*time.Second)

	holdSilence(t, s, f, cfg.Fleet.LostWindow()*3/2)

	backMark := f.mark()
	f.setSilent(false)
	backAt := time.Now()
	waitAllState(t, fl, f, fleet.StateHealthy, 5*time.Second)
	first := firstReresolves(t, fl, f, backMark)
	times := make([]time.Time, 0, n)
	var lastAt, nbMin, nbMax time.Time
	for _, c := range first {
		times = append(times, c.at)
		if c.at.After(lastAt) {
			lastAt = c.at
		}
		if nb := c.NotBeforeTime(); !nb.IsZero() {
			if nbMin.IsZero() || nb.Before(nbMin) {
				nbMin = nb
			}
			if nb.After(nbMax) {
				nbMax = nb
			}
		}
	}
	peak := peakPerSecond(times)
	// The bucket holds at least one sweep's worth of tokens.
	limit := int(cfg.Fleet.RecoveryRate) + max(cfg.Fleet.RecoveryBurst, int(cfg.Fleet.RecoveryRate*cfg.Fleet.CheckInterval.Seconds())+1)
	t.Logf("recovery: %d re-resolves over %v, peak %d/s (rate %v/s, burst %d); not_before spread over %v",
		n, lastAt.Sub(backAt).Round(time.Millisecond), peak, cfg.Fleet.RecoveryRate, cfg.Fleet.RecoveryBurst, nbMax.Sub(nbMin).Round(time.Millisecond))
	// Measured at the agents: delivery jitter (large under -race) can move a
	// few commands released just before a window into it.
	if peak > limit*115/100 {
		t.Errorf("peak %d recovery commands per second exceeds the rate %d", peak, limit)
	}
	if nbMax.Sub(nbMin) < time.Second {
		t.Errorf("not_before spread over only %v", nbMax.Sub(nbMin))
	}
	if fl.MassSilence() {
		t.Error("mass silence still on")
	}
}

// holdSilence silences the whole simulated fleet for d and asserts the
// supervisor blamed the broker: mass silence shown in the metric and the
// status, every agent held at suspect, nothing sent.
func holdSilence(t *testing.T, s *supervisor.Supervisor, f *simFleet, d time.Duration) {
	fl, n := s.Fleet(), len(f.ids)
	// Only agents heard over a few intervals count for mass silence.
	natstest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if e := fl.Established(); e != n {
			return fmt.Errorf("%d of %d agents established", e, n)
		}
		return nil
	})
	silentAt := time.Now()
	f.setSilent(true)
	natstest.CheckFor(t, 2*time.Second, time.Millisecond, func() error {
		if !fl.MassSilence() {
			return fmt.Errorf("no mass silence yet: %v", fl.Counts())
		}
		return nil
	})
	detected := time.Now()
	t.Logf("mass silence detected %v after the fleet went quiet", detected.Sub(silentAt).Round(time.Millisecond))
	mark := f.mark()
	natstest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if time.Since(silentAt) < d {
			return errors.New("waiting")
		}
		return nil
	})
	if c := fl.Counts(); c[fleet.StateLost] != 0 || c[fleet.StateSuspect] != n {
		t.Errorf("during mass silence counts %v, want all %d suspect and none lost", c, n)
	}
	if v := metricValue(s, "tether_fleet_mass_silence"); v != 1 {
		t.Errorf("tether_fleet_mass_silence %v", v)
	}
	page := fleetStatus(t, s, agentproto.FleetStatusRequest{Limit: 1})
	if !page.MassSilence || page.Silent != n {
		t.Errorf("status during mass silence: mass %v silent %d", page.MassSilence, page.Silent)
	}
	sent, _ := f.since(mark)
	late := 0
	for _, c := range sent {
		// What was in flight when mass silence was detected may still land:
		// a sweep's batch for 1,000 agents under -race, on a loaded machine.
		if c.at.Sub(detected) > schedSlack {
			late++
		}
	}
	if late > 0 {
		t.Errorf("%d messages sent to silent agents during mass silence, want none", late)
	}
}

// firstReresolves waits until every simulated agent got a re-resolve
// after mark and returns the first one each got.
func firstReresolves(t *testing.T, fl *fleet.Fleet, f *simFleet, mark int) map[string]simCmd {
	var first map[string]simCmd
	natstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		cmds, _ := f.since(mark)
		first = map[string]simCmd{}
		for _, c := range cmds {
			if _, ok := first[c.agent]; !ok && c.Type == agentproto.CmdReresolve {
				first[c.agent] = c
			}
		}
		for _, id := range f.ids {
			if _, ok := first[id]; !ok {
				st, _ := fl.Agent(id)
				return fmt.Errorf("%d of %d agents got their recovery re-resolve; e.g. %s: %v %q, pending %d, backlog %d",
					len(first), len(f.ids), id, st.State, st.Reason, len(fl.Pending(id)), fl.RecoveryBacklog())
			}
		}
		return nil
	})
	return first
}

// fleetStatus asks mcp.v1.fleet.status.
func fleetStatus(t testing.TB, s *supervisor.Supervisor, req agentproto.FleetStatusRequest) fleet.Status {
	t.Helper()
	body, _ := json.Marshal(req)
	msg, e := natstest.Request(t, s.Conn(), subj.FleetStatus(), body)
	if e != nil {
		t.Fatalf("fleet.status %s: %+v", body, e)
	}
	var st fleet.Status
	if err := json.Unmarshal(msg.Data, &st); err != nil {
		t.Fatalf("fleet.status reply %.300s: %v", msg.Data, err)
	}
	return st
}
