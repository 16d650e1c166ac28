package tetherctl

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/tether-dev/tether/internal/natstest"
)

const (
	stdioCfg = `{"command":"npx","args":["-y","@modelcontextprotocol/server-github","--token=arg_s3cret"],"env":{"GITHUB_TOKEN":"ghp_s3cret"}}`
	httpCfg  = `{"url":"https://user:url_s3cret@mcp.example.com/mcp?key=qry_s3cret","headers":{"Authorization":"Bearer hdr_s3cret"},"timeout":"30s"}`
)

func TestValidate(t *testing.T) {
	good := writeFile(t, "good.json", stdioCfg)
	for _, tc := range []struct {
		name, value string
		want        []string
	}{
		{"typo.json", `{"url":"https://x.example","timout":"30s"}`, []string{`field "timout"`, "unknown field", "check the spelling"}},
		{"dur.json", `{"url":"https://x.example","timeout":"30"}`, []string{`field "timeout"`, "duration"}},
		{"stdio-url.json", `{"transport":"stdio","url":"https://x.example"}`, []string{`field "command"`, "required for transport stdio"}},
		{"broken.json", `{"url":"https://x.example"`, []string{"malformed JSON"}},
		{"servers.json", `{"mcpServers":{"ok":{"command":"x"},"bad.name":{"command":"y"}}}`, []string{`server "bad.name"`, "rename it"}},
	} {
		r := runCLI("", "validate", writeFile(t, tc.name, tc.value))
		if r.code != ExitInvalidConfig {
			t.Errorf("%s: want exit 3, got\n%s", tc.name, r)
		}
		contains(t, tc.name+" stderr", r.stderr, append(tc.want, tc.name)...)
	}
	r := runCLI("", "validate", good)
	if r.code != ExitOK {
		t.Fatalf("good: %s", r)
	}
	contains(t, "validate stdout", r.stdout, "good.json: valid config")
	r = runCLI(stdioCfg, "validate", "-", "--json")
	var res []struct {
		Valid  bool
		Config json.RawMessage
	}
	if r.code != ExitOK || json.Unmarshal([]byte(r.stdout), &res) != nil || len(res) != 1 || !res[0].Valid {
		t.Fatalf("stdin --json: %s", r)
	}
	lacks(t, "validate --json", r.stdout, "ghp_s3cret")
	r = runCLI("", "validate", good, writeFile(t, "bad.json", `{}`), writeFile(t, "bad2.json", `[]`))
	if r.code != ExitInvalidConfig {
		t.Fatalf("two bad of three: %s", r)
	}
	contains(t, "stderr", r.stderr, "2 of 3 files are invalid", "bad.json", "bad2.json")
	if r := runCLI("", "validate", "/nonexistent/x.json"); r.code != ExitFailure || !strings.Contains(r.stderr, "cannot read") {
		t.Errorf("missing file: %s", r)
	}
}

// threeProblems has three independent problems: a misspelt nested field,
// a duplicate env key and a missing url.
const threeProblems = `{"transport":"http","retry":{"max_attemps":3},"env":{"TOKEN":"a","TOKEN":"b"}}`

