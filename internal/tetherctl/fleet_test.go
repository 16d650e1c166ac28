package tetherctl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/internal/natstest"
	"github.com/tether-dev/tether/internal/suptest"
	"github.com/tether-dev/tether/supervisor/fleet"
)

// hbAgent is a minimal agent speaking the wire contract: it heartbeats,
// reports the config revision it runs and acknowledges commands.
type hbAgent struct {
	id   string
	nc   *nats.Conn
	subj agentproto.Subjects

	mu       sync.Mutex
	revision uint64
	probeAck string
	acks     []string
	got      []agentproto.Command
	servers  string // raw JSON of the heartbeat's servers field, if any

	stop     chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup
}

// halt stops heartbeating and waits for the loop to end.
func (a *hbAgent) halt() {
	a.stopOnce.Do(func() { close(a.stop) })
	a.wg.Wait()
}

func startHBAgent(t *testing.T, url, id string, revision uint64) *hbAgent {
	t.Helper()
	a := &hbAgent{id: id, revision: revision, stop: make(chan struct{})}
	a.nc = natstest.Connect(t, url, nats.CustomInboxPrefix(agentproto.InboxPrefix(id)))
	for _, subject := range []string{a.subj.Command(id), agentproto.HeartbeatReply(id)} {
		if _, err := a.nc.Subscribe(subject, a.handle); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	a.wg.Add(1)
	go a.loop()
	t.Cleanup(a.halt)
	return a
}

func (a *hbAgent) handle(m *nats.Msg) {
	var c agentproto.Command
	if json.Unmarshal(m.Data, &c) != nil {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.got = append(a.got, c)
	if c.Type == agentproto.CmdProbe {
		a.probeAck = c.Nonce
	} else {
		a.acks = append(a.acks, c.ID)
	}
}

func (a *hbAgent) loop() {
	defer a.wg.Done()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for seq := uint64(1); ; seq++ {
		a.mu.Lock()
		hb := agentproto.Heartbeat{Agent: a.id, Instance: a.id + "-1", Seq: seq, SentAt: time.Now().UTC().Format(time.RFC3339Nano),
			IntervalMS: 500, ProbeAck: a.probeAck, Acks: a.acks,
			Conn:    agentproto.ConnStatus{State: agentproto.ConnConnected, RTTMS: 0.5},
			Configs: map[string]agentproto.ConfigApplied{"github": {Revision: a.revision, Applied: true}}}
		a.acks = nil
		servers := a.servers
		a.mu.Unlock()
		data, _ := json.Marshal(hb)
		if servers != "" {
			data = append(append(data[:len(data)-1], `,"servers":`+servers...), '}')
		}
		_ = a.nc.PublishMsg(&nats.Msg{Subject: a.subj.Heartbeat(a.id), Reply: agentproto.HeartbeatReply(a.id), Data: data})
		select {
		case <-a.stop:
			return
		case <-tick.C:
		}
	}
}

// reresolved reports whether a reresolve naming server (or every server) arrived.
func (a *hbAgent) reresolved(server string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, c := range a.got {
		if c.Type == agentproto.CmdReresolve && (len(c.Servers) == 0 || slices.Contains(c.Servers, server)) {
			return true
		}
	}
	return false
}

// reresolvedOf reports whether a reresolve naming exactly server arrived
// (the supervisor's per-server recovery, not a re-resolve of everything).
func (a *hbAgent) reresolvedOf(server string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, c := range a.got {
		if c.Type == agentproto.CmdReresolve && slices.Equal(c.Servers, []string{server}) {
			return true
		}
	}
	return false
}

func (a *hbAgent) commands() []agentproto.Command {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.got)
}

// setEcho makes the agent report the echo MCP server in state.
func (a *hbAgent) setEcho(state string) {
	failure := ""
	if state == "failing" {
		failure = `,"last_error_class":"transient","last_failure":"refused"`
	}
	a.mu.Lock()
	a.servers = `{"echo":{"ok":1,"retried":0,"failed":1,"outcome_unknown":0,"state":"` + state + `"` + failure + `,"restarts":0}}`
	a.mu.Unlock()
}

func (a *hbAgent) setRevision(rev uint64) {
	a.mu.Lock()
	a.revision = rev
	a.mu.Unlock()
}

// TestRollbackPushedToAgentAndFleetShowsIt runs against the real
// supervisor: an agent running revision r2 is told to re-resolve after a
// rollback, and fleet shows applied vs current revisions before and after.
func TestRollbackPushedToAgentAndFleetShowsIt(t *testing.T) {
	h := newHarness(t)
	r1 := h.putRev("global", "github", writeFile(t, "v1.json", `{"url":"https://one.example/mcp"}`))
	r2 := h.putRev("global", "github", writeFile(t, "v2.json", `{"url":"https://two.example/mcp"}`))
	suptest.Register(t, h.sup, "dev", "a7")
	a := startHBAgent(t, h.srv.URL(), "a7", r2)
	h.waitFleet("a7", "healthy", fmt.Sprintf("github %d/%d", r2, r2))

	h.must(ExitOK, "rollback", "global", "github", strconv.FormatUint(r1, 10))
	r3 := h.revision("global.github")
	natstest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if !a.reresolved("github") {
			return errors.New("agent a7 got no reresolve after the rollback")
		}
		return nil
	})
	h.waitFleet("a7", "healthy", fmt.Sprintf("github %d/%d*", r2, r3))
	a.setRevision(r3)
	h.waitFleet("a7", "healthy", fmt.Sprintf("github %d/%d", r3, r3))

	r := h.must(ExitOK, "fleet", "--json", "--state", "healthy")
	var st struct {
		Counts map[string]int
		Agents []struct{ Agent, State string }
	}
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil || len(st.Agents) != 1 || st.Counts["healthy"] != 1 {
		t.Errorf("fleet --json: %v\n%s", err, r)
	}
}

