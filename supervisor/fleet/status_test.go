package fleet_test

import (
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/internal/natstest"
	"github.com/tether-dev/tether/kvconfig"
	"github.com/tether-dev/tether/supervisor"
	"github.com/tether-dev/tether/supervisor/fleet"
)

func TestFleetStatusPagesFiltersAndPayloadLimit(t *testing.T) {
	const n, maxPayload = 150, 16 << 10
	srv := natstest.RunServer(t, natstest.WithOptions(func(o *server.Options) { o.MaxPayload = maxPayload }))
	s := startSupervisor(t, fleetTestConfig(t, srv, 5*time.Second))
	rev := put(t, s, kvconfig.BucketConfigs, "global.github", `{"url":"https://g.example"}`)
	nc := srv.Connect()
	var ids []string
	for i := n - 1; i >= 0; i-- {
		id := fmt.Sprintf("st-%03d", i)
		ids = append(ids, id)
		if i < 10 {
			put(t, s, kvconfig.BucketAgents, id, `{"role":"coder"}`)
		}
		rawHeartbeat(t, nc, id, map[string]any{"agent": id, "instance": id + "-1", "seq": 1, "interval_ms": 5000,
			"conn":    map[string]any{"state": "connected", "reconnects": 1, "rtt_ms": 0.5},
			"configs": map[string]any{"github": map[string]any{"revision": rev - 1, "applied": true}}})
	}
	slices.Sort(ids)
	rawHeartbeat(t, nc, "st-000", map[string]any{"agent": "st-000", "instance": "st-000-1", "seq": 2, "goodbye": true})
	natstest.CheckFor(t, 2*time.Second, time.Millisecond, func() error {
		if c := s.Fleet().Counts(); c[fleet.StateHealthy] != n-1 || c[fleet.StateGone] != 1 {
			return fmt.Errorf("counts %v", c)
		}
		return nil
	})

	if got, pages := pageAll(t, nc, n, maxPayload); !slices.Equal(got, ids) || pages < 2 {
		t.Fatalf("paged %d agents in %d pages; want all %d sorted over several pages", len(got), pages, n)
	}
	pageByLimit(t, s, n, 7)

	if p := fleetStatus(t, s, agentproto.FleetStatusRequest{State: "gone"}); len(p.Agents) != 1 || p.Agents[0].Agent != "st-000" || p.Total != n {
		t.Errorf("state filter: %+v", p)
	}
	if p := fleetStatus(t, s, agentproto.FleetStatusRequest{Role: "coder"}); len(p.Agents) != 10 || p.Total != 10 || p.Agents[3].Role != "coder" {
		t.Errorf("role filter: %d agents, total %d", len(p.Agents), p.Total)
	}
	p := fleetStatus(t, s, agentproto.FleetStatusRequest{Agent: "st-042"})
	if len(p.Agents) != 1 {
		t.Fatalf("agent filter: %+v", p)
	}
	a := p.Agents[0]
	if a.State != fleet.StateHealthy || a.Conn.Reconnects != 1 || a.LastHeard.IsZero() || a.Configs["github"].Revision != rev-1 || a.Configs["github"].Current != rev {
		t.Errorf("agent st-042: %+v", a)
	}

	for _, tc := range []struct {
		body string
		code string
	}{
		{`{"agent":"nobody"}`, "404"},
		{`{"state":"sleepy"}`, "400"},
		{`{"agent":"a.b"}`, "400"},
		{`{"limit":-1}`, "400"},
		{`not json`, "400"},
		{`{"stat":"zombie"}`, "400"},
	} {
		if _, e := natstest.Request(t, nc, subj.FleetStatus(), []byte(tc.body)); e == nil || e.Code != tc.code {
			t.Errorf("%s: got %+v, want %s", tc.body, e, tc.code)
		}
	}
	if _, e := natstest.Request(t, nc, subj.FleetStatus(), nil); e != nil { // nats req mcp.v1.fleet.status ''
		t.Errorf("empty request: %+v", e)
	}
}

