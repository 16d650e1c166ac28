package fleet_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/internal/natstest"
	"github.com/tether-dev/tether/internal/suptest"
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

// testConfig is a supervisor config against srv with millisecond KV and
// reconnect timings, logging at info through t.
func testConfig(t testing.TB, srv *natstest.Server) supervisor.Config {
	cfg := suptest.Config(t, srv.URL())
	cfg.Logger = cfg.Logger.Level(zerolog.InfoLevel)
	return cfg
}

// startSupervisor starts a supervisor and waits until its index is ready.
func startSupervisor(t testing.TB, cfg supervisor.Config) *supervisor.Supervisor {
	t.Helper()
	return suptest.Start(t, cfg)
}

// metricValue sums the samples of the metric family name on s's registry
// whose labels include every (name, value) pair given; -1 if absent.
func metricValue(s *supervisor.Supervisor, name string, labels ...string) float64 {
	want := map[string]string{}
	for i := 0; i+1 < len(labels); i += 2 {
		want[labels[i]] = labels[i+1]
	}
	return suptest.Value(suptest.Gather(s), name, want)
}

// put writes val at key of bucket (mcp_configs or mcp_agents).
func put(t testing.TB, s *supervisor.Supervisor, bucket, key, val string) uint64 {
	if bucket == kvconfig.BucketAgents {
		return natstest.KVPut(t, s.Buckets().Agents, key, val)
	}
	return natstest.KVPut(t, s.Buckets().Configs, key, val)
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
