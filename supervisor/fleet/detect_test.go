package fleet_test

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/internal/natstest"
	"github.com/tether-dev/tether/kvconfig"
	"github.com/tether-dev/tether/supervisor/fleet"
)

// inIntervals prints a duration as a multiple of the heartbeat interval.
func inIntervals(d, interval time.Duration) string {
	return fmt.Sprintf("%v (%.2f intervals)", d.Round(100*time.Microsecond), float64(d)/float64(interval))
}

// wallInterval is the heartbeat interval of wall-clock detection tests.
// Exact thresholds are asserted under an injected clock
// (tracker_clock_test.go); these end-to-end tests assert only that
// detection is no earlier than its threshold and less than twice it, so
// the interval must be long enough for that factor of two to absorb
// scheduling stalls under -race on a shared 2-core machine.
const wallInterval = 100 * time.Millisecond

// checkWithin2x fails unless threshold <= d < 2*threshold: earlier is a
// wrong verdict, twice as late is a regression.
func checkWithin2x(t *testing.T, what string, d, threshold, interval time.Duration) {
	t.Helper()
	if d < threshold || d >= 2*threshold {
		t.Errorf("%s after %s, want within [%v, %v)", what, inIntervals(d, interval), threshold, 2*threshold)
	}
}

func TestFleetSuspectThenLost(t *testing.T) {
	const interval = wallInterval
	srv := natstest.RunServer(t)
	cfg := fleetTestConfig(t, srv, interval)
	s := startSupervisor(t, cfg)
	a := startFakeAgent(t, srv.URL(), "a1", interval)
	waitState(t, s.Fleet(), "a1", fleet.StateHealthy, 2*time.Second)

	last := a.pause(true)
	var suspectAt, lostAt time.Time
	natstest.CheckFor(t, 2*time.Second, 500*time.Microsecond, func() error {
		st, _ := s.Fleet().Agent("a1")
		switch now := time.Now(); st.State {
		case fleet.StateSuspect:
			if suspectAt.IsZero() {
				suspectAt = now
			}
		case fleet.StateLost:
			lostAt = now
			return nil
		}
		return errors.New("not lost yet: " + st.State.String())
	})
	if suspectAt.IsZero() {
		t.Fatal("went lost without being suspect first")
	}
	suspect, lost := suspectAt.Sub(last), lostAt.Sub(last)
	t.Logf("detection from last heartbeat: suspect after %s, lost after %s", inIntervals(suspect, interval), inIntervals(lost, interval))
	checkWithin2x(t, "suspect", suspect, time.Duration(cfg.Fleet.SuspectAfter)*interval, interval)
	checkWithin2x(t, "lost", lost, time.Duration(cfg.Fleet.LostAfter)*interval, interval)
	natstest.CheckFor(t, 2*time.Second, 5*time.Millisecond, func() error {
		r, err := fleetRecordOf(t, s, "a1")
		if err != nil || r.State != fleet.StateLost {
			return fmt.Errorf("mcp_fleet a1: %v %v", r.State, err)
		}
		return nil
	})
	// It comes back: healthy at once, and re-resolves (it may have missed changes).
	a.pause(false)
	waitState(t, s.Fleet(), "a1", fleet.StateHealthy, 2*time.Second)
	natstest.CheckFor(t, 2*time.Second, time.Millisecond, func() error {
		if len(a.commands(agentproto.CmdReresolve)) == 0 {
			return errors.New("no re-resolve after return")
		}
		return nil
	})
}

// schedSlack is how late a message already in flight when the supervisor
// decided to stop sending may still land: a sweep's batch under -race on a
// shared 2-core machine where 50-100 ms stalls have been seen.
const schedSlack = 250 * time.Millisecond

func TestFleetZombieGetsReconnectThroughHeartbeatReply(t *testing.T) {
	const interval = wallInterval
	srv := natstest.RunServer(t)
	cfg := fleetTestConfig(t, srv, interval)
	s := startSupervisor(t, cfg)
	a := startFakeAgent(t, srv.URL(), "z1", interval)
	waitState(t, s.Fleet(), "z1", fleet.StateHealthy, 2*time.Second)
	natstest.CheckFor(t, 2*time.Second, time.Millisecond, func() error {
		if len(a.commands(agentproto.CmdProbe)) < 2 {
			return errors.New("no probes yet")
		}
		return nil
	})

	fault := time.Now()
	a.breakCmd() // heartbeats go on; the command subscription is dead
	st := waitState(t, s.Fleet(), "z1", fleet.StateZombie, 3*time.Second)
	zombieAt := time.Now()
	t.Logf("zombie: %s", st.Reason)
	waitState(t, s.Fleet(), "z1", fleet.StateHealthy, 3*time.Second)
	healthyAt := time.Now()

	rc := a.commands(agentproto.CmdReconnect)
	if len(rc) == 0 {
		t.Fatal("no reconnect received")
	}
	for _, c := range rc {
		if c.route != fleet.RouteReply {
			t.Errorf("reconnect %s came on the %s route, want the heartbeat reply", c.ID, c.route)
		}
	}
	detect, heal := zombieAt.Sub(fault), healthyAt.Sub(fault)
	t.Logf("zombie detected %s after the fault; fault to healthy %s", inIntervals(detect, interval), inIntervals(heal, interval))
	// The first unanswered probe goes out within one probe interval of the
	// fault; ZombieAfter-1 more follow, and the last must time out:
	// between (ZombieAfter-1)×ProbeInterval+ProbeTimeout and one probe
	// interval more. Half as much again is a regression. (A probe sent a
	// moment before the fault may also go unanswered: half an interval
	// earlier is not a wrong verdict.)
	f := cfg.Fleet
	worst := time.Duration(f.ZombieAfter)*f.ProbeInterval + f.ProbeTimeout
	earliest := worst - f.ProbeInterval - interval/2
	if detect < earliest || detect >= worst*3/2 {
		t.Errorf("zombie detected after %s, want within [%v, %v)", inIntervals(detect, interval), earliest, worst*3/2)
	}
	natstest.CheckFor(t, 2*time.Second, time.Millisecond, func() error {
		if p := s.Fleet().Pending("z1"); len(p) > 0 {
			return fmt.Errorf("still pending: %+v", p)
		}
		return nil
	})
}