// waitFleet polls tetherctl fleet until agent's row shows state and cell.
func (h *harness) waitFleet(agent, state, cell string) {
	h.t.Helper()
	natstest.CheckFor(h.t, 5*time.Second, 10*time.Millisecond, func() error {
		r := h.run("fleet", "--agent", agent)
		for _, want := range []string{agent, state, cell, "ago", "500µs"} {
			if !strings.Contains(r.stdout, want) {
				return fmt.Errorf("fleet row lacks %q:\n%s", want, r)
			}
		}
		return nil
	})
}

// agent forget drops a lost agent from every view at once (mcp_fleet and
// the supervisor's memory) and refuses a live one.
func TestAgentForget(t *testing.T) {
	srv := natstest.RunServer(t)
	cfg := suptest.Config(t, srv.URL())
	suptest.FastFleet(&cfg)
	// hbAgent announces 500 ms beats: probe slower than that, so that the
	// halted agent is judged lost, not a zombie first.
	cfg.Fleet.ProbeInterval, cfg.Fleet.ProbeTimeout = 2*time.Second, 2*time.Second
	sup := suptest.Start(t, cfg)
	suptest.Register(t, sup, "dev", "f-live", "f-dead")
	startHBAgent(t, srv.URL(), "f-live", 1)
	dead := startHBAgent(t, srv.URL(), "f-dead", 1)
	h := &harness{t: t, srv: srv, sup: sup}
	h.waitFleet("f-dead", "healthy", "")
	dead.halt()
	natstest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if st, _ := sup.Fleet().Agent("f-dead"); st.State != fleet.StateLost {
			return fmt.Errorf("f-dead is %v", st.State)
		}
		return nil
	})
	h.waitFleet("f-live", "healthy", "")

	r := h.must(ExitConflict, "agent", "forget", "f-live")
	if !strings.Contains(r.stderr, "only lost or gone agents") {
		t.Errorf("forget of a live agent: %s", r)
	}
	if _, ok := sup.Fleet().Agent("f-live"); !ok {
		t.Fatal("the live agent was forgotten")
	}
	h.must(ExitOK, "agent", "forget", "f-dead")
	natstest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if _, ok := sup.Fleet().Agent("f-dead"); ok {
			return errors.New("the supervisor still tracks f-dead")
		}
		return nil
	})
	if _, err := sup.Buckets().Fleet.Get(context.Background(), "f-dead"); err == nil {
		t.Error("f-dead's mcp_fleet record is still there")
	}
	h.must(ExitNotFound, "agent", "forget", "f-dead")
}

