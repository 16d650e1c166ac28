package kvconfig

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
)

type state int

const (
	absent state = iota
	present
	malformed
)

func (s state) String() string { return [...]string{"absent", "present", "malformed"}[s] }

// readyIndex returns an index with both buckets marked loaded.
func readyIndex() *Index {
	ix := NewIndex()
	ix.MarkReady(BucketConfigs)
	ix.MarkReady(BucketAgents)
	return ix
}

// value returns a valid config unique to its scope, or a malformed one.
func value(scope string, s state) []byte {
	if s == malformed {
		return []byte(`{"transport":"http","url":"https://` + scope + `.example","timout":"3s"}`)
	}
	return []byte(`{"transport":"http","url":"https://` + scope + `.example/mcp"}`)
}

// TestPrecedenceTable covers every combination of absent/present/malformed
// at the agent, role and global scopes, with and without a role.
func TestPrecedenceTable(t *testing.T) {
	states := []state{absent, present, malformed}
	for _, withRole := range []bool{true, false} {
		for _, a := range states {
			for _, r := range states {
				for _, g := range states {
					name := fmt.Sprintf("role=%v/agent=%v/role=%v/global=%v", withRole, a, r, g)
					t.Run(name, func(t *testing.T) {
						ix := readyIndex()
						rev := uint64(0)
						put := func(key, scope string, s state) {
							rev++
							if s != absent {
								ix.ApplyConfig(key, rev, OpPut, value(scope, s))
							}
						}
						if withRole {
							rev++
							ix.ApplyAgent("a7", rev, OpPut, []byte(`{"role":"coder"}`))
						}
						put("agent.a7.github", "agent", a)
						put("role.coder.github", "role", r)
						put("global.github", "global", g)

						// Expected: first present-or-malformed scope that applies wins.
						type cand struct {
							scope, key, host string
							s                state
						}
						cands := []cand{{"agent:a7", "agent.a7.github", "agent", a}}
						if withRole {
							cands = append(cands, cand{"role:coder", "role.coder.github", "role", r})
						}
						cands = append(cands, cand{"global", "global.github", "global", g})
						var win *cand
						for i := range cands {
							if cands[i].s != absent {
								win = &cands[i]
								break
							}
						}
						res, err := ix.Resolve("a7", "github")
						switch {
						case win == nil:
							if !errors.Is(err, ErrNotFound) {
								t.Fatalf("want not found, got %v %+v", err, res)
							}
						case win.s == malformed:
							var ce *ConfigError
							if !errors.As(err, &ce) || ce.Key != win.key || ce.Revision == 0 || !strings.Contains(err.Error(), win.key) {
								t.Fatalf("want invalid config naming %s, got %v", win.key, err)
							}
							if res.Config != nil {
								t.Fatalf("malformed winner returned a config from %s", res.Scope)
							}
						default:
							if err != nil {
								t.Fatalf("resolve: %v", err)
							}
							if res.Scope != win.scope || res.Key != win.key || res.Config.URL != "https://"+win.host+".example/mcp" {
								t.Fatalf("got scope %s key %s url %s; want %s", res.Scope, res.Key, res.Config.URL, win.scope)
							}
						}
						x, err := ix.Explain("a7", "github")
						if err != nil {
							t.Fatal(err)
						}
						if win != nil && (x.WinnerKey != win.key) || win == nil && x.Outcome != "not_found" {
							t.Fatalf("explain winner %q outcome %q, want %v", x.WinnerKey, x.Outcome, win)
						}
					})
				}
			}
		}
	}
}

// TestNoFieldLeaks: the winner is returned exactly as written; fields it
// omits never come from a less specific scope.
func TestNoFieldLeaks(t *testing.T) {
	ix := readyIndex()
	ix.ApplyAgent("a7", 1, OpPut, []byte(`{"role":"coder"}`))
	ix.ApplyConfig("global.github", 2, OpPut, []byte(`{"transport":"http","url":"https://g.example","headers":{"Authorization":"Bearer g"},"timeout":"30s","retry":{"max_attempts":9}}`))
	ix.ApplyConfig("role.coder.github", 3, OpPut, []byte(`{"transport":"http","url":"https://r.example","env":{"X":"r"}}`))
	ix.ApplyConfig("agent.a7.github", 4, OpPut, []byte(`{"url":"https://a.example"}`))
	res, err := ix.Resolve("a7", "github")
	if err != nil {
		t.Fatal(err)
	}
	got, _ := json.Marshal(res.Config)
	want := `{"transport":"http","url":"https://a.example"}`
	if string(got) != want || string(res.Raw) != `{"url":"https://a.example"}` {
		t.Fatalf("winner %s raw %s; want %s", got, res.Raw, want)
	}
	if res.Config.Timeout != 0 || res.Config.Retry != nil || res.Config.Headers != nil || res.Config.Env != nil {
		t.Fatalf("fields leaked: %+v", res.Config)
	}
}

