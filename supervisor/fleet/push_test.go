package fleet_test

import (
	"fmt"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/internal/natstest"
	"github.com/tether-dev/tether/kvconfig"
	"github.com/tether-dev/tether/supervisor"
	"github.com/tether-dev/tether/supervisor/fleet"
)

// pushModel is the test's own picture of roles and overrides: agent i has
// role r<i%4> (none when i%10 == 9) and its own agent.<id>.X when i%50 == 0;
// five registry-only "ghost" agents of role r0 never heartbeat.
type pushModel struct {
	role     map[string]string
	override map[string]bool
	roleHasX map[string]bool
	agents   []string // tracked and registry-only
}

func newPushModel(n int) *pushModel {
	m := &pushModel{role: map[string]string{}, override: map[string]bool{}, roleHasX: map[string]bool{"r1": true}}
	for i := 0; i < n; i++ {
		id := simID(i)
		m.agents = append(m.agents, id)
		if i%10 != 9 {
			m.role[id] = "r" + strconv.Itoa(i%4)
		}
		m.override[id] = i%50 == 0
	}
	for i := 0; i < 5; i++ {
		id := "ghost-" + strconv.Itoa(i)
		m.agents, m.role[id] = append(m.agents, id), "r0"
	}
	return m
}

// global is who a change to global.X affects.
func (m *pushModel) global() map[string]bool {
	out := map[string]bool{}
	for _, id := range m.agents {
		if !m.override[id] && !m.roleHasX[m.role[id]] {
			out[id] = true
		}
	}
	return out
}

// ofRole is who a change to role.<r>.X affects.
func (m *pushModel) ofRole(r string) map[string]bool {
	out := map[string]bool{}
	for _, id := range m.agents {
		if m.role[id] == r && !m.override[id] {
			out[id] = true
		}
	}
	return out
}

func (m *pushModel) ghost(id string) bool { return len(id) > 6 && id[:6] == "ghost-" }

// load writes the model's registry, overrides and role.r1.X, and waits
// until the supervisor's index has them.
func (m *pushModel) load(t *testing.T, s *supervisor.Supervisor, js jetstream.JetStream) {
	for _, id := range m.agents {
		if r := m.role[id]; r != "" {
			mustPublishAsync(t, js, "$KV."+kvconfig.BucketAgents+"."+id, `{"role":"`+r+`"}`)
		}
		if m.override[id] {
			mustPublishAsync(t, js, "$KV."+kvconfig.BucketConfigs+".agent."+id+".X", `{"url":"https://own.example"}`)
		}
	}
	waitAsync(t, js)
	natstest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		for _, id := range m.agents {
			if r, err := s.Index().Role(id); r != m.role[id] {
				return fmt.Errorf("index: %s has role %q (%v), want %q", id, r, err, m.role[id])
			}
		}
		return nil
	})
	rev := put(t, s, kvconfig.BucketConfigs, "role.r1.X", `{"url":"https://r1.example"}`)
	waitRev(t, s, simID(1), "X", rev)
	waitPushed(t, s)
}

// waitPushed waits until every KV change seen so far has been pushed.
func waitPushed(t testing.TB, s *supervisor.Supervisor) {
	t.Helper()
	natstest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if n := s.Fleet().PushBacklog(); n > 0 {
			return fmt.Errorf("%d changes not pushed yet", n)
		}
		return nil
	})
}

// pushCheck runs one change and asserts who got what.
type pushCheck struct {
	t        *testing.T
	f        *simFleet
	m        *pushModel
	interval time.Duration
}

// step applies do and asserts that exactly want got reresolve for servers
// (and nothing else reached anyone else); it logs delivery and, for one
// server, put-to-applied latency.
func (c *pushCheck) step(name string, servers []string, want map[string]bool, do func() uint64) {
	t := c.t
	t.Helper()
	mark := c.f.mark()
	start := time.Now()
	rev := do()
	got := c.reached(name, mark, start, want)
	cmds, _ := c.f.since(mark)
	for _, cmd := range cmds {
		if !want[cmd.agent] {
			t.Errorf("%s: unaffected agent %s got %s %v", name, cmd.agent, cmd.Type, cmd.Servers)
		} else if cmd.Type != agentproto.CmdReresolve || !slices.Equal(cmd.Servers, servers) {
			t.Errorf("%s: %s got %s %v, want reresolve %v", name, cmd.agent, cmd.Type, cmd.Servers, servers)
		}
	}
	var deliver []time.Duration
	for _, at := range got {
		deliver = append(deliver, at.Sub(start))
	}
	p50, p99, top := percentiles(deliver)
	msg := fmt.Sprintf("%s: %d agents reached exactly; delivery p50 %v p99 %v max %v", name, len(want), p50, p99, top)
	if len(servers) == 1 {
		a50, a99, amax := percentiles(c.applied(name, servers[0], rev, start, want))
		msg += fmt.Sprintf("; put to applied p50 %v p99 %v last %v", a50, a99, amax)
	}
	t.Log(msg)
}

