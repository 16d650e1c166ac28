package fleet_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/internal/natstest"
	"github.com/tether-dev/tether/supervisor"
	"github.com/tether-dev/tether/supervisor/fleet"
)

// rawHeartbeat publishes a hand-made heartbeat on agent's subject.
func rawHeartbeat(t testing.TB, nc *nats.Conn, subjectAgent string, body map[string]any) {
	t.Helper()
	data, _ := json.Marshal(body)
	if err := nc.PublishMsg(&nats.Msg{Subject: subj.Heartbeat(subjectAgent), Reply: agentproto.HeartbeatReply(subjectAgent), Data: data}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
}

// identityFixture is a supervisor with 20 ms timings, a raw connection
// for hand-made heartbeats and a discard counter.
type identityFixture struct {
	srv *natstest.Server
	s   *supervisor.Supervisor
	fl  *fleet.Fleet
	nc  *nats.Conn
	cfg supervisor.Config
}

const identityInterval = 20 * time.Millisecond

func newIdentityFixture(t *testing.T) *identityFixture {
	srv := natstest.RunServer(t)
	cfg := fleetTestConfig(t, srv, identityInterval)
	s := startSupervisor(t, cfg)
	return &identityFixture{srv: srv, s: s, fl: s.Fleet(), nc: srv.Connect(), cfg: cfg}
}

func (x *identityFixture) discards(reason string) float64 {
	return metricValue(x.s, "tether_heartbeats_discarded_total", "reason", reason)
}

func TestFleetSpoofedAgentFieldRejected(t *testing.T) {
	x := newIdentityFixture(t)
	startFakeAgent(t, x.srv.URL(), "sp1", identityInterval)
	waitState(t, x.fl, "sp1", fleet.StateHealthy, 2*time.Second)
	rawHeartbeat(t, x.nc, "sp1", map[string]any{"agent": "victim", "instance": "x", "seq": 1 << 40})
	natstest.CheckFor(t, time.Second, time.Millisecond, func() error {
		if st, _ := x.fl.Agent("sp1"); st.Spoofed != 1 || x.discards(fleet.DiscardSpoofed) != 1 {
			return fmt.Errorf("spoofed %d, discarded %v", st.Spoofed, x.discards(fleet.DiscardSpoofed))
		}
		return nil
	})
	if _, ok := x.fl.Agent("victim"); ok {
		t.Error("a spoofed heartbeat created the claimed agent")
	}
	if st, _ := x.fl.Agent("sp1"); st.State != fleet.StateHealthy || st.Seq >= 1<<40 {
		t.Errorf("spoofed heartbeat changed sp1: %+v", st)
	}
}

func TestFleetReplayedOldSeqDiscarded(t *testing.T) {
	x := newIdentityFixture(t)
	rp := startFakeAgent(t, x.srv.URL(), "rp1", identityInterval)
	natstest.CheckFor(t, 2*time.Second, time.Millisecond, func() error {
		if st, _ := x.fl.Agent("rp1"); st.Seq < 3 {
			return errors.New("rp1 has sent fewer than 3 heartbeats")
		}
		return nil
	})
	rawHeartbeat(t, x.nc, "rp1", map[string]any{"agent": "rp1", "instance": "rp1-i1", "seq": 1})
	natstest.CheckFor(t, time.Second, time.Millisecond, func() error {
		if x.discards(fleet.DiscardOldSeq) != 1 {
			return errors.New("old seq not discarded")
		}
		return nil
	})
	rp.pause(true)
	waitState(t, x.fl, "rp1", fleet.StateLost, 2*time.Second)
	seq := func() uint64 { st, _ := x.fl.Agent("rp1"); return st.Seq }()
	rawHeartbeat(t, x.nc, "rp1", map[string]any{"agent": "rp1", "instance": "rp1-i1", "seq": seq})
	natstest.CheckFor(t, time.Second, time.Millisecond, func() error {
		if x.discards(fleet.DiscardOldSeq) != 2 {
			return errors.New("replay into a lost agent not discarded")
		}
		return nil
	})
	if st, _ := x.fl.Agent("rp1"); st.State != fleet.StateLost || st.Seq != seq {
		t.Errorf("a replayed heartbeat revived rp1: %+v", st)
	}
}

func TestFleetDuplicateAgentIDFlagged(t *testing.T) {
	x := newIdentityFixture(t)
	startFakeAgent(t, x.srv.URL(), "dup1", identityInterval)
	startFakeAgentWith(t, x.srv.URL(), "dup1", identityInterval, func(a *fakeAgent) { a.instance = "dup1-other" })
	natstest.CheckFor(t, 2*time.Second, time.Millisecond, func() error {
		if st, _ := x.fl.Agent("dup1"); !st.Duplicate {
			return errors.New("duplicate not flagged")
		}
		return nil
	})
	st, _ := x.fl.Agent("dup1")
	if st.State != fleet.StateHealthy || st.Restarts != 0 {
		t.Errorf("duplicate id changed the verdict: state %v, restarts %d", st.State, st.Restarts)
	}
	if v := metricValue(x.s, "tether_fleet_duplicate_agents_total"); v != 1 {
		t.Errorf("duplicates metric %v", v)
	}
}

func TestFleetClockSkewChangesNoVerdict(t *testing.T) {
	const interval = wallInterval
	srv := natstest.RunServer(t)
	cfg := fleetTestConfig(t, srv, interval)
	x := &identityFixture{srv: srv, cfg: cfg}
	x.s = startSupervisor(t, cfg)
	x.fl = x.s.Fleet()
	plus := startFakeAgentWith(t, x.srv.URL(), "skew-plus", interval, func(a *fakeAgent) { a.skew = time.Hour })
	minus := startFakeAgentWith(t, x.srv.URL(), "skew-minus", interval, func(a *fakeAgent) { a.skew = -time.Hour })
	for _, a := range []*fakeAgent{plus, minus} {
		st := waitState(t, x.fl, a.id, fleet.StateHealthy, 2*time.Second)
		want := a.skew.Milliseconds()
		if !st.ClockSkewed || st.ClockSkewMS < want-5000 || st.ClockSkewMS > want+5000 {
			t.Errorf("%s: skewed %v skew %dms, want flagged, ~%dms", a.id, st.ClockSkewed, st.ClockSkewMS, want)
		}
	}
	lastPlus, lastMinus := plus.pause(true), minus.pause(true)
	waitState(t, x.fl, "skew-plus", fleet.StateLost, 2*time.Second)
	plusAt := time.Now()
	waitState(t, x.fl, "skew-minus", fleet.StateLost, 2*time.Second)
	minusAt := time.Now()
	lostAfter := time.Duration(cfg.Fleet.LostAfter) * interval
	checkWithin2x(t, "skewed agent +1h lost", plusAt.Sub(lastPlus), lostAfter, interval)
	checkWithin2x(t, "skewed agent -1h lost", minusAt.Sub(lastMinus), lostAfter, interval)
	t.Logf("skewed agents lost after %s and %s", inIntervals(plusAt.Sub(lastPlus), interval), inIntervals(minusAt.Sub(lastMinus), interval))
}

func TestFleetQuarantineAfterKRecoveries(t *testing.T) {
	const interval = 20 * time.Millisecond
	srv := natstest.RunServer(t)
	cfg := fleetTestConfig(t, srv, interval)
	cfg.Fleet.QuarantineAfter = 2
	cfg.Fleet.QuarantinePeriod = time.Second
	s := startSupervisor(t, cfg)
	fl := s.Fleet()
	a := startFakeAgent(t, srv.URL(), "q1", interval)
	waitState(t, fl, "q1", fleet.StateHealthy, 2*time.Second)

	for n := 2; n <= 4; n++ { // three restarts: more than K=2 within the period
		a.restart(n)
		natstest.CheckFor(t, time.Second, time.Millisecond, func() error {
			if st, _ := fl.Agent("q1"); st.Instance != fmt.Sprintf("q1-i%d", n) {
				return fmt.Errorf("instance %s", st.Instance)
			}
			return nil
		})
	}
	st := waitState(t, fl, "q1", fleet.StateQuarantined, time.Second)
	t.Logf("quarantined: %s", st.Reason)
	if metricValue(s, "tether_fleet_quarantines_total") != 1 {
		t.Errorf("quarantines metric %v", metricValue(s, "tether_fleet_quarantines_total"))
	}

	// Lost and back while quarantined: no recovery command is sent.
	last := a.pause(true)
	natstest.CheckFor(t, time.Second, time.Millisecond, func() error {
		if time.Since(last) < 4*interval {
			return errors.New("not silent long enough")
		}
		return nil
	})
	seq := st.Seq
	a.pause(false)
	natstest.CheckFor(t, time.Second, time.Millisecond, func() error {
		if st, _ := fl.Agent("q1"); st.Seq < seq+5 {
			return errors.New("not back yet")
		}
		return nil
	})
	if rr := a.commands(agentproto.CmdReresolve); len(rr) > 0 {
		t.Errorf("quarantined agent got recovery commands: %+v", rr)
	}
	if st, _ := fl.Agent("q1"); st.State != fleet.StateQuarantined {
		t.Errorf("state %v, want still quarantined", st.State)
	}
	// A whole period without needing recovery releases it.
	waitState(t, fl, "q1", fleet.StateHealthy, 3*time.Second)
}
