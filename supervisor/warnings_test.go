package supervisor

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tether-dev/tether/internal/natstest"
	"github.com/tether-dev/tether/kvconfig"
)

// explain over NATS says what resolution does quietly (issue 12): a role
// that no config names, an agent with no mcp_agents entry (whose
// heartbeats the default admission discards), an invalid entry in a
// consulted scope, whether it wins or is shadowed.
func TestExplainWarningsEndToEnd(t *testing.T) {
	srv := natstest.RunServer(t)
	s := startSupervisor(t, testConfig(t, srv))
	nc := srv.Connect()
	put(t, s, kvconfig.BucketAgents, "a7", `{"role":"coderz"}`)
	put(t, s, kvconfig.BucketAgents, "c1", `{"role":"coder"}`)
	put(t, s, kvconfig.BucketConfigs, "global.github", `{"url":"https://g.example/mcp"}`)
	put(t, s, kvconfig.BucketConfigs, "role.coder.github", `{"url":"https://r.example/mcp"}`)
	badGlobal := put(t, s, kvconfig.BucketConfigs, "global.slack", `{"url":"https://s.example/mcp","timout":"3s"}`)
	put(t, s, kvconfig.BucketConfigs, "role.coder.slack", `{"url":"https://rs.example/mcp"}`)
	badRole := put(t, s, kvconfig.BucketConfigs, "role.coder.jira", `{"url":"https://j.example/mcp","retry":{"max_attemps":3}}`)
	rev := put(t, s, kvconfig.BucketConfigs, "globl.github", `{"url":"https://typo.example/mcp"}`)
	waitRev(t, s, "c1", "jira", badRole)
	natstest.CheckFor(t, 2*time.Second, time.Millisecond, func() error {
		if _, ok := s.Index().Unrecognised()["globl.github"]; !ok {
			return fmt.Errorf("globl.github (revision %d) not applied yet", rev)
		}
		return nil
	})

	explain := func(agent, server string) kvconfig.Explanation {
		t.Helper()
		msg, e := request(t, nc, subj.Explain(agent, server), nil)
		if e != nil {
			t.Fatalf("explain %s %s: %+v", agent, server, e)
		}
		var x kvconfig.Explanation
		if err := json.Unmarshal(msg.Data, &x); err != nil {
			t.Fatal(err)
		}
		return x
	}
	typo := `unrecognised key "globl.github" in mcp_configs (revision ` + fmt.Sprint(rev) + `) is never used: keys are global.<server>, role.<role>.<server> or agent.<agent>.<server>`
	for _, tc := range []struct {
		agent, server, winner string
		want                  []string
	}{
		{"a7", "github", "global.github", []string{
			`role "coderz" is named by no config in mcp_configs: agent a7 gets global configs only; check the role in mcp_agents`, typo}},
		{"b1", "github", "global.github", []string{
			`agent "b1" has no entry in mcp_agents: it has no role, so the role scope is skipped and it gets global configs only; register it with its role: tetherctl agent add b1 --role ROLE`,
			typo,
			`the supervisor does not track agent b1: with admission "registered" (the default) its heartbeats are discarded until it has an entry in mcp_agents`}},
		{"c1", "github", "role.coder.github", []string{typo}},
		{"c1", "slack", "role.coder.slack", []string{fmt.Sprintf(
			`shadowed entry global.slack revision %d is invalid: if role.coder.slack is deleted, agent c1 gets a 422 for slack instead of a config; fix or delete global.slack (its error is in its scope above)`, badGlobal)}},
		{"c1", "jira", "role.coder.jira", nil},
	} {
		x := explain(tc.agent, tc.server)
		if x.WinnerKey != tc.winner || !slices.Equal(x.Warnings, tc.want) {
			t.Errorf("explain %s %s: winner %q, warnings\n %q\nwant winner %q, warnings\n %q", tc.agent, tc.server, x.WinnerKey, x.Warnings, tc.winner, tc.want)
		}
	}

	// An invalid entry in a consulted scope is in explain whether it wins
	// (outcome invalid_config, naming key and revision) or is shadowed.
	x := explain("c1", "jira")
	sc := x.Scopes[1]
	if x.Outcome != "invalid_config" || !strings.Contains(x.Error, fmt.Sprintf(`"role.coder.jira" revision %d`, badRole)) ||
		sc.Key != "role.coder.jira" || !sc.Present || sc.Valid || !strings.Contains(sc.Error, `field "retry.max_attemps": unknown field`) {
		t.Errorf("invalid winner: outcome %q error %q scope %+v", x.Outcome, x.Error, sc)
	}
	x = explain("c1", "slack")
	if sc := x.Scopes[2]; x.Outcome != "ok" || sc.Key != "global.slack" || sc.Valid || !sc.Shadowed || !strings.Contains(sc.Error, `field "timout": unknown field`) {
		t.Errorf("invalid shadowed entry: outcome %q scope %+v", x.Outcome, sc)
	}
}