// reached waits until every wanted agent got a message, and then for three
// more intervals (re-sends and stragglers would show up), returning when
// each agent first got one.
func (c *pushCheck) reached(name string, mark int, start time.Time, want map[string]bool) map[string]time.Time {
	got := map[string]time.Time{}
	natstest.CheckFor(c.t, 5*time.Second, 5*time.Millisecond, func() error {
		cmds, _ := c.f.since(mark)
		for _, cmd := range cmds {
			if _, ok := got[cmd.agent]; !ok {
				got[cmd.agent] = cmd.at
			}
		}
		missing := 0
		for id := range want {
			if _, ok := got[id]; !ok {
				missing++
			}
		}
		if missing > 0 || time.Since(start) < 3*c.interval {
			return fmt.Errorf("%s: %d of %d affected agents not reached", name, missing, len(want))
		}
		return nil
	})
	return got
}

// applied waits until every wanted simulated agent runs revision rev of
// server and returns the put-to-applied latencies.
func (c *pushCheck) applied(name, server string, rev uint64, start time.Time, want map[string]bool) []time.Duration {
	var applied map[string]time.Time
	natstest.CheckFor(c.t, 5*time.Second, 5*time.Millisecond, func() error {
		applied = c.f.appliedAt(server, rev)
		for id := range want {
			if _, ok := applied[id]; !ok && !c.m.ghost(id) {
				return fmt.Errorf("%s: %s has not applied revision %d", name, id, rev)
			}
		}
		return nil
	})
	var ds []time.Duration
	for id := range want {
		if at, ok := applied[id]; ok {
			ds = append(ds, at.Sub(start))
		}
	}
	return ds
}

func TestFleetConfigPushReachesExactlyTheAffected(t *testing.T) {
	const n, interval = 1000, scaleInterval
	srv := natstest.RunServer(t)
	cfg := fleetTestConfig(t, srv, interval)
	cfg.Fleet.ProbeInterval = 1000 * time.Hour // (almost surely) no probes: every message seen is a push
	// Loading 900 registry entries under -race can look like a stalled KV
	// watcher at the 50 ms test check interval; kvconfig's restart then
	// leaks the old watcher's delivery goroutine (reported upstream).
	cfg.WatchCheckInterval = time.Second
	s := startSupervisor(t, cfg)
	js, _ := jetstream.New(srv.Connect())
	m := newPushModel(n)
	m.load(t, s, js)
	f := startSimFleet(t, srv.URL(), n, interval, true)
	waitAllState(t, s.Fleet(), f, fleet.StateHealthy, 10*time.Second)
	c := &pushCheck{t: t, f: f, m: m, interval: interval}

	c.step("put global.X", []string{"X"}, m.global(), func() uint64 {
		return put(t, s, kvconfig.BucketConfigs, "global.X", `{"url":"https://g1.example"}`)
	})
	c.step("invalid put global.X", nil, map[string]bool{}, func() uint64 {
		return put(t, s, kvconfig.BucketConfigs, "global.X", `{"url":"https://g2.example","timout":"3s"}`)
	})
	page := fleetStatus(t, s, agentproto.FleetStatusRequest{Limit: 1})
	if len(page.Invalid) != 1 || page.Invalid[0].Key != "global.X" || page.Invalid[0].Revision == 0 {
		t.Errorf("status does not show the invalid entry: %+v", page.Invalid)
	}
	if v := metricValue(s, "tether_config_push_skipped_total", "reason", "invalid"); v != 1 {
		t.Errorf("push skipped metric %v", v)
	}
	c.step("put role.r2.X", []string{"X"}, m.ofRole("r2"), func() uint64 {
		return put(t, s, kvconfig.BucketConfigs, "role.r2.X", `{"url":"https://r2.example"}`)
	})
	a := simID(7)
	c.step("put agent."+a+".X", []string{"X"}, map[string]bool{a: true}, func() uint64 {
		return put(t, s, kvconfig.BucketConfigs, "agent."+a+".X", `{"url":"https://a7.example"}`)
	})
	b := simID(4)
	c.step("reassign "+b+" r0 -> r1", nil, map[string]bool{b: true}, func() uint64 {
		return put(t, s, kvconfig.BucketAgents, b, `{"role":"r1"}`)
	})
}

func mustPublishAsync(t testing.TB, js jetstream.JetStream, subject, data string) {
	t.Helper()
	if _, err := js.PublishAsync(subject, []byte(data)); err != nil {
		t.Fatal(err)
	}
}

func waitAsync(t testing.TB, js jetstream.JetStream) {
	t.Helper()
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(10 * time.Second):
		t.Fatal("async publishes not acknowledged")
	}
}