// A typo'd filter is refused with a 400 in the contract's error shape,
// naming the unknown key and the accepted ones, instead of answering for
// the whole fleet (issue 12: {"stat":"zombie"} listed every agent).
func TestFleetStatusRejectsUnknownFilter(t *testing.T) {
	srv := natstest.RunServer(t)
	s := startSupervisor(t, fleetTestConfig(t, srv, 5*time.Second))
	nc := srv.Connect()
	for _, id := range []string{"ok-1", "ok-2"} {
		rawHeartbeat(t, nc, id, map[string]any{"agent": id, "instance": id + "-1", "seq": 1, "interval_ms": 5000,
			"conn": map[string]any{"state": "connected"}})
	}
	natstest.CheckFor(t, 2*time.Second, time.Millisecond, func() error {
		if c := s.Fleet().Counts(); c[fleet.StateHealthy] != 2 {
			return fmt.Errorf("counts %v", c)
		}
		return nil
	})
	if p := fleetStatus(t, s, agentproto.FleetStatusRequest{State: "zombie"}); len(p.Agents) != 0 || p.Total != 2 {
		t.Fatalf("state zombie: %d agents, total %d", len(p.Agents), p.Total)
	}
	for _, tc := range []struct{ body, want string }{
		{`{"stat":"zombie"}`, `fleet: fleet.status unknown key "stat" (did you mean "state"?); the accepted keys are agent, state, role, after, limit (all optional; names are case-sensitive)`},
		{`{"State":"zombie"}`, `fleet: fleet.status unknown key "State" (did you mean "state"?); the accepted keys are agent, state, role, after, limit (all optional; names are case-sensitive)`},
		{`{"state":"zombies"}`, `fleet: fleet.status state "zombies" is not one of healthy, suspect, lost, zombie, quarantined, gone`},
		{`{"limit":"all"}`, `fleet: fleet.status key "limit" must be an integer, not "all"`},
	} {
		msg, e := natstest.Request(t, nc, subj.FleetStatus(), []byte(tc.body))
		if e == nil {
			var p fleet.Status
			_ = json.Unmarshal(msg.Data, &p)
			t.Errorf("%s: answered with %d agents, want a 400", tc.body, len(p.Agents))
			continue
		}
		var eb agentproto.ErrorBody
		if err := json.Unmarshal(e.Body, &eb); err != nil || e.Code != "400" || e.Description != tc.want ||
			eb.Error != (agentproto.ErrorDetail{Code: "bad_request", Status: 400, Message: tc.want}) {
			t.Errorf("%s: got %s %q body %s (%v)\nwant 400 %q", tc.body, e.Code, e.Description, e.Body, err, tc.want)
		}
	}
}

// pageAll pages through fleet.status with no limit, checking every reply
// stays under the payload budget, and returns the agents in order.
func pageAll(t *testing.T, nc *nats.Conn, n, maxPayload int) ([]string, int) {
	var got []string
	pages := 0
	for after := ""; pages < 100; {
		body, _ := json.Marshal(agentproto.FleetStatusRequest{After: after})
		msg, e := natstest.Request(t, nc, subj.FleetStatus(), body)
		if e != nil {
			t.Fatalf("page %d: %+v", pages, e)
		}
		pages++
		if len(msg.Data) > maxPayload-fleet.StatusHeadroom {
			t.Fatalf("page %d is %d bytes, over the budget under max payload %d", pages, len(msg.Data), maxPayload)
		}
		var page fleet.Status
		if err := json.Unmarshal(msg.Data, &page); err != nil {
			t.Fatal(err)
		}
		if page.Total != n || page.Counts["healthy"] != n-1 || page.Counts["gone"] != 1 || !page.Leader {
			t.Fatalf("page head: total %d, counts %v, leader %v", page.Total, page.Counts, page.Leader)
		}
		for _, a := range page.Agents {
			got = append(got, a.Agent)
		}
		if after = page.Next; after == "" {
			break
		}
	}
	return got, pages
}

// pageByLimit pages with a limit: full pages, next = the last agent, and a
// short last page without next.
func pageByLimit(t *testing.T, s *supervisor.Supervisor, n, limit int) {
	count, after := 0, ""
	for i := 0; i < 100; i++ {
		p := fleetStatus(t, s, agentproto.FleetStatusRequest{After: after, Limit: limit})
		count += len(p.Agents)
		if p.Next == "" {
			if len(p.Agents) != n%limit {
				t.Errorf("last page has %d agents, want %d", len(p.Agents), n%limit)
			}
			break
		}
		if len(p.Agents) != limit || p.Next != p.Agents[limit-1].Agent {
			t.Fatalf("page of %d, next %q", len(p.Agents), p.Next)
		}
		after = p.Next
	}
	if count != n {
		t.Errorf("limit paging saw %d agents, want %d", count, n)
	}
}
