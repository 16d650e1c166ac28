package tetherctl

import (
	"context"
	"encoding/json"
	"io"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/tether-dev/tether/kvconfig"
)

const claudeFile = `{
  "globalShortcut": "Ctrl+Space",
  "mcpServers": {
    "github": {"command": "npx", "args": ["-y", "server-github", "--verbose"], "env": {"GITHUB_TOKEN": "ghp_imp0rted"}},
    "fs":     {"command": "fs-server", "args": ["/data", "/tmp"]},
    "same":   {"type": "http", "url": "https://same.example/mcp"},
    "remote": {"type": "sse", "url": "https://remote.example/sse", "headers": {"Authorization": "Bearer tok_imp0rted"}},
    "stream": {"type": "streamable-http", "url": "https://stream.example/mcp"},
    "old":    {"command": "old-server", "disabled": true}
  }
}`

func TestImportDryRunThenWrite(t *testing.T) {
	h := newHarness(t)
	fsRev := h.kvPut("role.coder.fs", `{"command":"fs-server","args":["/data"]}`)
	sameRev := h.kvPut("role.coder.same", `{"url":"https://same.example/mcp"}`)
	file := writeFile(t, "claude_desktop_config.json", claudeFile)

	r := h.must(ExitOK, "import", file, "--scope", "role:coder", "--dry-run")
	contains(t, "dry run", r.stdout, "(dry run: nothing written)", `ignored top-level key(s) "globalShortcut"`,
		"role.coder.github  new", "+ env.GITHUB_TOKEN: ****", `+ command: "npx"`,
		"role.coder.fs  changed", `~ args: **** -> ****`, // args are secrets too (tokens end up there)
		"role.coder.same  unchanged", "role.coder.old  skipped", `"disabled": true`,
		"+ headers.Authorization: ****", `+ transport: "sse"`, `role.coder.stream  new`, `+ transport: "http"`,
		"6 server(s): 3 new, 1 changed, 1 unchanged, 1 skipped")
	lacks(t, "dry run", r.stdout+r.stderr, "ghp_imp0rted", "tok_imp0rted", "wrote")
	for _, k := range []string{"role.coder.github", "role.coder.remote", "role.coder.stream"} {
		if h.revision(k) != 0 {
			t.Errorf("dry run wrote %s", k)
		}
	}
	if h.revision("role.coder.fs") != fsRev {
		t.Error("dry run changed role.coder.fs")
	}
	r = h.must(ExitOK, "import", file, "--scope", "role:coder", "--dry-run", "--show-secrets")
	contains(t, "dry run --show-secrets", r.stdout, `+ env.GITHUB_TOKEN: "ghp_imp0rted"`)

	r = h.must(ExitOK, "import", file, "--scope", "role:coder", "--json")
	var rep importReport
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil || rep.DryRun || len(rep.Servers) != 6 {
		t.Fatalf("import --json: %v\n%s", err, r)
	}
	lacks(t, "import --json", r.stdout, "ghp_imp0rted", "tok_imp0rted")
	for _, it := range rep.Servers {
		wantWritten := it.Status == statusNew || it.Status == statusChanged
		if (it.Written != 0) != wantWritten || (wantWritten && h.revision(it.Key) != it.Written) {
			t.Errorf("%s: status %s written %d, KV revision %d", it.Key, it.Status, it.Written, h.revision(it.Key))
		}
	}
	if h.revision("role.coder.same") != sameRev || h.revision("role.coder.old") != 0 {
		t.Error("an unchanged or skipped server was written")
	}
	for key, want := range map[string]string{
		"role.coder.github": `"GITHUB_TOKEN":"ghp_imp0rted"`,
		"role.coder.remote": `"transport":"sse"`,
		"role.coder.stream": `"transport":"http"`,
		"role.coder.fs":     `"/tmp"`,
	} {
		if got := h.value(key); !strings.Contains(got, want) {
			t.Errorf("%s = %s, want it to contain %s", key, got, want)
		}
	}
	// Importing again writes nothing.
	r = h.must(ExitOK, "import", file, "--scope", "role:coder")
	contains(t, "second import", r.stdout, "5 unchanged, 1 skipped")
	lacks(t, "second import", r.stdout, "wrote")
}