// A fleet.status request the supervisor refuses (here a relay adds a
// typo'd key to what tetherctl sends, as a mismatched client would) is
// shown with the supervisor's whole message and exits 2, never as an
// empty or whole-fleet table.
func TestFleetShowsRefusedFilter(t *testing.T) {
	h := newHarness(t)
	relay := h.srv.Connect()
	sub, err := relay.Subscribe("relay.v1.fleet.status", func(m *nats.Msg) {
		var body map[string]any
		_ = json.Unmarshal(m.Data, &body)
		if body == nil {
			body = map[string]any{}
		}
		body["stat"] = "zombie"
		data, _ := json.Marshal(body)
		reply, err := relay.Request(agentproto.Subjects{}.FleetStatus(), data, 2*time.Second)
		if err != nil {
			return
		}
		reply.Subject = m.Reply
		_ = relay.PublishMsg(reply)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := relay.Flush(); err != nil {
		t.Fatal(err)
	}
	r := runCLI("", "--nats-url", h.srv.URL(), "--prefix", "relay", "fleet")
	want := `tetherctl: supervisor answered 400 bad_request: fleet.status unknown key "stat" (did you mean "state"?); the accepted keys are agent, state, role, after, limit`
	if r.code != ExitUsage || !strings.Contains(r.stderr, want) || r.stdout != "" {
		t.Errorf("refused filter: want exit 2 and %q on stderr, got\n%s", want, r)
	}
}

// tetherctl fleet and explain show what the supervisor warns of: a role
// that no config names (issue 12).
func TestFleetAndExplainShowWarnings(t *testing.T) {
	h := newHarness(t)
	h.putRev("global", "github", writeFile(t, "g.json", `{"url":"https://g.example/mcp"}`))
	suptest.Register(t, h.sup, "coderz", "w-1")
	startHBAgent(t, h.srv.URL(), "w-1", 1)
	h.waitFleet("w-1", "healthy", "")

	r := h.must(ExitOK, "fleet")
	contains(t, "fleet", r.stdout, "coderz (no config names it)",
		`WARNING: role "coderz" is named by no config in mcp_configs: agent w-1 gets global configs only; check the role in mcp_agents`)
	r = h.must(ExitOK, "fleet", "--json")
	var all struct {
		UnconfiguredRoles []struct {
			Role   string
			Agents int
		} `json:"unconfigured_roles"`
		Agents []struct{ Warnings []string }
	}
	if err := json.Unmarshal([]byte(r.stdout), &all); err != nil || len(all.UnconfiguredRoles) != 1 || all.UnconfiguredRoles[0].Role != "coderz" ||
		len(all.Agents) != 1 || len(all.Agents[0].Warnings) != 1 {
		t.Errorf("fleet --json: %v\n%s", err, r)
	}
	r = h.must(ExitOK, "explain", "w-1", "github")
	contains(t, "explain", r.stdout, "outcome: ok: agent w-1 gets global.github (global)",
		`WARNING: role "coderz" is named by no config in mcp_configs: agent w-1 gets global configs only; check the role in mcp_agents`)
	r = h.must(ExitOK, "explain", "nobody", "github")
	contains(t, "explain", r.stdout, `WARNING: agent "nobody" has no entry in mcp_agents`, "WARNING: the supervisor does not track agent nobody")
}

// agent release ends a quarantine at once (on every replica; the leader
// answers); an agent that is not quarantined has nothing to release.
func TestAgentRelease(t *testing.T) {
	srv := natstest.RunServer(t)
	cfg := suptest.Config(t, srv.URL())
	suptest.FastFleet(&cfg)
	cfg.Fleet.QuarantineAfter = 1
	sup := suptest.Start(t, cfg)
	suptest.Register(t, sup, "dev", "q1")
	h := &harness{t: t, srv: srv, sup: sup}
	nc := srv.Connect()
	beat := func(instance string, seq int) {
		t.Helper()
		body := fmt.Sprintf(`{"agent":"q1","instance":%q,"seq":%d,"interval_ms":50}`, instance, seq)
		if err := nc.Publish(agentproto.Subjects{}.Heartbeat("q1"), []byte(body)); err != nil {
			t.Fatal(err)
		}
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	// Three processes under one id in a row: two recoveries, past
	// QuarantineAfter 1.
	for i := 1; i <= 3; i++ {
		beat(fmt.Sprintf("q1-i%d", i), 1)
		natstest.CheckFor(t, 5*time.Second, 2*time.Millisecond, func() error {
			if st, _ := sup.Fleet().Agent("q1"); st.Instance != fmt.Sprintf("q1-i%d", i) {
				return fmt.Errorf("instance %q", st.Instance)
			}
			return nil
		})
	}
	if st, _ := sup.Fleet().Agent("q1"); st.State != fleet.StateQuarantined {
		t.Fatalf("q1 is %v, want quarantined", st.State)
	}
	r := h.must(ExitOK, "agent", "release", "q1")
	if !strings.Contains(r.stdout, "quarantine released") {
		t.Fatalf("release: %s", r)
	}
	beat("q1-i3", 2)
	natstest.CheckFor(t, 5*time.Second, 2*time.Millisecond, func() error {
		if st, _ := sup.Fleet().Agent("q1"); st.State != fleet.StateHealthy {
			return fmt.Errorf("q1 is %v after the release", st.State)
		}
		return nil
	})
	if r := h.must(ExitOK, "agent", "release", "q1"); !strings.Contains(r.stdout, "not quarantined") {
		t.Fatalf("second release: %s", r)
	}
	h.must(ExitNotFound, "agent", "release", "nobody")
}

// TestFleetShowsMCPServerHealth: tetherctl fleet says which MCP server is
// down for how many agents, clears it when they succeed again, and warns
// about the one agent failing a server the others reach.
func TestFleetShowsMCPServerHealth(t *testing.T) {
	h := newHarness(t)
	suptest.Register(t, h.sup, "dev", "s1", "s2")
	a1, a2 := startHBAgent(t, h.srv.URL(), "s1", 1), startHBAgent(t, h.srv.URL(), "s2", 1)
	a1.setEcho("ok")
	a2.setEcho("ok")
	h.waitOutput("MCP server echo ok (0/2 agents failing)")
	a1.setEcho("failing")
	a2.setEcho("failing")
	h.waitOutput("MCP server echo down for 2/2 agents since ", ", last failure refused; its agents are not judged or recovered for it")
	r := h.must(ExitOK, "fleet", "--json")
	var st struct {
		Servers map[string]struct {
			State       string `json:"state"`
			Failing     int    `json:"failing"`
			Agents      int    `json:"agents"`
			LastFailure string `json:"last_failure"`
		} `json:"servers"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil || st.Servers["echo"].State != "down" || st.Servers["echo"].Agents != 2 {
		t.Fatalf("fleet --json servers: %v %+v\n%s", err, st, r.stdout)
	}
	if a1.reresolvedOf("echo") || a2.reresolvedOf("echo") {
		t.Fatalf("an agent of a down server was sent a reresolve for it: %+v %+v", a1.commands(), a2.commands())
	}
	a1.setEcho("ok")
	h.waitOutput("MCP server echo ok (1/2 agents failing)",
		"WARNING: agent s2 fails calls to MCP server echo (refused) while other agents reach it; it was sent a reresolve of echo")
	natstest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if !a2.reresolvedOf("echo") {
			return errors.New("s2 got no reresolve of echo")
		}
		return nil
	})
	if a1.reresolvedOf("echo") {
		t.Fatal("s1, which reaches echo, was sent a reresolve of it")
	}
	a2.setEcho("ok")
	h.waitOutput("MCP server echo ok (0/2 agents failing)")
}

// waitOutput polls tetherctl fleet until its output contains every want.
func (h *harness) waitOutput(want ...string) {
	h.t.Helper()
	natstest.CheckFor(h.t, 10*time.Second, 20*time.Millisecond, func() error {
		r := h.run("fleet")
		for _, w := range want {
			if !strings.Contains(r.stdout, w) {
				return fmt.Errorf("fleet output lacks %q:\n%s", w, r)
			}
		}
		return nil
	})
}

func TestReasonCellShowsBacklog(t *testing.T) {
	for raw, want := range map[string]string{
		`{"reason":"queue zombie: TASKS_a7/a7 has 20 pending","backlog":21}`: "queue zombie: TASKS_a7/a7 has 20 pending; backlog 21 tasks",
		`{"backlog":3}`:                    "backlog 3 tasks",
		`{"reason":"no heartbeat for 1s"}`: "no heartbeat for 1s",
		`{"reason":"r","backlog":0}`:       "r",
	} {
		if got := reasonCell(decodeObject([]byte(raw))); got != want {
			t.Errorf("%s: %q, want %q", raw, got, want)
		}
	}
}