func TestDeletedWinnerFallsToNextScope(t *testing.T) {
	ix := readyIndex()
	ix.ApplyConfig("global.github", 1, OpPut, value("global", present))
	ix.ApplyConfig("agent.a7.github", 2, OpPut, value("agent", malformed))
	if _, err := ix.Resolve("a7", "github"); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("malformed winner: %v", err)
	}
	ix.ApplyConfig("agent.a7.github", 3, OpDelete, nil)
	res, err := ix.Resolve("a7", "github")
	if err != nil || res.Scope != "global" || res.Revision != 1 {
		t.Fatalf("after delete: %+v %v", res, err)
	}
	ix.ApplyConfig("global.github", 4, OpDelete, nil)
	if _, err := ix.Resolve("a7", "github"); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "global.github") {
		t.Fatalf("nothing left: %v", err)
	}
	if len(ix.Invalid()) != 0 {
		t.Fatalf("deleted invalid entry still listed: %v", ix.Invalid())
	}
}

func TestMalformedRoleRecord(t *testing.T) {
	ix := readyIndex()
	ix.ApplyConfig("global.github", 1, OpPut, value("global", present))
	ix.ApplyAgent("a7", 2, OpPut, []byte(`{"rol":"coder"}`))
	_, err := ix.Resolve("a7", "github")
	var ce *ConfigError
	if !errors.As(err, &ce) || ce.Bucket != BucketAgents || ce.Key != "a7" || ce.Revision != 2 {
		t.Fatalf("malformed role record must fail loudly, got %v", err)
	}
	ix.ApplyConfig("agent.a7.github", 3, OpPut, value("agent", present))
	if res, err := ix.Resolve("a7", "github"); err != nil || res.Scope != "agent:a7" {
		t.Fatalf("agent scope wins regardless of the role: %+v %v", res, err)
	}
}

// An invalid entry keeps every problem of its value, each naming the key
// and revision, for resolve's 422, explain and the supervisor's log.
func TestInvalidEntryListsEveryProblem(t *testing.T) {
	ix := readyIndex()
	ch := ix.ApplyConfig("global.github", 4, OpPut,
		[]byte(`{"transport":"http","retry":{"max_attemps":3},"env":{"TOKEN":"a","TOKEN":"b"}}`))
	probs := Problems(ch.Err)
	if len(probs) != 3 {
		t.Fatalf("change error %v: want 3 problems", ch.Err)
	}
	for _, p := range probs {
		if p.Bucket != BucketConfigs || p.Key != "global.github" || p.Revision != 4 {
			t.Errorf("problem %v does not name the key and revision", p)
		}
	}
	_, err := ix.Resolve("a7", "github")
	// As agentproto/PROTOCOL.md shows it.
	want := `kvconfig: invalid mcp_configs "global.github" revision 4: 3 problems: ` +
		`field "retry.max_attemps": unknown field (check the spelling; retry's fields are max_attempts, base_delay, max_delay, jitter); ` +
		`field "env.TOKEN": duplicate key (it appears more than once); keep exactly one; ` +
		`field "url": required for transport http: add "url":"https://..."`
	if fmt.Sprint(err) != want {
		t.Fatalf("resolve error\n got %v\nwant %s", err, want)
	}
	if inv := ix.Invalid(); len(inv) != 1 || inv[0].Err.Error() != err.Error() {
		t.Fatalf("Invalid() = %v", inv)
	}
	ch = ix.ApplyAgent("a7", 5, OpPut, []byte(`{"role":"coder","role":"admin"}`))
	var ce *ConfigError
	if !errors.As(ch.Err, &ce) || ce.Bucket != BucketAgents || ce.Key != "a7" || ce.Revision != 5 || ce.Field != "role" {
		t.Fatalf("duplicate role: %v", ch.Err)
	}
}

