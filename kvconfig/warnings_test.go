package kvconfig

import (
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// An agent whose role no config names silently gets the global configs;
// explain says so, and so it does for an agent with no registry entry, an
// invalid entry hidden behind the winner and a misspelt key (issue 12).
func TestExplainWarnings(t *testing.T) {
	for _, tc := range []struct {
		name    string
		agents  map[string]string // agent -> registry value
		configs map[string]string // key -> value ("bad": malformed)
		agent   string
		want    []string // exactly these warnings, in order
	}{
		{name: "role named by no config",
			agents:  map[string]string{"a7": `{"role":"coderz"}`},
			configs: map[string]string{"global.github": "ok", "role.coder.github": "ok"},
			agent:   "a7",
			want:    []string{`role "coderz" is named by no config in mcp_configs: agent a7 gets global configs only; check the role in mcp_agents`}},
		{name: "role named by no config, agent has its own",
			agents:  map[string]string{"a7": `{"role":"coderz"}`},
			configs: map[string]string{"global.github": "ok", "agent.a7.jira": "ok"},
			agent:   "a7",
			want:    []string{`role "coderz" is named by no config in mcp_configs: agent a7 gets only its own agent.a7.* and global configs; check the role in mcp_agents`}},
		{name: "no registry entry",
			configs: map[string]string{"global.github": "ok"},
			agent:   "b1",
			want:    []string{`agent "b1" has no entry in mcp_agents: it has no role, so the role scope is skipped and it gets global configs only; register it with its role: tetherctl agent add b1 --role ROLE`}},
		{name: "role configured for another server only",
			agents:  map[string]string{"a7": `{"role":"coder"}`},
			configs: map[string]string{"global.github": "ok", "role.coder.jira": "ok"},
			agent:   "a7"},
		{name: "role named only by an invalid entry",
			agents:  map[string]string{"a7": `{"role":"coder"}`},
			configs: map[string]string{"global.github": "ok", "role.coder.jira": "bad"},
			agent:   "a7"},
		{name: "malformed registry record: role_error says it",
			agents:  map[string]string{"a7": `{"rol":"coder"}`},
			configs: map[string]string{"global.github": "ok"},
			agent:   "a7"},
		{name: "invalid entry shadowed by the winner",
			agents:  map[string]string{"a7": `{"role":"coder"}`},
			configs: map[string]string{"global.github": "bad", "role.coder.github": "ok"},
			agent:   "a7",
			want:    []string{`shadowed entry global.github revision 1 is invalid: if role.coder.github is deleted, agent a7 gets a 422 for github instead of a config; fix or delete global.github (its error is in its scope above)`}},
		{name: "unrecognised keys ending in the server",
			agents:  map[string]string{"a7": `{"role":"coder"}`},
			configs: map[string]string{"role.coder.github": "ok", "globl.github": "ok", "roles.coder.GitHub": "ok", "globl.jira": "ok"},
			agent:   "a7",
			want: []string{`unrecognised key "globl.github" in mcp_configs (revision 1) is never used: keys are global.<server>, role.<role>.<server> or agent.<agent>.<server>`,
				`unrecognised key "roles.coder.GitHub" in mcp_configs (revision 4) is never used: keys are global.<server>, role.<role>.<server> or agent.<agent>.<server>`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ix := readyIndex()
			rev := uint64(0)
			for _, k := range slices.Sorted(maps.Keys(tc.configs)) {
				rev++
				v := value(k, present)
				if tc.configs[k] == "bad" {
					v = value(k, malformed)
				}
				ix.ApplyConfig(k, rev, OpPut, v)
			}
			for _, a := range slices.Sorted(maps.Keys(tc.agents)) {
				ix.ApplyAgent(a, 100, OpPut, []byte(tc.agents[a]))
			}
			x, err := ix.Explain(tc.agent, "github")
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(x.Warnings, tc.want) {
				t.Errorf("warnings\n got %q\nwant %q", x.Warnings, tc.want)
			}
			var agentLevel []string
			for _, w := range tc.want {
				if strings.HasPrefix(w, "role ") || strings.HasPrefix(w, "agent ") {
					agentLevel = append(agentLevel, w)
				}
			}
			if got := ix.AgentWarnings(tc.agent); !reflect.DeepEqual(got, agentLevel) {
				t.Errorf("AgentWarnings %q, want %q", got, agentLevel)
			}
		})
	}
}

func TestExplainWarnsOfAtMostThreeUnrecognisedKeys(t *testing.T) {
	ix := readyIndex()
	for i := range 5 {
		ix.ApplyConfig(fmt.Sprintf("glob%d.github", i), uint64(i+1), OpPut, value("g", present))
	}
	x, _ := ix.Explain("a7", "github")
	if n := len(x.Warnings); n != 1+maxUnknownWarnings+1 || x.Warnings[n-1] != "2 more unrecognised keys in mcp_configs end in .github" {
		t.Fatalf("warnings %q", x.Warnings)
	}
}

// UnconfiguredRoles lists, fleet-wide, the roles agents have that no
// config names, and follows every change to either bucket.
func TestUnconfiguredRoles(t *testing.T) {
	ix := NewIndex()
	ix.ApplyAgent("a9", 1, OpPut, []byte(`{"role":"coderz"}`))
	if got := ix.UnconfiguredRoles(0); got != nil {
		t.Fatalf("before the index is ready: %+v", got)
	}
	ix.MarkReady(BucketConfigs)
	ix.MarkReady(BucketAgents)
	for i, a := range []string{"a5", "a1", "a3", "a2"} {
		ix.ApplyAgent(a, uint64(2+i), OpPut, []byte(`{"role":"coderz"}`))
	}
	ix.ApplyAgent("o1", 10, OpPut, []byte(`{"role":"ops"}`))
	ix.ApplyAgent("c1", 11, OpPut, []byte(`{"role":"coder"}`))
	ix.ApplyAgent("x1", 12, OpPut, []byte(`{"role":"coder","x":1}`)) // malformed: no role
	ix.ApplyConfig("role.coder.github", 13, OpPut, value("role", present))
	want := []RoleUse{{Role: "coderz", Agents: 5, Sample: []string{"a1", "a2", "a3"}}, {Role: "ops", Agents: 1, Sample: []string{"o1"}}}
	if got := ix.UnconfiguredRoles(0); !reflect.DeepEqual(got, want) {
		t.Fatalf("unconfigured roles %+v, want %+v", got, want)
	}
	if got := ix.UnconfiguredRoles(1); len(got) != 1 || got[0].Role != "coderz" {
		t.Fatalf("at most 1: %+v", got)
	}
	if w := want[0].Warning(); w != `role "coderz" is named by no config in mcp_configs: 5 agents (a1, a2, a3, ...) get global configs only; check the role in mcp_agents` {
		t.Errorf("warning %q", w)
	}
	if w := want[1].Warning(); !strings.Contains(w, ": agent o1 gets global configs only") {
		t.Errorf("warning %q", w)
	}
	if role, w := ix.RoleWarning("a1"); role != "coderz" || !strings.HasPrefix(w, `role "coderz" is named by no config`) {
		t.Errorf("RoleWarning(a1) = %q, %q", role, w)
	}
	if role, w := ix.RoleWarning("c1"); role != "coder" || w != "" {
		t.Errorf("RoleWarning(c1) = %q, %q", role, w)
	}
	if role, w := ix.RoleWarning("nobody"); role != "" || w != "" {
		t.Errorf("RoleWarning(nobody) = %q, %q", role, w)
	}

	// The cached answer follows changes: a config for ops, a renamed role.
	ix.ApplyConfig("role.ops.pager", 14, OpPut, value("role", malformed)) // named, even if invalid
	ix.ApplyAgent("a5", 15, OpPut, []byte(`{"role":"coder"}`))
	want = []RoleUse{{Role: "coderz", Agents: 4, Sample: []string{"a1", "a2", "a3"}}}
	if got := ix.UnconfiguredRoles(0); !reflect.DeepEqual(got, want) {
		t.Fatalf("after changes %+v, want %+v", got, want)
	}
	ix.ApplyConfig("role.ops.pager", 16, OpDelete, nil)
	if got := ix.UnconfiguredRoles(0); len(got) != 2 || got[1].Role != "ops" {
		t.Fatalf("after deleting ops' only config: %+v", got)
	}
	got := ix.UnconfiguredRoles(0)
	got[0].Role = "changed"
	if ix.UnconfiguredRoles(0)[0].Role != "coderz" {
		t.Fatal("the caller's copy aliases the cache")
	}
}