func TestFleetCommandDeliveredAfterAgentReconnects(t *testing.T) {
	const interval = 20 * time.Millisecond
	srv := natstest.RunServer(t)
	s := startSupervisor(t, fleetTestConfig(t, srv, interval))
	proxy := natstest.NewProxy(t, strings.TrimPrefix(srv.URL(), "nats://"))
	a := startFakeAgent(t, proxy.URL(), "d1", interval)
	waitState(t, s.Fleet(), "d1", fleet.StateHealthy, 2*time.Second)

	proxy.Cut()
	waitState(t, s.Fleet(), "d1", fleet.StateLost, 2*time.Second)
	id, err := s.Fleet().Send("d1", agentproto.CmdReresolve, []string{"github"}, "operator asked")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(s.Fleet().Pending("d1"), func(c agentproto.Command) bool { return c.ID == id }) {
		t.Fatalf("command %s not pending", id)
	}
	proxy.Pass()
	natstest.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		for _, c := range a.commands(agentproto.CmdReresolve) {
			if c.ID == id {
				return nil
			}
		}
		return errors.New("command not delivered yet")
	})
	natstest.CheckFor(t, 2*time.Second, time.Millisecond, func() error {
		if p := s.Fleet().Pending("d1"); len(p) > 0 {
			return fmt.Errorf("still pending: %+v", p)
		}
		return nil
	})
	waitState(t, s.Fleet(), "d1", fleet.StateHealthy, time.Second)
}

func TestFleetCommandSurvivesSupervisorRestart(t *testing.T) {
	const interval = 20 * time.Millisecond
	srv := natstest.RunServer(t)
	cfg := fleetTestConfig(t, srv, interval)
	s1 := startSupervisor(t, cfg)
	proxy := natstest.NewProxy(t, strings.TrimPrefix(srv.URL(), "nats://"))
	a := startFakeAgent(t, proxy.URL(), "r1", interval)
	waitState(t, s1.Fleet(), "r1", fleet.StateHealthy, 2*time.Second)
	proxy.Cut()
	waitState(t, s1.Fleet(), "r1", fleet.StateLost, 2*time.Second)
	id, err := s1.Fleet().Send("r1", agentproto.CmdReconnect, nil, "operator asked")
	if err != nil {
		t.Fatal(err)
	}
	natstest.CheckFor(t, 2*time.Second, 5*time.Millisecond, func() error {
		r, err := fleetRecordOf(t, s1, "r1")
		if err != nil || !slices.ContainsFunc(r.PendingCommands, func(p fleet.PendingCommand) bool { return p.ID == id }) {
			return fmt.Errorf("mcp_fleet r1 lacks pending %s: %+v %v", id, r.PendingCommands, err)
		}
		return nil
	})
	s1.Close()

	s2 := startSupervisor(t, cfg)
	if !slices.ContainsFunc(s2.Fleet().Pending("r1"), func(c agentproto.Command) bool { return c.ID == id }) {
		t.Fatalf("restarted supervisor lost pending command %s: %+v", id, s2.Fleet().Pending("r1"))
	}
	proxy.Pass()
	natstest.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		for _, c := range a.commands(agentproto.CmdReconnect) {
			if c.ID == id {
				return nil
			}
		}
		return errors.New("command not delivered after the supervisor restart")
	})
	natstest.CheckFor(t, 2*time.Second, time.Millisecond, func() error {
		if slices.ContainsFunc(s2.Fleet().Pending("r1"), func(c agentproto.Command) bool { return c.ID == id }) {
			return errors.New("still pending")
		}
		return nil
	})
}