func TestImportAllOrNothing(t *testing.T) {
	h := newHarness(t)
	file := writeFile(t, "cursor.json", `{"mcpServers":{
		"good":  {"command": "x"},
		"extra": {"command": "y", "envFile": ".env", "cwd": "/srv"}}}`)
	r := h.must(ExitInvalidConfig, "import", file, "--scope", "global")
	contains(t, "stderr", r.stderr, "nothing was written", `server "extra"`, `"cwd", "envFile"`, "--drop-unsupported")
	if h.revision("global.good") != 0 {
		t.Fatal("a valid entry was written although another was invalid")
	}
	r = h.must(ExitOK, "import", file, "--scope", "global", "--drop-unsupported")
	contains(t, "dropped", r.stdout, `note: dropped unsupported field "envFile"`, "global.extra  new", "global.good  new")
	if got := h.value("global.extra"); strings.Contains(got, "envFile") {
		t.Errorf("dropped field written: %s", got)
	}
	h.must(ExitInvalidConfig, "import", writeFile(t, "empty.json", `{"mcpServers":{}}`), "--scope", "global")
	r = h.must(ExitInvalidConfig, "import", writeFile(t, "plain.json", `{"command":"x"}`), "--scope", "global")
	contains(t, "not an mcpServers file", r.stderr, `no "mcpServers" object`)
}

func TestConvertEntry(t *testing.T) {
	for _, tc := range []struct {
		name, entry string
		drop        bool
		want        string // value, or "error: <substring>", or "skipped"
	}{
		{"a", `{"command":"x","args":["1"],"env":{"K":"v"}}`, false, `{"args":["1"],"command":"x","env":{"K":"v"}}`},
		{"a", `{"type":"stdio","command":"x"}`, false, `{"command":"x","transport":"stdio"}`},
		{"a", `{"type":"streamableHttp","url":"https://x.example"}`, false, `{"transport":"http","url":"https://x.example"}`},
		{"a", `{"type":"sse","transport":"sse","url":"https://x.example"}`, false, `{"transport":"sse","url":"https://x.example"}`},
		{"a", `{"type":"sse","transport":"http","url":"https://x.example"}`, false, "error: disagree"},
		{"a", `{"type":"websocket","url":"wss://x"}`, false, `error: "websocket" is not one of`},
		{"a", `{"command":"x","disabled":true}`, false, "skipped"},
		{"a", `{"command":"x","disabled":false}`, false, `{"command":"x"}`},
		{"a", `{"command":"x","autoApprove":[]}`, false, `error: unsupported field(s) "autoApprove"`},
		{"a", `{"command":"x","autoApprove":[]}`, true, `{"command":"x"}`},
		{"a", `{"command":"x","args":["--token","${env:TOKEN}"]}`, false, `error: field "args[1]" holds a ${...} variable`},
		{"a", `{"command":"x","timeout":60}`, false, `error: field "timeout"`},
		{"a", `{"command":"x","idempotent_tools":["get","list"]}`, false, `{"command":"x","idempotent_tools":["get","list"]}`},
		{"a", `{"command":"x","idempotent_tools":"get"}`, false, `error: field "idempotent_tools"`},
		{"a", `{"url":"https://x.example","command":"y"}`, false, `error: field "transport"`},
		{"a", `"npx"`, false, "error: must be a JSON object"},
		{"a.b", `{"command":"x"}`, false, "error: rename it"},
		{"a", `{"command":"x","command":"y"}`, false, `error: field(s) "command" appear more than once`},
		{"a", `{"command":"x","env":{"K":"a","K":"b"}}`, false, `error: kvconfig: invalid config: field "env.K": duplicate key`},
	} {
		e, err := convertEntry(tc.name, json.RawMessage(tc.entry), tc.drop)
		var got string
		switch {
		case err != nil:
			got = "error: " + err.Error()
		case e.Skipped != "":
			got = "skipped"
		default:
			got = string(e.Value)
		}
		if got != tc.want && !(strings.HasPrefix(tc.want, "error: ") && strings.HasPrefix(got, "error: ") &&
			strings.Contains(got, strings.TrimPrefix(tc.want, "error: "))) {
			t.Errorf("convertEntry(%s, %s, drop=%v) = %s, want %s", tc.name, tc.entry, tc.drop, got, tc.want)
		}
	}
}

