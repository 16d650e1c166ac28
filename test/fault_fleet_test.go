package test

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/internal/natstest"
)

// 7. 200 clients in one process through a shared server restart: all
// recover, none stays closed, and reconnect attempts are spread over time
// (the default reconnect backoff with jitter; peak per 100 ms reported).
func TestFaultFleetRestart(t *testing.T) {
	const agents = 200
	srv := natstest.RunServer(t, natstest.WithoutJetStream())
	rec := &fleetEvents{t: t}
	clients, recv := startFleet(t, srv.URL(), agents, rec.onEvent)
	srv.Shutdown()
	down := time.Now()
	// Down long enough for every client to fail a few attempts.
	natstest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if n := rec.attemptCount(); n < 4*agents {
			return fmt.Errorf("%d failed attempts", n)
		}
		return nil
	})
	srv.Start()
	ready := time.Now()
	pub := natstest.Connect(t, srv.URL())
	marker := make([]byte, 2) // a payload length never seen before the restart
	var allBack time.Duration
	natstest.CheckFor(t, 15*time.Second, 10*time.Millisecond, func() error {
		_ = pub.Publish("fleet.all", marker)
		for i := range recv {
			if recv[i].Load() != int64(len(marker)) {
				return fmt.Errorf("agent %d not receiving yet", i)
			}
		}
		allBack = time.Since(ready)
		return nil
	})
	natstest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		for i, c := range clients {
			if s := c.State(); s != agentproto.StateConnected {
				return fmt.Errorf("agent %d: state %v", i, s)
			}
		}
		return nil
	})
	rec.mu.Lock()
	defer rec.mu.Unlock()
	peakAll, _ := peakPer(rec.attempts, time.Time{}, 100*time.Millisecond)
	peakAfter, _ := peakPer(rec.attempts, ready, 100*time.Millisecond)
	peakOK, spread := peakPer(rec.oks, ready, 100*time.Millisecond)
	t.Logf("%d agents, server down %v: all receiving %v after ready; %d reconnect attempts, peak per 100 ms: %d overall, %d after ready (successes: peak %d, spread over %v)",
		agents, ready.Sub(down).Round(time.Millisecond), allBack.Round(time.Millisecond), len(rec.attempts), peakAll, peakAfter, peakOK, spread.Round(time.Millisecond))
	if peakOK > agents/2 {
		t.Fatalf("%d of %d agents reconnected in one 100 ms window: no spread", peakOK, agents)
	}
}

// startFleet connects n agents with the default reconnect, ping and
// health timings (millisecond ones would starve 200 agents under -race),
// each subscribed to fleet.all; recv[i] is the length of the last message
// agent i received.
func startFleet(t *testing.T, url string, n int, onEvent func(agentproto.Event)) ([]*agentproto.Client, []atomic.Int64) {
	recv := make([]atomic.Int64, n)
	clients := make([]*agentproto.Client, n)
	d := agentproto.DefaultConfig("")
	for i := range clients {
		cfg := faultConfig(t, url, fmt.Sprintf("fleet-%03d", i))
		cfg.ReconnectWait, cfg.MaxReconnectWait = d.ReconnectWait, d.MaxReconnectWait
		cfg.PingInterval, cfg.HealthInterval, cfg.ProbeTimeout = d.PingInterval, d.HealthInterval, d.ProbeTimeout
		cfg.HeartbeatInterval = 500 * time.Millisecond
		cfg.Logger, cfg.OnEvent = zerolog.Nop(), onEvent
		clients[i] = startAgent(t, cfg)
		if _, err := clients[i].Subscribe("fleet.all", func(m *nats.Msg) { recv[i].Store(int64(len(m.Data))) }); err != nil {
			t.Fatal(err)
		}
	}
	return clients, recv
}

// fleetEvents records when reconnect attempts happen across a fleet.
type fleetEvents struct {
	t        *testing.T
	mu       sync.Mutex
	attempts []time.Time // every reconnect or rebuild attempt, failed or not
	oks      []time.Time // successful ones
}

func (f *fleetEvents) onEvent(e agentproto.Event) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch e.Kind {
	case agentproto.EventReconnectFailed, agentproto.EventConnectFailed:
		f.attempts = append(f.attempts, e.Time)
	case agentproto.EventReconnected, agentproto.EventRebuilt:
		f.attempts, f.oks = append(f.attempts, e.Time), append(f.oks, e.Time)
	case agentproto.EventRebuildStarted:
		f.t.Logf("%s: %s", e.Kind, e.Reason)
	}
}

func (f *fleetEvents) attemptCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.attempts)
}

// peakPer is the most events at or after from in one window-wide bucket,
// and the span from the first to the last such event.
func peakPer(ts []time.Time, from time.Time, window time.Duration) (int, time.Duration) {
	var in []time.Time
	for _, t := range ts {
		if !t.Before(from) {
			in = append(in, t)
		}
	}
	if len(in) == 0 {
		return 0, 0
	}
	slices.SortFunc(in, func(a, b time.Time) int { return a.Compare(b) })
	peak, j := 0, 0
	for i := range in { // sliding window [in[j], in[i]]
		for in[i].Sub(in[j]) >= window {
			j++
		}
		peak = max(peak, i-j+1)
	}
	return peak, in[len(in)-1].Sub(in[0])
}