func TestResolveRejectsBadIDsAndNotReady(t *testing.T) {
	ix := NewIndex()
	if _, err := ix.Resolve("a7", "github"); !errors.Is(err, ErrNotReady) {
		t.Fatalf("not ready: %v", err)
	}
	ix = readyIndex()
	for _, bad := range []string{"", "a.b", "*", ">", "a b", strings.Repeat("x", 65)} {
		var ie *IDError
		if _, err := ix.Resolve(bad, "github"); !errors.As(err, &ie) {
			t.Errorf("agent %q: %v", bad, err)
		}
		if _, err := ix.Resolve("a7", bad); !errors.As(err, &ie) {
			t.Errorf("server %q: %v", bad, err)
		}
		if _, err := ix.Explain("a7", bad); !errors.As(err, &ie) {
			t.Errorf("explain server %q: %v", bad, err)
		}
	}
}

func TestUnrecognisedKeysReported(t *testing.T) {
	ix := readyIndex()
	ch := ix.ApplyConfig("team.x.github", 1, OpPut, value("x", present))
	if !errors.Is(ch.Err, ErrUnrecognisedKey) || ix.Unrecognised()["team.x.github"] != 1 {
		t.Fatalf("unrecognised key not reported: %v %v", ch.Err, ix.Unrecognised())
	}
	ix.ApplyConfig("team.x.github", 2, OpDelete, nil)
	if len(ix.Unrecognised()) != 0 {
		t.Fatal("deleted unrecognised key still reported")
	}
}

func TestResolveAllAndExplain(t *testing.T) {
	ix := readyIndex()
	ix.ApplyAgent("a7", 1, OpPut, []byte(`{"role":"coder"}`))
	ix.ApplyConfig("global.github", 2, OpPut, value("global", present))
	ix.ApplyConfig("global.slack", 3, OpPut, value("global", present))
	ix.ApplyConfig("role.coder.github", 4, OpPut, value("role", present))
	ix.ApplyConfig("role.coder.jira", 5, OpPut, value("role", malformed))
	ix.ApplyConfig("role.ops.pager", 6, OpPut, value("role", present))
	ix.ApplyConfig("agent.a7.notes", 7, OpPut, value("agent", present))
	ix.ApplyConfig("agent.b1.secret", 8, OpPut, value("agent", present))
	role, items, err := ix.ResolveAll("a7")
	if err != nil || role != "coder" {
		t.Fatal(role, err)
	}
	var got []string
	for _, it := range items {
		s := it.Server + "=" + it.Scope
		if it.Err != nil {
			s += "!"
		}
		got = append(got, s)
	}
	if strings.Join(got, ",") != "github=role:coder,jira=role:coder!,notes=agent:a7,slack=global" {
		t.Fatalf("resolveall: %v", got)
	}
	x, err := ix.Explain("a7", "github")
	if err != nil {
		t.Fatal(err)
	}
	if x.Winner != "role:coder" || len(x.Shadowed) != 1 || x.Shadowed[0] != "global.github" || x.Outcome != "ok" || len(x.Scopes) != 3 {
		t.Fatalf("explain: %+v", x)
	}
	x, _ = ix.Explain("nobody", "github")
	if x.Scopes[1].Skipped == "" || x.Winner != "global" {
		t.Fatalf("explain without role: %+v", x)
	}
}

func TestGoverns(t *testing.T) {
	ix := readyIndex()
	ix.ApplyAgent("c1", 1, OpPut, []byte(`{"role":"coder"}`))
	ix.ApplyAgent("c2", 2, OpPut, []byte(`{"role":"coder"}`))
	ix.ApplyAgent("o1", 3, OpPut, []byte(`{"role":"ops"}`))
	ix.ApplyConfig("role.coder.github", 4, OpPut, value("role", present))
	ix.ApplyConfig("agent.c2.github", 5, OpPut, value("agent", present))
	ix.ApplyConfig("agent.o1.github", 6, OpPut, value("agent", present))
	g, _ := GlobalKey("github")
	r, _ := RoleKey("coder", "github")
	a, _ := AgentKey("c2", "github")
	for _, tc := range []struct {
		k     Key
		agent string
		want  bool
	}{
		{g, "c1", false}, {g, "c2", false}, {g, "o1", false}, {g, "norole", true},
		{r, "c1", true}, {r, "c2", false}, {r, "o1", false}, {r, "norole", false},
		{a, "c2", true}, {a, "c1", false},
	} {
		if got := ix.Governs(tc.k, tc.agent); got != tc.want {
			t.Errorf("Governs(%s, %s) = %v, want %v", tc.k, tc.agent, got, tc.want)
		}
	}
}