// TestImportConflictPerKey: a key written by someone else between the diff
// and the write is not overwritten; the other keys are written; exit 5.
func TestImportConflictPerKey(t *testing.T) {
	h := newHarness(t)
	h.kvPut("global.a", `{"command":"a-old"}`)
	c := &CLI{}
	c.defaults()
	a := &app{cli: c, out: io.Discard, g: globals{url: h.srv.URL(), timeout: 5 * time.Second}}
	defer func() { a.nc.Close() }()
	ctx := context.Background()
	kv, err := a.configs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	f, err := parseServersFile([]byte(`{"mcpServers":{"a":{"command":"a-new"},"b":{"command":"b"}}}`), false)
	if err != nil {
		t.Fatal(err)
	}
	var items []importItem
	for _, e := range f.Entries {
		it, err := a.planItem(ctx, kv, kvconfig.ScopeGlobal, "", e)
		if err != nil {
			t.Fatal(err)
		}
		items = append(items, it)
	}
	theirs := h.kvPut("global.a", `{"command":"a-theirs"}`) // another operator, after our diff
	err = a.applyImport(ctx, kv, items)
	if ExitCode(err) != ExitConflict || !strings.Contains(err.Error(), "global.a changed while importing") {
		t.Fatalf("applyImport: %v", err)
	}
	if items[0].Status != statusConflict || items[1].Written == 0 {
		t.Errorf("items: %+v", items)
	}
	if h.revision("global.a") != theirs || !strings.Contains(h.value("global.a"), "a-theirs") {
		t.Error("the conflicting key was overwritten")
	}
}

// TestImportDiffIsWhatIsStored: the dry run's diff of every key is exactly
// the difference between the stored value before and after the import:
// no field the import does not write (a transport inferred from command or
// url), none missing. A file entry that is the same config as the stored
// one, spelt differently, is unchanged and not written.
func TestImportDiffIsWhatIsStored(t *testing.T) {
	h := newHarness(t)
	before := map[string]string{
		"global.fs":   `{"command":"fs-server","args":["/data"]}`,
		"global.same": `{"url":"https://same.example/mcp"}`,
		"global.bad":  `{"url":"https://bad.example/mcp","timout":"1s"}`,
	}
	for k, v := range before {
		h.kvPut(k, v)
	}
	sameRev := h.revision("global.same")
	file := writeFile(t, "mcp.json", `{"mcpServers":{
		"github": {"command": "npx", "args": ["-y", "server-github"], "env": {"GITHUB_TOKEN": "ghp_x"}},
		"fs":     {"type": "stdio", "command": "fs-server", "args": ["/data", "/tmp"]},
		"web":    {"url": "https://web.example/mcp", "timeout": "20s"},
		"remote": {"type": "sse", "url": "https://remote.example/sse"},
		"same":   {"type": "http", "url": "https://same.example/mcp"},
		"bad":    {"url": "https://bad.example/mcp"}}}`)

	r := h.must(ExitOK, "import", file, "--scope", "global", "--dry-run", "--show-secrets")
	contains(t, "dry run", r.stdout, "global.github  new", `+ command: "npx"`, "global.same  unchanged", "same config", `+ transport: "sse"`)
	for _, l := range strings.Split(r.stdout, "\n") {
		if d := strings.TrimSpace(l); strings.HasPrefix(d, "+ transport") && d != `+ transport: "sse"` && d != `+ transport: "stdio"` {
			t.Errorf("dry run shows a transport the import does not store: %q\n%s", l, r.stdout)
		}
	}
	r = h.must(ExitOK, "import", file, "--scope", "global", "--dry-run", "--show-secrets", "--json")
	var plan importReport
	if err := json.Unmarshal([]byte(r.stdout), &plan); err != nil {
		t.Fatal(err)
	}
	h.must(ExitOK, "import", file, "--scope", "global")
	if h.revision("global.same") != sameRev {
		t.Error("global.same was written though it is the same config")
	}
	for _, it := range plan.Servers {
		old := map[string]string{}
		if v, ok := before[it.Key]; ok {
			old = mustFlatten(t, v)
		}
		now := mustFlatten(t, h.value(it.Key))
		want := maps.Clone(old)
		for _, c := range it.Changes {
			switch c.Op {
			case "added", "changed":
				want[c.Field] = c.New
			case "removed":
				delete(want, c.Field)
			}
		}
		if it.Status == statusUnchanged {
			if len(it.Changes) != 0 {
				t.Errorf("%s: unchanged with changes %+v", it.Key, it.Changes)
			}
			continue
		}
		if !maps.Equal(want, now) {
			t.Errorf("%s: stored before %v, diff %+v, so want %v; stored after %v", it.Key, old, it.Changes, want, now)
		}
	}
}

func mustFlatten(t *testing.T, v string) map[string]string {
	t.Helper()
	m, err := flatten([]byte(v))
	if err != nil {
		t.Fatalf("flatten %s: %v", v, err)
	}
	return m
}
