package fleet_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/tether-dev/tether/internal/natstest"
	"github.com/tether-dev/tether/supervisor/fleet"
)

// The supervisor watches its own heartbeat subscription: when it stops
// receiving (the server dropped it), nobody is judged on the silence that
// follows, the subscription is re-created from the self-probe and the
// fleet is judged again. Before, every agent went lost.
func TestHeartbeatSubscriptionRecreatedWhenItStopsReceiving(t *testing.T) {
	const interval = 50 * time.Millisecond
	srv := natstest.RunServer(t)
	cfg := fleetTestConfig(t, srv, interval)
	s := startSupervisor(t, cfg)
	fl := s.Fleet()
	agents := make([]*fakeAgent, 3)
	for i := range agents {
		agents[i] = startFakeAgent(t, srv.URL(), fmt.Sprintf("sp%d", i), interval)
	}
	natstest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if c := fl.Counts(); c[fleet.StateHealthy] != len(agents) {
			return fmt.Errorf("counts %v", c)
		}
		return nil
	})
	before, _ := fl.Agent("sp0")
	fl.DropHeartbeatSubscription()
	// Watch every state for three lost windows: never lost, never suspect
	// past the re-creation, and the heartbeats flow again.
	deadline := time.Now().Add(3 * cfg.Fleet.LostWindow())
	for time.Now().Before(deadline) {
		for _, a := range agents {
			if st, _ := fl.Agent(a.id); st.State == fleet.StateLost || st.State == fleet.StateGone {
				t.Fatalf("%s judged %v while the supervisor's own subscription was dead", a.id, st.State)
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	if n := metricValue(s, "tether_heartbeat_subscription_restarts_total"); n < 1 {
		t.Fatalf("heartbeat subscription restarts %v, want at least 1", n)
	}
	natstest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		st, _ := fl.Agent("sp0")
		if st.Seq <= before.Seq+5 || st.State != fleet.StateHealthy {
			return fmt.Errorf("sp0 %v at seq %d (was %d): heartbeats not flowing again", st.State, st.Seq, before.Seq)
		}
		if ok, why := s.Ready(); !ok {
			return fmt.Errorf("not ready: %s", why)
		}
		return nil
	})
}