func TestFleetRestartedSupervisorWaitsOneDetectionWindow(t *testing.T) {
	const interval = 50 * time.Millisecond
	srv := natstest.RunServer(t)
	cfg := fleetTestConfig(t, srv, interval)
	s1 := startSupervisor(t, cfg)
	a := startFakeAgent(t, srv.URL(), "g1", interval)
	waitState(t, s1.Fleet(), "g1", fleet.StateHealthy, 2*time.Second)
	natstest.CheckFor(t, 2*time.Second, 5*time.Millisecond, func() error {
		_, err := fleetRecordOf(t, s1, "g1")
		return err
	})
	// Close first: a supervisor still running while the agent is silent
	// would rightly judge it lost (and persist that) if Close is slow.
	s1.Close()
	last := a.pause(true)
	// Let the agent be silent well past a lost window: a supervisor that
	// trusted the old last-heard time would declare it lost at once.
	natstest.CheckFor(t, 2*time.Second, 5*time.Millisecond, func() error {
		if time.Since(last) < 4*interval {
			return errors.New("silent for less than 4 intervals")
		}
		return nil
	})
	start := time.Now()
	s2 := startSupervisor(t, cfg)
	if st, ok := s2.Fleet().Agent("g1"); !ok || st.State == fleet.StateLost {
		t.Fatalf("after restart g1 is %+v (known %v), want its persisted live state", st, ok)
	}
	waitState(t, s2.Fleet(), "g1", fleet.StateLost, 2*time.Second)
	waited := time.Since(start)
	t.Logf("restarted supervisor declared the silent agent lost %v after starting (window %v)", waited, cfg.Fleet.LostWindow())
	if waited < cfg.Fleet.LostWindow() {
		t.Errorf("lost %v after restart, before one detection window %v", waited, cfg.Fleet.LostWindow())
	}
}

func TestFleetOwnLinkOutageBlamesNoAgent(t *testing.T) {
	const interval = 50 * time.Millisecond
	srv := natstest.RunServer(t)
	s := startSupervisor(t, fleetTestConfig(t, srv, interval))
	agents := []*fakeAgent{startFakeAgent(t, srv.URL(), "o1", interval), startFakeAgent(t, srv.URL(), "o2", interval)}
	for _, a := range agents {
		waitState(t, s.Fleet(), a.id, fleet.StateHealthy, 2*time.Second)
	}
	// The supervisor and the agents lose the broker together, for longer
	// than the lost window.
	srv.Shutdown()
	down := time.Now()
	natstest.CheckFor(t, 2*time.Second, 5*time.Millisecond, func() error {
		if time.Since(down) < 4*interval {
			return errors.New("outage not long enough yet")
		}
		return nil
	})
	srv.Start()
	natstest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if metricValue(s, "tether_nats_reconnects_total") < 1 {
			return errors.New("supervisor has not reconnected yet")
		}
		for _, a := range agents {
			if st, _ := s.Fleet().Agent(a.id); st.State != fleet.StateHealthy || time.Duration(st.SilentMS)*time.Millisecond > interval {
				return fmt.Errorf("%s: %v, silent %dms", a.id, st.State, st.SilentMS)
			}
		}
		return nil
	})
	if v := metricValue(s, "tether_fleet_transitions_total", "to", "lost"); v != 0 {
		t.Errorf("%v agents declared lost for the supervisor's own outage", v)
	}
	for _, a := range agents {
		if rr := a.commands(agentproto.CmdReresolve); len(rr) > 0 {
			t.Errorf("%s got recovery commands for the supervisor's own outage: %+v", a.id, rr)
		}
	}
}

func TestFleetFollowerTracksButNeverCommands(t *testing.T) {
	const interval = 20 * time.Millisecond
	srv := natstest.RunServer(t)
	cfg := fleetTestConfig(t, srv, interval)
	var leader atomic.Bool
	cfg.Fleet.IsLeader = leader.Load
	s := startSupervisor(t, cfg)
	a := startFakeAgent(t, srv.URL(), "f1", interval)
	waitState(t, s.Fleet(), "f1", fleet.StateHealthy, 2*time.Second)
	put(t, s, kvconfig.BucketConfigs, "global.github", `{"url":"https://g.example"}`)
	if _, err := s.Fleet().Send("f1", agentproto.CmdReconnect, nil, "x"); !errors.Is(err, fleet.ErrNotLeader) {
		t.Errorf("Send on a follower: %v", err)
	}
	a.pause(true)
	waitState(t, s.Fleet(), "f1", fleet.StateLost, 2*time.Second) // it still tracks
	a.pause(false)
	waitState(t, s.Fleet(), "f1", fleet.StateHealthy, 2*time.Second)
	if got := a.commands(""); len(got) > 0 {
		t.Errorf("a follower sent %d messages: %+v", len(got), got[0])
	}
	if _, err := fleetRecordOf(t, s, "f1"); err == nil {
		t.Error("a follower wrote mcp_fleet")
	}
	leader.Store(true) // won the lease
	natstest.CheckFor(t, 2*time.Second, time.Millisecond, func() error {
		if len(a.commands(agentproto.CmdProbe)) == 0 {
			return errors.New("no probe from the new leader")
		}
		if _, err := fleetRecordOf(t, s, "f1"); err != nil {
			return fmt.Errorf("no mcp_fleet record from the new leader: %w", err)
		}
		return nil
	})
}
