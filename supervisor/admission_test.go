package supervisor

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/internal/natstest"
	"github.com/tether-dev/tether/supervisor/auth"
	"github.com/tether-dev/tether/supervisor/fleet"
)

// With the default admission a heartbeat from an id that is not in
// mcp_agents is discarded (and counted); once the operator registers it,
// it is tracked.
func TestDefaultAdmissionTracksOnlyRegisteredAgents(t *testing.T) {
	const interval = 20 * time.Millisecond
	srv := natstest.RunServer(t)
	cfg := fastFleetConfig(t, srv, interval)
	if cfg.Admission != AdmitRegistered {
		t.Fatalf("default admission %q, want %q", cfg.Admission, AdmitRegistered)
	}
	s := startSupervisor(t, cfg)
	startRawAgent(t, srv.Connect(), "stranger", interval)
	discarded := func() float64 { return metricSum(t, s, "tether_heartbeats_discarded_total") }
	natstest.CheckFor(t, 5*time.Second, 2*time.Millisecond, func() error {
		if n := discarded(); n < 3 {
			return fmt.Errorf("%v unregistered discards", n)
		}
		return nil
	})
	if _, ok := s.Fleet().Agent("stranger"); ok {
		t.Fatal("an unregistered agent is tracked")
	}
	registerAgents(t, s, "stranger")
	natstest.CheckFor(t, 5*time.Second, 2*time.Millisecond, func() error {
		if st, ok := s.Fleet().Agent("stranger"); !ok || st.State != fleet.StateHealthy {
			return fmt.Errorf("registered agent: %+v %v", st, ok)
		}
		return nil
	})
}

// The supervisor's own credentials let it publish its heartbeat
// self-probe (supervisor/auth cannot import fleet; the name is repeated).
func TestSupervisorPermissionsAllowTheSelfProbe(t *testing.T) {
	want := agentproto.Subjects{}.Heartbeat(fleet.SelfProbeID)
	if !slices.Contains(auth.SupervisorPermissions("").Pub.Allow, want) {
		t.Fatalf("SupervisorPermissions do not allow publishing %s", want)
	}
}