// validate reports every problem of a value at once, one per line, each
// naming the file and the field path.
func TestValidateReportsEveryProblem(t *testing.T) {
	f := writeFile(t, "three.json", threeProblems)
	r := runCLI("", "validate", f)
	if r.code != ExitInvalidConfig {
		t.Fatalf("want exit 3, got\n%s", r)
	}
	want := "tetherctl: invalid config in " + f + ": 3 problems:\n" +
		"  " + f + `: field "retry.max_attemps": unknown field (check the spelling; retry's fields are max_attempts, base_delay, max_delay, jitter)` + "\n" +
		"  " + f + `: field "env.TOKEN": duplicate key (it appears more than once); keep exactly one` + "\n" +
		"  " + f + `: field "url": required for transport http: add "url":"https://..."` + "\n"
	if r.stderr != want {
		t.Errorf("stderr:\n%s\nwant:\n%s", r.stderr, want)
	}
	r = runCLI(threeProblems, "validate", "-", "--json")
	var res []struct {
		Valid    bool
		Problems []struct{ Field, Error string }
	}
	if r.code != ExitInvalidConfig || json.Unmarshal([]byte(r.stdout), &res) != nil || len(res) != 1 || res[0].Valid {
		t.Fatalf("--json: %s", r)
	}
	var fields []string
	for _, p := range res[0].Problems {
		fields = append(fields, p.Field)
	}
	if strings.Join(fields, " ") != "retry.max_attemps env.TOKEN url" {
		t.Errorf("--json problems: %+v", res[0].Problems)
	}
	// In an mcpServers file, every problem of every server, one a line; a
	// key repeated at any level is one of them.
	servers := writeFile(t, "servers.json", `{"mcpServers":{"a":`+threeProblems+`,"b":{"url":"https://x.example","url":"https://evil.example"},"b":{"command":"y"}}}`)
	r = runCLI("", "validate", servers)
	if r.code != ExitInvalidConfig {
		t.Fatalf("servers file: %s", r)
	}
	contains(t, "servers stderr", r.stderr, "invalid mcpServers file "+servers+":",
		`  server "b" appears more than once in "mcpServers"; keep exactly one`,
		`  server "a": field "retry.max_attemps": unknown field`,
		`  server "a": field "env.TOKEN": duplicate key`,
		`  server "a": field "url": required for transport http`)
	r = runCLI("", "validate", writeFile(t, "dupentry.json", `{"mcpServers":{"b":{"url":"https://x.example","url":"https://evil.example"}}}`))
	contains(t, "duplicate in an entry", r.stderr, `server "b": field(s) "url" appear more than once; keep exactly one of each`)
}

