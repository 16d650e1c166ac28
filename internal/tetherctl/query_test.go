package tetherctl

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/internal/natstest"
)

func TestExplainAndResolve(t *testing.T) {
	h := newHarness(t)
	if _, err := h.sup.Buckets().Agents.Put(context.Background(), "a7", []byte(`{"role":"coder"}`)); err != nil {
		t.Fatal(err)
	}
	h.kvPut("global.github", `{"url":"https://global.example/mcp"}`)
	roleRev := h.kvPut("role.coder.github", `{"url":"https://coder.example/mcp","headers":{"Authorization":"Bearer s3cret"}}`)

	natstest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if r := h.run("resolve", "a7", "github"); !strings.Contains(r.stdout, "role:coder") {
			return fmt.Errorf("role not applied yet: %s", r)
		}
		return nil
	})
	r := h.must(ExitOK, "explain", "a7", "github")
	contains(t, "explain", r.stdout, "role coder (mcp_agents revision", "SCOPE", "RESULT", "agent.a7.github", "no",
		"role.coder.github", "WINNER", "global.github", "shadowed", "outcome: ok: agent a7 gets role.coder.github (role:coder)")
	r = h.must(ExitOK, "explain", "a7", "github", "--json")
	var x struct {
		WinnerKey string `json:"winner_key"`
		Scopes    []struct{ Scope string }
	}
	if err := json.Unmarshal([]byte(r.stdout), &x); err != nil || x.WinnerKey != "role.coder.github" || len(x.Scopes) != 3 {
		t.Errorf("explain --json: %v\n%s", err, r)
	}

	r = h.must(ExitOK, "resolve", "a7", "github")
	contains(t, "resolve", r.stdout, "role:coder", "role.coder.github", fmt.Sprint(roleRev), "coder.example", `"Authorization": "****"`)
	lacks(t, "resolve", r.stdout, "s3cret")

	// Not found and invalid winners have their own exit codes.
	r = h.must(ExitNotFound, "resolve", "a7", "nothing")
	contains(t, "resolve 404", r.stderr, "404 not_found", "no config for server")
	r = h.must(ExitNotFound, "explain", "b1", "nothing")
	contains(t, "explain 404", r.stdout, "skipped", "agent has no role", "outcome: not found")
	h.kvPut("agent.a7.github", `{"url":"https://a7.example/mcp","timout":"1s"}`)
	r = h.must(ExitInvalidConfig, "resolve", "a7", "github")
	contains(t, "resolve 422", r.stderr, "422 invalid_config", "agent.a7.github", "timout")
	r = h.must(ExitInvalidConfig, "explain", "a7", "github")
	contains(t, "explain 422", r.stdout, "agent.a7.github", "NO", "WINNER", "outcome: invalid_config")
}

func TestUnavailable(t *testing.T) {
	r := runCLI("", "--nats-url", "nats://127.0.0.1:1", "--timeout", "500ms", "get", "global", "github")
	if r.code != ExitUnavailable || !strings.Contains(r.stderr, "cannot connect to NATS at nats://127.0.0.1:1") {
		t.Errorf("no server: %s", r)
	}
	r = runCLI("", "--nats-url", "nats://op:pa55word@127.0.0.1:1", "--timeout", "500ms", "get", "global", "github")
	if r.code != ExitUnavailable || strings.Contains(r.stderr, "pa55word") {
		t.Errorf("password shown or wrong exit: %s", r)
	}
	// A server without a supervisor: no buckets, nobody answering requests.
	srv := natstest.RunServer(t)
	for _, args := range [][]string{{"get", "global", "github"}, {"resolve", "a7", "github"}, {"fleet"}} {
		r := runCLI("", append([]string{"--nats-url", srv.URL(), "--timeout", "2s"}, args...)...)
		if r.code != ExitUnavailable {
			t.Errorf("%q: want exit 6, got\n%s", args, r)
		}
	}
	r = runCLI("", "--nats-url", srv.URL(), "resolve", "a7", "github")
	contains(t, "no supervisor", r.stderr, "no supervisor answers mcp.v1.resolve.a7.github", "--prefix")
	r = runCLI("", "--nats-url", srv.URL(), "get", "global", "github")
	contains(t, "no bucket", r.stderr, "KV bucket mcp_configs does not exist", "start the supervisor once")
}

// fakeFleet answers <prefix>.v1.fleet.status from a fixed fleet, pages of
// two, in the contract's shape, recording the requests.
type fakeFleet struct {
	mu   sync.Mutex
	reqs []agentproto.FleetStatusRequest
}

