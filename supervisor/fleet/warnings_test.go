package fleet_test

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/internal/natstest"
	"github.com/tether-dev/tether/internal/suptest"
	"github.com/tether-dev/tether/kvconfig"
	"github.com/tether-dev/tether/supervisor"
	"github.com/tether-dev/tether/supervisor/fleet"
)

// fleet.status warns of agents whose role no config names, per agent and
// as a fleet-wide list of roles, and follows the fix live (issue 12: a
// role typo gave agents the global configs with no word in any output).
func TestFleetStatusWarnsOfUnconfiguredRoles(t *testing.T) {
	srv := natstest.RunServer(t)
	cfg := fleetTestConfig(t, srv, 5*time.Second)
	cfg.Admission = supervisor.AdmitRegistered
	s := startSupervisor(t, cfg)
	put(t, s, kvconfig.BucketConfigs, "global.github", `{"url":"https://g.example/mcp"}`)
	put(t, s, kvconfig.BucketConfigs, "role.coder.github", `{"url":"https://r.example/mcp"}`)
	suptest.Register(t, s, "coderz", "w-1", "w-2", "w-3", "w-4")
	suptest.Register(t, s, "coder", "ok-1")
	suptest.Register(t, s, "idle", "i-1") // registered, never heard: still listed
	nc := srv.Connect()
	for _, id := range []string{"w-1", "w-2", "w-3", "w-4", "ok-1"} {
		rawHeartbeat(t, nc, id, map[string]any{"agent": id, "instance": id + "-1", "seq": 1, "interval_ms": 5000,
			"conn": map[string]any{"state": "connected"}})
	}
	natstest.CheckFor(t, 2*time.Second, time.Millisecond, func() error {
		if c := s.Fleet().Counts(); c[fleet.StateHealthy] != 5 {
			return fmt.Errorf("counts %v", c)
		}
		return nil
	})

	p := fleetStatus(t, s, agentproto.FleetStatusRequest{})
	wantRoles := []kvconfig.RoleUse{{Role: "coderz", Agents: 4, Sample: []string{"w-1", "w-2", "w-3"}},
		{Role: "idle", Agents: 1, Sample: []string{"i-1"}}}
	if !reflect.DeepEqual(p.UnconfiguredRoles, wantRoles) {
		t.Errorf("unconfigured_roles %+v, want %+v", p.UnconfiguredRoles, wantRoles)
	}
	for _, a := range p.Agents {
		var want []string
		if a.Role == "coderz" {
			want = []string{`role "coderz" is named by no config in mcp_configs: agent ` + a.Agent + ` gets global configs only; check the role in mcp_agents`}
		}
		if !slices.Equal(a.Warnings, want) {
			t.Errorf("%s (role %s): warnings %q, want %q", a.Agent, a.Role, a.Warnings, want)
		}
	}
	// The role filter and one agent carry the same warning.
	if p := fleetStatus(t, s, agentproto.FleetStatusRequest{Agent: "w-2"}); len(p.Agents) != 1 || len(p.Agents[0].Warnings) != 1 || len(p.UnconfiguredRoles) != 2 {
		t.Errorf("agent w-2: %+v", p)
	}

	// The operator fixes it: the role gets a config, the warnings go.
	put(t, s, kvconfig.BucketConfigs, "role.coderz.github", `{"url":"https://r.example/mcp"}`)
	natstest.CheckFor(t, 2*time.Second, time.Millisecond, func() error {
		p := fleetStatus(t, s, agentproto.FleetStatusRequest{Role: "coderz"})
		if len(p.UnconfiguredRoles) != 1 || p.UnconfiguredRoles[0].Role != "idle" || len(p.Agents) != 4 || len(p.Agents[0].Warnings) != 0 {
			return fmt.Errorf("after the fix: roles %+v, agents %+v", p.UnconfiguredRoles, p.Agents)
		}
		return nil
	})
}

// fleet.status lists every malformed operator entry — config values,
// unrecognised keys, registry records — with key, revision and the error,
// and drops each once fixed (issue 12, part c).
func TestFleetStatusListsInvalidEntries(t *testing.T) {
	srv := natstest.RunServer(t)
	s := startSupervisor(t, fleetTestConfig(t, srv, 5*time.Second))
	bad := put(t, s, kvconfig.BucketConfigs, "global.github", `{"url":"https://g.example/mcp","timout":"3s","headers":{"Authorization":"Bearer sekrit"}}`)
	typo := put(t, s, kvconfig.BucketConfigs, "globl.github", `{"url":"https://g.example/mcp"}`)
	rec := put(t, s, kvconfig.BucketAgents, "a7", `{"rol":"coder"}`)
	want := []struct {
		bucket, key string
		rev         uint64
		err         string
	}{
		{"mcp_agents", "a7", rec, `field "rol": unknown field`},
		{"mcp_configs", "global.github", bad, `field "timout": unknown field`},
		{"mcp_configs", "globl.github", typo, `unrecognised key "globl.github"`},
	}
	natstest.CheckFor(t, 2*time.Second, time.Millisecond, func() error {
		p := fleetStatus(t, s, agentproto.FleetStatusRequest{})
		if len(p.Invalid) != len(want) {
			return fmt.Errorf("invalid %+v", p.Invalid)
		}
		for i, w := range want {
			e := p.Invalid[i]
			if e.Bucket != w.bucket || e.Key != w.key || e.Revision != w.rev || !strings.Contains(e.Error, w.err) || strings.Contains(e.Error, "sekrit") {
				return fmt.Errorf("invalid[%d] = %+v, want %s %s revision %d with %q", i, e, w.bucket, w.key, w.rev, w.err)
			}
		}
		return nil
	})
	put(t, s, kvconfig.BucketConfigs, "global.github", `{"url":"https://g.example/mcp"}`)
	if err := s.Buckets().Configs.Delete(context.Background(), "globl.github"); err != nil {
		t.Fatal(err)
	}
	put(t, s, kvconfig.BucketAgents, "a7", `{"role":"coder"}`)
	natstest.CheckFor(t, 2*time.Second, time.Millisecond, func() error {
		if p := fleetStatus(t, s, agentproto.FleetStatusRequest{}); len(p.Invalid) != 0 {
			return fmt.Errorf("invalid after the fixes: %+v", p.Invalid)
		}
		return nil
	})
}