// putRev runs put --json and returns the revision written.
func (h *harness) putRev(args ...string) uint64 {
	h.t.Helper()
	r := h.must(ExitOK, append([]string{"put", "--json"}, args...)...)
	var out struct {
		Written  uint64 `json:"written_revision"`
		ReadBack struct {
			Revision uint64 `json:"revision"`
		} `json:"read_back"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil || out.Written == 0 || out.ReadBack.Revision != out.Written {
		h.t.Fatalf("put --json output: %v\n%s", err, r)
	}
	return out.Written
}

func TestPutCompareAndSwap(t *testing.T) {
	h := newHarness(t)
	v1 := writeFile(t, "v1.json", `{"url":"https://one.example/mcp"}`)
	v2 := writeFile(t, "v2.json", `{"url":"https://two.example/mcp"}`)
	v3 := writeFile(t, "v3.json", `{"url":"https://three.example/mcp"}`)

	r := h.must(ExitOK, "put", "global", "github", v1)
	contains(t, "put stdout", r.stdout, "wrote global.github revision", "(new key)", "read back:", "https://one.example/mcp")
	r1 := h.revision("global.github")

	// Two operators read revision r1 and both write: the second loses.
	r2 := h.putRev("global", "github", v2, "--revision", strconv.FormatUint(r1, 10))
	r = h.must(ExitConflict, "put", "global", "github", v3, "--revision", strconv.FormatUint(r1, 10))
	contains(t, "conflict stderr", r.stderr, "conflict: global.github is at revision "+strconv.FormatUint(r2, 10),
		"not at revision "+strconv.FormatUint(r1, 10)+" as expected", "Nothing was written", "tetherctl get global github",
		"--revision "+strconv.FormatUint(r2, 10))
	if got := h.value("global.github"); !strings.Contains(got, "two.example") {
		t.Fatalf("the losing write overwrote the winner: %s", got)
	}
	// --revision 0 asserts the key is absent.
	h.must(ExitConflict, "put", "global", "github", v3, "--revision", "0")
	h.putRev("agent:a7", "github", v3, "--revision", "0")

	// Truly concurrent: both based on r2, exactly one wins.
	var wg sync.WaitGroup
	codes := make([]int, 2)
	for i, f := range []string{v1, v3} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			codes[i] = h.run("put", "global", "github", f, "--revision", strconv.FormatUint(r2, 10)).code
		}()
	}
	wg.Wait()
	if codes[0]+codes[1] != ExitConflict || codes[0]*codes[1] != 0 {
		t.Fatalf("concurrent puts from the same revision: exit codes %v, want one 0 and one 5", codes)
	}
	if got := h.revision("global.github"); got != r2+1 && got <= r2 {
		t.Fatalf("revision after the race: %d", got)
	}
	// Without --revision, put bases the swap on a fresh read.
	h.putRev("global", "github", v2)
}

func TestPutInvalidWritesNothing(t *testing.T) {
	h := newHarness(t)
	rev := h.kvPut("global.github", `{"url":"https://one.example/mcp"}`)
	r := h.must(ExitInvalidConfig, "put", "global", "github", writeFile(t, "bad.json", `{"url":"https://x.example","retry":{"jitter":2}}`))
	contains(t, "stderr", r.stderr, `field "retry.jitter"`, "nothing was written", "tetherctl validate")
	if got := h.revision("global.github"); got != rev {
		t.Fatalf("revision moved from %d to %d", rev, got)
	}
	// Every problem at once, each line naming the key and the field.
	r = h.must(ExitInvalidConfig, "put", "global", "github", writeFile(t, "three.json", threeProblems))
	contains(t, "stderr", r.stderr, "3 problems; nothing was written. Fix it and check with 'tetherctl validate':",
		`  global.github: field "retry.max_attemps": unknown field (check the spelling; retry's fields are`,
		`  global.github: field "env.TOKEN": duplicate key`,
		`  global.github: field "url": required for transport http`)
	if got := h.revision("global.github"); got != rev {
		t.Fatalf("revision moved from %d to %d", rev, got)
	}
	// FILE "-" reads standard input.
	r = runCLI(stdioCfg, "--nats-url", h.srv.URL(), "put", "role:coder", "github", "-")
	if r.code != ExitOK || !strings.Contains(r.stdout, "wrote role.coder.github revision") {
		t.Fatalf("put from stdin: %s", r)
	}
}

func TestHistoryAndGet(t *testing.T) {
	h := newHarness(t)
	h.kvPut("global.github", `{"url":"https://one.example/mcp"}`)
	h.kvPut("global.github", `{"url":"https://two.example/mcp","timout":"1s"}`)
	if err := h.sup.Buckets().Configs.Delete(context.Background(), "global.github"); err != nil {
		t.Fatal(err)
	}
	r := h.must(ExitOK, "history", "global", "github")
	contains(t, "history", r.stdout, "3 kept revision(s)", "PUT", "DEL", "(current)", "one.example", `NO: field "timout"`)
	r = h.must(ExitOK, "history", "global", "github", "--json")
	var views []entryView
	if err := json.Unmarshal([]byte(r.stdout), &views); err != nil || len(views) != 3 {
		t.Fatalf("history --json: %v\n%s", err, r)
	}
	if views[0].Op != "PUT" || !views[0].Valid || views[1].Valid || views[2].Op != "DEL" {
		t.Errorf("history entries: %+v", views)
	}
	r = h.must(ExitNotFound, "get", "global", "github")
	contains(t, "get deleted", r.stderr, "global.github has no value", "tetherctl history global github")
	h.must(ExitNotFound, "history", "role:coder", "nothing")

	h.kvPut("role.coder.github", httpCfg)
	r = h.must(ExitOK, "get", "role:coder", "github")
	contains(t, "get", r.stdout, "role.coder.github", "role:coder", "valid     yes", `"Authorization": "****"`)
}

func TestRollbackRestoresAndSupervisorServesIt(t *testing.T) {
	h := newHarness(t)
	h.kvPut("agent.a7.other", `{"url":"https://other.example/mcp"}`) // agent a7 exists only through its own keys
	r1 := h.putRev("global", "github", writeFile(t, "v1.json", `{"url":"https://one.example/mcp"}`))
	r2 := h.putRev("global", "github", writeFile(t, "v2.json", `{"url":"https://two.example/mcp"}`))
	h.waitResolves("a7", "github", r2, "two.example")

	r := h.must(ExitOK, "rollback", "global", "github", strconv.FormatUint(r1, 10))
	r3 := h.revision("global.github")
	contains(t, "rollback", r.stdout, fmt.Sprintf("rolled back global.github to the value of revision %d: wrote revision %d (was revision %d)", r1, r3, r2), "one.example")
	h.waitResolves("a7", "github", r3, "one.example")

	// The same value again: nothing to write.
	r = h.must(ExitOK, "rollback", "global", "github", strconv.FormatUint(r1, 10))
	contains(t, "rollback again", r.stdout, "nothing written")

	// Refusals: a delete marker, a revision not kept, an invalid revision.
	if err := h.sup.Buckets().Configs.Delete(context.Background(), "global.github"); err != nil {
		t.Fatal(err)
	}
	r = h.must(ExitOK, "history", "global", "github", "--json")
	var views []entryView
	if err := json.Unmarshal([]byte(r.stdout), &views); err != nil {
		t.Fatal(err)
	}
	del := views[len(views)-1].Revision
	r = h.must(ExitNotFound, "rollback", "global", "github", strconv.FormatUint(del, 10))
	contains(t, "rollback delete", r.stderr, "is a DEL", "no value to restore")
	r = h.must(ExitNotFound, "rollback", "global", "github", "99999")
	contains(t, "rollback missing", r.stderr, "not in its kept history", "kept: ")
	bad := h.kvPut("global.github", `{"url":"ftp://x"}`)
	r = h.must(ExitInvalidConfig, "rollback", "global", "github", strconv.FormatUint(bad, 10))
	contains(t, "rollback invalid", r.stderr, "is itself invalid", `field "url"`)

	// Rolling back over a deleted or invalid current value works too.
	h.must(ExitOK, "rollback", "global", "github", strconv.FormatUint(r2, 10))
	h.waitResolves("a7", "github", 0, "two.example")
}

// waitResolves polls tetherctl resolve until the supervisor answers with
// revision rev (0: any) and a config containing want.
func (h *harness) waitResolves(agent, server string, rev uint64, want string) {
	h.t.Helper()
	natstest.CheckFor(h.t, 5*time.Second, 5*time.Millisecond, func() error {
		r := h.run("resolve", agent, server, "--json")
		var rep struct {
			Revision uint64          `json:"revision"`
			Config   json.RawMessage `json:"config"`
		}
		if r.code != ExitOK || json.Unmarshal([]byte(r.stdout), &rep) != nil {
			return fmt.Errorf("resolve: %s", r)
		}
		if (rev != 0 && rep.Revision != rev) || !strings.Contains(string(rep.Config), want) {
			return fmt.Errorf("resolve answers revision %d %s, want %d %s", rep.Revision, rep.Config, rev, want)
		}
		return nil
	})
}

// TestPutAfterDeleteSaysRecreated: a put on a key whose last revision is a
// delete (or purge) says so, rather than calling it a new key; so does a
// rollback over a delete.
func TestPutAfterDeleteSaysRecreated(t *testing.T) {
	h := newHarness(t)
	v1 := writeFile(t, "v1.json", `{"url":"https://one.example/mcp"}`)
	h.putRev("global", "github", v1)
	ctx := context.Background()
	// lastRevision is the newest revision in the key's history (a delete
	// marker's too, which get does not show).
	lastRevision := func() uint64 {
		t.Helper()
		r := h.must(ExitOK, "history", "global", "github", "--json")
		var views []entryView
		if err := json.Unmarshal([]byte(r.stdout), &views); err != nil || len(views) == 0 {
			t.Fatalf("history: %v\n%s", err, r)
		}
		return views[len(views)-1].Revision
	}
	if err := h.sup.Buckets().Configs.Delete(ctx, "global.github"); err != nil {
		t.Fatal(err)
	}
	del := lastRevision()
	r := h.must(ExitOK, "put", "global", "github", v1)
	contains(t, "put after delete", r.stdout, fmt.Sprintf("(re-created; revision %d was a delete)", del))
	lacks(t, "put after delete", r.stdout, "new key")

	r = h.must(ExitOK, "put", "global", "github", v1, "--json")
	var out struct {
		Previous uint64 `json:"previous_revision"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil || out.Previous == 0 {
		t.Fatalf("put --json: %v\n%s", err, r)
	}

	if err := h.sup.Buckets().Configs.Purge(ctx, "global.github"); err != nil {
		t.Fatal(err)
	}
	purge := lastRevision()
	r = h.must(ExitOK, "put", "global", "github", v1, "--json")
	var rec struct {
		Deleted uint64 `json:"deleted_revision"`
		Op      string `json:"deleted_op"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &rec); err != nil || rec.Deleted != purge || rec.Op != "PURGE" {
		t.Fatalf("put --json after purge: %+v %v\n%s", rec, err, r)
	}

	// A rollback over a delete is a re-creation too, not "was revision N".
	good := h.revision("global.github")
	if err := h.sup.Buckets().Configs.Delete(ctx, "global.github"); err != nil {
		t.Fatal(err)
	}
	del = lastRevision()
	r = h.must(ExitOK, "rollback", "global", "github", strconv.FormatUint(good, 10))
	contains(t, "rollback after delete", r.stdout, fmt.Sprintf("(re-created; revision %d was a delete)", del))
	lacks(t, "rollback after delete", r.stdout, "was revision")

	// A key that never existed is still a new key.
	r = h.must(ExitOK, "put", "global", "jira", v1)
	contains(t, "put new", r.stdout, "(new key)")
}

// TestHistoryTableWidth: an invalid revision's error is cut in the table so
// that every line stays within maxTableWidth (values are never cut: a long
// one only makes its own line longer); --json keeps the full text.
func TestHistoryTableWidth(t *testing.T) {
	h := newHarness(t)
	h.kvPut("global.github", `{"url":"https://one.example/mcp"}`)
	bad := `{"transport":"stdio","timout":"1s","retry":{"max_attemps":3,"jitter":2}}`
	h.kvPut("global.github", bad)
	long := `{"command":"npx","args":["-y","@modelcontextprotocol/server-github","--log-level","debug","--read-only"]}`
	h.kvPut("global.github", long)
	r := h.must(ExitOK, "history", "global", "github", "--show-secrets")
	valueAt := strings.Index(r.stdout[strings.Index(r.stdout, "REVISION"):], "VALUE")
	for i, line := range strings.Split(strings.TrimRight(r.stdout, "\n"), "\n") {
		n := utf8.RuneCountInString(line)
		if line != "" && line[0] >= '0' && line[0] <= '9' { // a row: a long value only makes its own line longer
			n = min(n, valueAt+lastColumnRoom)
		}
		if n > maxTableWidth {
			t.Errorf("history line %d is %d columns wide (max %d):\n%s", i+1, n, maxTableWidth, line)
		}
	}
	contains(t, "history", r.stdout, "NO: 4 problems", "…", "--json shows it in full", long)
	r = h.must(ExitOK, "history", "global", "github", "--json")
	var views []entryView
	if err := json.Unmarshal([]byte(r.stdout), &views); err != nil || len(views) != 3 {
		t.Fatalf("history --json: %v\n%s", err, r)
	}
	if e := views[1].Error; !strings.Contains(e, "timout") || !strings.Contains(e, "jitter") || strings.Contains(e, "…") {
		t.Errorf("--json error is not the full text: %q", e)
	}
	// Without an invalid revision nothing is cut and nothing is said.
	h.kvPut("global.jira", `{"url":"https://jira.example/mcp"}`)
	r = h.must(ExitOK, "history", "global", "jira")
	lacks(t, "history of valid revisions", r.stdout, "…", "--json")
}