func (f *fakeFleet) serve(t *testing.T, nc *nats.Conn, prefix string) {
	now := time.Now().UTC()
	agents := []map[string]any{
		{"agent": "a1", "state": "healthy", "role": "coder", "last_heard": now.Add(-2 * time.Second).Format(time.RFC3339Nano),
			"conn":    map[string]any{"state": "connected", "rtt_ms": 1.25},
			"configs": map[string]any{"github": map[string]any{"revision": 4, "applied": true, "current": 4}}, "future_field": 1},
		{"agent": "a2", "state": "zombie", "role": "coder", "reason": "3 probes unacknowledged", "silent_ms": 1500,
			"configs": map[string]any{"github": map[string]any{"revision": 3, "applied": false, "error": "boom", "current": 4}}},
		{"agent": "a3", "state": "lost"},
		{"agent": "b1", "state": "healthy", "role": "ops"},
		{"agent": "b2", "state": "healthy", "role": "ops"},
	}
	sub, err := nc.Subscribe(prefix+".v1.fleet.status", func(m *nats.Msg) {
		var req agentproto.FleetStatusRequest
		_ = json.Unmarshal(m.Data, &req)
		f.mu.Lock()
		f.reqs = append(f.reqs, req)
		f.mu.Unlock()
		var page []map[string]any
		next := ""
		for _, a := range agents {
			id := a["agent"].(string)
			if id <= req.After || (req.Agent != "" && id != req.Agent) {
				continue
			}
			if len(page) == 2 {
				next = page[1]["agent"].(string)
				break
			}
			page = append(page, a)
		}
		if page == nil {
			page = []map[string]any{}
		}
		b, _ := json.Marshal(map[string]any{"counts": map[string]int{"healthy": 3, "zombie": 1, "lost": 1}, "agents": page, "next": next,
			"invalid": []map[string]any{{"bucket": "mcp_configs", "key": "global.x", "revision": 9, "error": "kvconfig: bad"}}})
		_ = m.Respond(b)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil { // the server knows the interest before any request
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
}

func TestFleetFollowsPages(t *testing.T) {
	srv := natstest.RunServer(t)
	f := &fakeFleet{}
	f.serve(t, srv.Connect(), "fake")
	run := func(args ...string) result {
		return runCLI("", append([]string{"--nats-url", srv.URL(), "--prefix", "fake"}, args...)...)
	}
	r := run("fleet", "--role", "coder", "--state", "zombie", "--limit", "2")
	if r.code != ExitOK {
		t.Fatal(r)
	}
	contains(t, "fleet", r.stdout, "AGENT", "LAST HEARD", "CONFIGS (applied/current)",
		"a1", "healthy", "coder", "2s ago", "1.25ms", "github 4/4",
		"a2", "zombie", "1.5s ago", "github 3/4* NOT APPLIED (boom)", "3 probes unacknowledged",
		"b2", "shown: 5 agent(s) with role coder, state zombie; all with role coder: healthy 3, lost 1, zombie 1",
		"invalid entry: mcp_configs global.x revision 9: bad")
	lacks(t, "fleet --role", r.stdout, "fleet:")
	f.mu.Lock()
	reqs := f.reqs
	f.mu.Unlock()
	if len(reqs) != 3 || reqs[0].After != "" || reqs[1].After != "a2" || reqs[2].After != "b1" ||
		reqs[0].Role != "coder" || reqs[0].State != "zombie" || reqs[0].Limit != 2 {
		t.Errorf("requests: %+v", reqs)
	}
	r = run("fleet", "--json")
	var all struct {
		Counts map[string]int
		Agents []map[string]any
	}
	if err := json.Unmarshal([]byte(r.stdout), &all); err != nil || len(all.Agents) != 5 || all.Agents[0]["future_field"] == nil {
		t.Errorf("fleet --json: %v\n%s", err, r)
	}
	r = run("fleet", "--agent", "zz")
	if r.code != ExitNotFound || !strings.Contains(r.stderr, `no agent "zz"`) {
		t.Errorf("unknown agent: %s", r)
	}
}

// TestFleetSummaryNamesWhatItCounts: the summary line says what is shown
// (with the filters named) and labels the counts "fleet:" only when they
// are fleet-wide: fleet.status counts agents matching --agent and --role,
// and ignores --state.
func TestFleetSummaryNamesWhatItCounts(t *testing.T) {
	a := &app{}
	counts := map[string]int{"healthy": 3, "zombie": 1}
	for _, tc := range []struct {
		agent, role, state string
		want               string
	}{
		{"", "", "", "shown: 4 agent(s); fleet: healthy 3, zombie 1"},
		{"", "", "zombie", "shown: 4 agent(s) with state zombie; fleet: healthy 3, zombie 1"},
		{"", "coder", "", "shown: 4 agent(s) with role coder; all with role coder: healthy 3, zombie 1"},
		{"a1", "", "", "shown: 4 agent(s) with agent a1; all with agent a1: healthy 3, zombie 1"},
		{"a1", "coder", "healthy", "shown: 4 agent(s) with agent a1, role coder, state healthy; all with agent a1, role coder: healthy 3, zombie 1"},
	} {
		a.f.agent, a.f.role, a.f.state = tc.agent, tc.role, tc.state
		if got := a.summaryLine(4, counts); got != tc.want {
			t.Errorf("agent %q role %q state %q:\n got %s\nwant %s", tc.agent, tc.role, tc.state, got, tc.want)
		}
	}
	if got := a.summaryLine(0, nil); !strings.HasSuffix(got, ": none") {
		t.Errorf("no counts: %s", got)
	}
}
