package fleet_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/internal/natstest"
	"github.com/tether-dev/tether/kvconfig"
	"github.com/tether-dev/tether/supervisor"
	"go.uber.org/goleak"
)

// The fleet's end-to-end tests run it inside a real supervisor against a
// real embedded nats-server (this external test package may import
// supervisor); the unit tests of its state machine and decoder are in
// package fleet.

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// subj are the default subjects ("mcp").
var subj agentproto.Subjects

// testConfig is a supervisor config against srv with millisecond timings.
func testConfig(t testing.TB, srv *natstest.Server) supervisor.Config {
	cfg := supervisor.DefaultConfig()
	cfg.NATSURL = srv.URL()
	cfg.HTTPAddr = ""
	cfg.WatchCheckInterval = 50 * time.Millisecond
	cfg.ReconnectWait = 10 * time.Millisecond
	cfg.Logger = zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.InfoLevel)
	return cfg
}

// startSupervisor starts a supervisor and waits until its index is ready.
func startSupervisor(t testing.TB, cfg supervisor.Config) *supervisor.Supervisor {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
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

// metricValue sums the samples of the metric family name on s's registry
// whose labels include every (name, value) pair given; -1 if the family
// is not there.
func metricValue(s *supervisor.Supervisor, name string, labels ...string) float64 {
	fams, err := s.Metrics().Registry.Gather()
	if err != nil {
		return -1
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		sum := 0.0
	next:
		for _, m := range f.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, l := range m.GetLabel() {
					if l.GetName() == labels[i] && l.GetValue() == labels[i+1] {
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
			}
		}
		return sum
	}
	return -1
}

// put writes val at key of bucket (mcp_configs or mcp_agents).
func put(t testing.TB, s *supervisor.Supervisor, bucket, key, val string) uint64 {
	t.Helper()
	kv := s.Buckets().Configs
	if bucket == kvconfig.BucketAgents {
		kv = s.Buckets().Agents
	}
	rev, err := kv.Put(context.Background(), key, []byte(val))
	if err != nil {
		t.Fatal(err)
	}
	return rev
}

// waitRev waits until the index holds revision rev.
func waitRev(t testing.TB, s *supervisor.Supervisor, agent, server string, rev uint64) {
	t.Helper()
	natstest.CheckFor(t, 2*time.Second, time.Millisecond, func() error {
		r, err := s.Index().Resolve(agent, server)
		if r.Revision < rev {
			return fmt.Errorf("revision %d < %d (%v)", r.Revision, rev, err)
		}
		return nil
	})
}
