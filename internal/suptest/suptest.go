// Package suptest starts real supervisors for tests outside the supervisor
// package (agentproto's external tests, tetherctl, test/): one place for
// the millisecond timings and the start/wait/cleanup sequence.
package suptest

import (
	"context"
	"encoding/json"
	"net"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/kvconfig"
	"github.com/tether-dev/tether/supervisor"
)

// Config is a supervisor config against natsURL with millisecond KV and
// reconnect timings, no HTTP, and warnings logged through t. Fleet timings
// stay at their defaults; FastFleet shortens them.
func Config(t testing.TB, natsURL string) supervisor.Config {
	cfg := supervisor.DefaultConfig()
	cfg.NATSURL, cfg.HTTPAddr = natsURL, ""
	cfg.WatchCheckInterval, cfg.ReconnectWait = 50*time.Millisecond, 10*time.Millisecond
	cfg.Logger = zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	return cfg
}

// FastFleet sets the fleet timings tests use: 50 ms heartbeats and probes.
func FastFleet(cfg *supervisor.Config) {
	f := &cfg.Fleet
	f.HeartbeatInterval, f.CheckInterval = 50*time.Millisecond, 10*time.Millisecond
	f.ProbeInterval, f.ProbeTimeout, f.ResendInterval = 50*time.Millisecond, 100*time.Millisecond, 100*time.Millisecond
	f.PersistInterval = 20 * time.Millisecond
}

// Start starts a supervisor, closes it on t.Cleanup and waits until its
// config index is ready.
func Start(t testing.TB, cfg supervisor.Config) *supervisor.Supervisor {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := supervisor.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	if err := s.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	return s
}

// Gather reads every metric family of s's registry, by name (none if the
// registry cannot be gathered).
func Gather(s *supervisor.Supervisor) map[string]*dto.MetricFamily {
	fams, _ := s.Metrics().Registry.Gather()
	out := make(map[string]*dto.MetricFamily, len(fams))
	for _, f := range fams {
		out[f.GetName()] = f
	}
	return out
}

// Value sums a family's counter, gauge and histogram-count samples whose
// labels include every pair of want; -1 if the family is absent.
func Value(fams map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	f := fams[name]
	if f == nil {
		return -1
	}
	sum := 0.0
next:
	for _, m := range f.GetMetric() {
		for k, v := range want {
			found := false
			for _, l := range m.GetLabel() {
				if l.GetName() == k && l.GetValue() == v {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			sum += m.GetCounter().GetValue()
		case m.Gauge != nil:
			sum += m.GetGauge().GetValue()
		case m.Histogram != nil:
			sum += float64(m.GetHistogram().GetSampleCount())
		}
	}
	return sum
}

// Embedded is a supervisor config that runs the embedded nats-server (auth
// always on) on a free loopback port with its data in dataDir, with
// millisecond KV timings and no HTTP.
func Embedded(t testing.TB, dataDir string) supervisor.Config {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cfg := Config(t, "")
	cfg.Listen, cfg.DataDir = addr, dataDir
	return cfg
}

// Register puts each agent id into s's role registry (mcp_agents) with
// role, as 'tetherctl agent add' does, and waits until s admits it: with
// the default admission only registered agents are tracked.
func Register(t testing.TB, s *supervisor.Supervisor, role string, ids ...string) {
	t.Helper()
	val, _ := json.Marshal(map[string]string{"role": role})
	register(t, s, val, ids...)
}

// RegisterConsumers registers id with role in mcp_agents and grants it
// the durable consumers ("<stream>:<durable>" each), as 'tetherctl agent
// add --consumer' records them, and waits until the supervisor has it.
func RegisterConsumers(t testing.TB, s *supervisor.Supervisor, role, id string, consumers ...string) {
	t.Helper()
	val, _ := json.Marshal(kvconfig.AgentRecord{Role: role, Consumers: consumers})
	register(t, s, val, id)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, c := range consumers {
		stream, durable, _ := strings.Cut(c, ":")
		for !s.Index().ConsumerGranted(id, stream, durable) {
			if ctx.Err() != nil {
				t.Fatalf("suptest: %s's grant of %s not in the supervisor's registry within 10s", id, c)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
}

func register(t testing.TB, s *supervisor.Supervisor, val []byte, ids ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, id := range ids {
		if _, err := s.Buckets().Agents.Put(ctx, id, val); err != nil {
			t.Fatalf("suptest: register %s: %v", id, err)
		}
	}
	for _, id := range ids {
		for !s.Index().Registered(id) {
			if ctx.Err() != nil {
				t.Fatalf("suptest: %s not in the supervisor's registry within 10s", id)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
}
