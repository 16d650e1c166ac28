package fleet_test

import (
	"context"
	"encoding/json"
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

// One agent at every heartbeat bound (256 configs entries with long
// errors, a 128-byte instance) and one over them leave fleet.status and
// mcp_fleet working for the whole fleet; before, one oversized heartbeat
// made unfiltered fleet.status answer 503 for everyone.
func TestFleetStatusSurvivesAnOversizedAgent(t *testing.T) {
	const interval = 50 * time.Millisecond
	srv := natstest.RunServer(t)
	cfg := fleetTestConfig(t, srv, interval)
	s := startSupervisor(t, cfg)
	nc := srv.Connect()
	configs := make(map[string]agentproto.ConfigApplied, fleet.MaxConfigEntries)
	for i := range fleet.MaxConfigEntries {
		configs[fmt.Sprintf("server-%03d", i)] = agentproto.ConfigApplied{Revision: uint64(i + 1), Error: strings.Repeat("e", 180)} // 256 of them: just under the 64 KiB body bound
	}
	publish := func(id, instance string, seq uint64, configs map[string]agentproto.ConfigApplied) {
		hb := agentproto.Heartbeat{Agent: id, Instance: instance, Seq: seq, IntervalMS: interval.Milliseconds(), Configs: configs}
		data, _ := json.Marshal(hb)
		if err := nc.Publish(subj.Heartbeat(id), data); err != nil {
			t.Fatal(err)
		}
	}
	publish("big", strings.Repeat("i", fleet.MaxInstanceBytes), 1, configs)
	configs["one-too-many"] = agentproto.ConfigApplied{Revision: 1}
	publish("over", "over-1", 1, configs)
	for i := range 5 {
		publish(fmt.Sprintf("small-%d", i), "s-1", 1, nil)
	}
	natstest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		st := fleetStatus(t, s, agentproto.FleetStatusRequest{})
		if len(st.Agents) != 6 {
			return fmt.Errorf("%d agents in fleet.status, want big and 5 small (over discarded)", len(st.Agents))
		}
		for _, a := range st.Agents {
			if a.Agent == "big" && len(a.Configs) != fleet.MaxConfigEntries {
				return fmt.Errorf("big shows %d configs", len(a.Configs))
			}
		}
		return nil
	})
	natstest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		e, err := s.Buckets().Fleet.Get(context.Background(), "big")
		if err != nil {
			return err
		}
		if len(e.Value()) > kvconfig.MaxFleetRecordBytes {
			return fmt.Errorf("record %d bytes", len(e.Value()))
		}
		return nil
	})
	if n := metricValue(s, "tether_heartbeats_discarded_total", "reason", "out_of_bounds"); n < 1 {
		t.Fatalf("out_of_bounds discards %v", n)
	}
}

// A server added while this replica's leadership lapsed (a lease renewal
// slower than TTL/3: it stops commanding without a takeover) reaches the
// agents once it commands again. Before, the push was dropped and nothing
// re-checked servers agents did not already hold.
func TestServerAddedDuringALeaderGapReachesAgents(t *testing.T) {
	const interval = 50 * time.Millisecond
	srv := natstest.RunServer(t)
	cfg := fleetTestConfig(t, srv, interval)
	var leading atomic.Bool
	leading.Store(true)
	cfg.Fleet.IsLeader = leading.Load
	s := startSupervisor(t, cfg)
	fl := s.Fleet()
	if _, _, err := fl.TakeLead(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	rev, err := s.Buckets().Configs.Put(ctx, "global.github", []byte(`{"url":"https://g.example/mcp"}`))
	if err != nil {
		t.Fatal(err)
	}
	a := startFakeAgentWith(t, srv.URL(), "gap1", interval, func(a *fakeAgent) {
		a.configs = map[string]any{"github": map[string]any{"revision": rev, "applied": true}}
	})
	waitState(t, fl, "gap1", fleet.StateHealthy, 5*time.Second)

	leading.Store(false) // the lapse
	if _, err := s.Buckets().Configs.Put(ctx, "global.newtool", []byte(`{"url":"https://n.example/mcp"}`)); err != nil {
		t.Fatal(err)
	}
	natstest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if _, err := s.Index().Resolve("gap1", "newtool"); err != nil || fl.PushBacklog() != 0 {
			return fmt.Errorf("push not worked through yet (%v, backlog %d)", err, fl.PushBacklog())
		}
		return nil
	})
	time.Sleep(3 * cfg.Fleet.CheckInterval) // sweeps run while not commanding: nothing may be sent
	for _, c := range a.commands(agentproto.CmdReresolve) {
		if slices.Contains(c.Servers, "newtool") {
			t.Fatalf("newtool pushed while not commanding: %+v", c)
		}
	}
	leading.Store(true)
	natstest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		for _, c := range a.commands(agentproto.CmdReresolve) {
			if slices.Contains(c.Servers, "newtool") {
				return nil
			}
		}
		return fmt.Errorf("no reresolve of newtool after the gap: %+v", a.commands(agentproto.CmdReresolve))
	})
}

// A backlog of heartbeats waiting for the handler is not a dead
// subscription: the self-probe waits in the same queue, and a re-created
// subscription drains the old one. Before, two probe periods (25 ms at
// these timings) without the probe back re-created the subscription by
// unsubscribing the old one, which dropped every heartbeat still queued
// (seen as TestFleetStatusSurvivesAnOversizedAgent losing its agents in a
// loaded full run).
func TestSelfProbeWaitsOutAHeartbeatBacklog(t *testing.T) {
	const interval, n = 50 * time.Millisecond, 400
	srv := natstest.RunServer(t)
	s := startSupervisor(t, fleetTestConfig(t, srv, interval))
	nc := srv.Connect()
	configs := make(map[string]agentproto.ConfigApplied, fleet.MaxConfigEntries)
	for i := range fleet.MaxConfigEntries {
		configs[fmt.Sprintf("server-%03d", i)] = agentproto.ConfigApplied{Revision: uint64(i + 1), Error: strings.Repeat("e", 180)}
	}
	// n large heartbeats at once (~25 MB): decoding them takes the handler
	// far longer than two probe periods.
	for i := range n {
		id := fmt.Sprintf("big-%03d", i)
		data, _ := json.Marshal(agentproto.Heartbeat{Agent: id, Instance: "i1", Seq: 1, IntervalMS: interval.Milliseconds(), Configs: configs})
		if err := nc.Publish(subj.Heartbeat(id), data); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	natstest.CheckFor(t, 20*time.Second, 10*time.Millisecond, func() error {
		if got := len(s.Fleet().AgentIDs()); got != n {
			return fmt.Errorf("%d of %d agents tracked", got, n)
		}
		return nil
	})
	// Heartbeats still on their way when the probe is judged (in the
	// server's buffers, not yet queued in the client) can make it look
	// lost on a starved machine; a re-creation then drains the old
	// subscription, so it costs nothing: what counts is that none is lost.
	t.Logf("heartbeat subscription re-created %v times", metricValue(s, "tether_heartbeat_subscription_restarts_total"))
}
