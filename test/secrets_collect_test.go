package test

// The outputs TestSecretsMaskedInEveryOutput reads: tetherctl, NATS
// replies and buckets, HTTP and the rendered dashboard.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/tether-dev/tether/supervisor/auth"
)

// remoteChanged is role.coder.remote with another header and query: the
// import diff shows old and new values of the same fields.
const remoteChanged = `{"url":"https://zzUsr7Qv1k:zzPwd7Qv1k@mcp.example.com/mcp/sk-zzKey7Qv1k/hooks/zzTok7Qv1k3m9x2p?token=zzQry7Qv1k&v=zzFrg7Qv1k",` +
	`"headers":{"Authorization":"Bearer zzHdr7Qv1k","X-Api-Key":"zzShd7Qv1k"},"timeout":"30s"}`

// collectTetherctl runs every tetherctl command that shows a config or an
// error about one, in human and --json form, as the operator.
func collectTetherctl(t *testing.T, out *outputs, url, dir string) {
	t.Helper()
	files := t.TempDir()
	file := func(name, body string) string {
		p := filepath.Join(files, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	github, remote := file("github.json", secretConfigs["agent.a7.github"]), file("remote.json", secretConfigs["role.coder.remote"])
	changed, broken := file("remote2.json", remoteChanged), file("broken.json", secretConfigs["role.coder.broken"])
	servers := file("servers.json", `{"mcpServers":{"github":`+secretConfigs["agent.a7.github"]+`,"remote":`+remoteChanged+`}}`)
	base := []string{"--nats-url", url, "--creds", filepath.Join(dir, auth.DirName, auth.OperatorFile)}
	named := strings.NewReplacer(files+string(filepath.Separator), "")
	// run runs one command; one that shows a config must succeed and show
	// the mask, so that a silent failure cannot pass as masked.
	run := func(mode []string, args ...string) string {
		t.Helper()
		code, got := tetherctlRun(t, append(append(append([]string{}, base...), mode...), args...)...)
		name := named.Replace("tetherctl " + strings.Join(append(append([]string{}, mode...), args...), " "))
		if showsConfig(args) && (code != 0 || !strings.Contains(got, "****")) {
			t.Errorf("%s: exit %d, no ****: %s", name, code, got)
		}
		out.add(name, []byte(got))
		return got
	}
	var cmds [][]string
	for _, key := range []string{"agent:a7 github", "role:coder remote", "global remote", "role:coder broken", "role:coder typo", "role:coder refused"} {
		cmds = append(cmds, append([]string{"get"}, strings.Fields(key)...), append([]string{"history"}, strings.Fields(key)...))
	}
	for _, server := range secretServers {
		cmds = append(cmds, []string{"resolve", "a7", server}, []string{"explain", "a7", server})
	}
	cmds = append(cmds, []string{"fleet"}, []string{"fleet", "--agent", "a7"},
		[]string{"validate", github, remote, servers}, []string{"validate", broken},
		[]string{"import", servers, "--scope", "role:coder", "--dry-run"},
		[]string{"put", "role:spare", "remote", remote}, []string{"put", "role:spare", "remote", changed},
		[]string{"import", servers, "--scope", "role:spare2"})
	for _, c := range cmds {
		for _, mode := range [][]string{nil, {"--json"}} {
			run(mode, c...)
		}
	}
	first := historyRevision(t, url, dir, "role.spare.remote")
	for _, mode := range [][]string{nil, {"--json"}} {
		run(mode, "rollback", "role:spare", "remote", strconv.FormatUint(first, 10))
		run(nil, "put", "role:spare", "remote", changed) // so that the next rollback writes again
	}
	// --show-secrets shows them: the same commands are not blind. (Their
	// output is not an output to check, so it goes around run.)
	show := []string{"--show-secrets"}
	shown := func(mode []string, args ...string) []byte {
		_, got := tetherctlRun(t, append(append(append([]string{}, base...), mode...), args...)...)
		return []byte(got)
	}
	showsAll(t, "tetherctl --show-secrets get agent:a7 github", shown(show, "get", "agent:a7", "github"), "zzEnv7Qv1k", "zzArg7Qv1k", "zzFlg7Qv1k")
	all := []string{"zzUsr7Qv1k", "zzPwd7Qv1k", "sk-zzKey7Qv1k", "zzTok7Qv1k3m9x2p", "zzQry7Qv1k", "zzFrg7Qv1k", "zzHdr7Qv1k"}
	showsAll(t, "tetherctl --show-secrets get role:coder remote", shown(show, "get", "role:coder", "remote"), all...)
	showsAll(t, "tetherctl --show-secrets --json resolve a7 remote", shown(append(show, "--json"), "resolve", "a7", "remote"), all...)
	showsAll(t, "tetherctl --show-secrets history role:coder remote", shown(show, "history", "role:coder", "remote"), all...)
	showsAll(t, "tetherctl --show-secrets get role:coder broken", shown(show, "get", "role:coder", "broken"), "zzBpw7Qv1k", "sk-zzBky7Qv1k", "zzBqy7Qv1k", "zzBfr7Qv1k")
	showsAll(t, "tetherctl --show-secrets import --dry-run", shown(show, "import", servers, "--scope", "role:coder", "--dry-run"), "zzShd7Qv1k", "zzEnv7Qv1k", "zzArg7Qv1k")
}

// showsConfig says whether a tetherctl command prints a config value: get,
// history, put, rollback, resolve of a valid server, a dry-run import.
func showsConfig(args []string) bool {
	switch args[0] {
	case "get", "history":
		return args[2] == "github" || args[2] == "remote"
	case "put", "rollback":
		return true
	case "resolve":
		return args[2] == "github" || args[2] == "remote"
	case "import":
		return slices.Contains(args, "--dry-run")
	}
	return false
}

// historyRevision is the first kept revision of key.
func historyRevision(t *testing.T, url, dir, key string) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	hist, err := operatorConfigs(t, url, dir).History(ctx, key)
	if err != nil || len(hist) < 2 {
		t.Fatalf("history of %s: %d revisions, %v", key, len(hist), err)
	}
	return hist[0].Revision()
}

// collectNATS reads mcp_fleet, explain and fleet.status replies, and the
// micro service's info and stats (which keep each endpoint's last error).
func collectNATS(t *testing.T, ctx context.Context, out *outputs, url, dir string) {
	t.Helper()
	nc := operatorConn(t, url, dir)
	js, _ := jetstream.New(nc)
	fkv, err := js.KeyValue(ctx, "mcp_fleet")
	if err != nil {
		t.Fatal(err)
	}
	keys, err := fkv.Keys(ctx)
	if err != nil || len(keys) == 0 {
		t.Fatalf("mcp_fleet keys: %v %v", keys, err)
	}
	for _, k := range keys {
		if e, err := fkv.Get(ctx, k); err == nil {
			out.add("mcp_fleet "+k, e.Value())
		}
	}
	reply := func(subject string, body []byte) {
		m, err := nc.Request(subject, body, 2*time.Second)
		if err != nil {
			t.Errorf("%s: %v", subject, err)
			return
		}
		out.add("reply of "+subject+" "+string(body), []byte(fmt.Sprint(m.Header)+" "+string(m.Data)))
	}
	for _, server := range secretServers {
		reply(subj.Explain("a7", server), nil)
	}
	reply(subj.FleetStatus(), nil)
	reply(subj.FleetStatus(), []byte(`{"agent":"a7"}`))
	for _, s := range []string{"$SRV.INFO.mcp-supervisor", "$SRV.PING.mcp-supervisor"} {
		reply(s, nil)
	}
	// A 422 whose message the service stats keep as the last error; the
	// running agent's own resolves may replace it in between, so ask again
	// (a bounded number of times) until the stats show it.
	for i := 0; ; i++ {
		if _, err := nc.Request(subj.Resolve("a7", "broken"), nil, 2*time.Second); err != nil {
			t.Fatal(err)
		}
		reply("$SRV.STATS.mcp-supervisor", nil)
		b := out.byOf["reply of $SRV.STATS.mcp-supervisor "]
		if strings.Contains(string(b), "role.coder.broken") {
			break
		}
		if i == 20 {
			t.Errorf("the service stats keep no error of role.coder.broken: %.300s", b)
			break
		}
	}
}

// collectHTTP reads every dashboard page and JSON endpoint, the live
// event stream and /metrics.
func collectHTTP(t *testing.T, ctx context.Context, out *outputs, addr string) {
	t.Helper()
	get := func(path string, within time.Duration) {
		rctx, cancel := context.WithTimeout(ctx, within)
		defer cancel()
		req, _ := http.NewRequestWithContext(rctx, http.MethodGet, "http://"+addr+path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Errorf("GET %s: %v", path, err)
			return
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body) // a stream ends with the deadline
		if resp.StatusCode != http.StatusOK || len(body) == 0 {
			t.Errorf("GET %s: %s, %d bytes, %v", path, resp.Status, len(body), err)
		}
		out.add("GET "+path, body)
	}
	for _, p := range []string{"/", "/agent/a7", "/api/fleet", "/api/timeline", "/api/agent/a7", "/api/agent/a8", "/metrics", "/healthz", "/readyz"} {
		get(p, 5*time.Second)
	}
	for _, p := range []string{"/events", "/events?agent=a7"} {
		get(p, 600*time.Millisecond)
	}
	if b := out.byOf["GET /api/agent/a7"]; !strings.Contains(string(b), `"****"`) || !strings.Contains(string(b), "mcp.example.com") {
		t.Errorf("/api/agent/a7 shows no masked config: %.400s", b)
	}
}

// collectBrowser renders the fleet page and a7's page in headless Chromium
// and keeps the resulting documents (text, attributes, titles).
func collectBrowser(t *testing.T, ctx context.Context, out *outputs, addr string) {
	bctx := startBrowser(t, ctx, findBrowser(t))
	base := "http://" + addr
	if err := chromedp.Do(bctx, chromedp.Navigate(base+"/")); err != nil {
		t.Fatal(err)
	}
	waitPage(t, bctx, "a7's configs in the table", 10*time.Second,
		`(() => { const r = document.querySelector('#rows tr[data-agent="a7"] td.configs'); return r ? r.textContent + ' ' + r.title : ''; })()`,
		func(s string) bool { return strings.Contains(s, "current") && strings.Contains(s, "remote") })
	keepDocument(t, bctx, out, "rendered fleet page")
	if err := chromedp.Do(bctx, chromedp.Navigate(base+"/agent/a7")); err != nil {
		t.Fatal(err)
	}
	waitPage(t, bctx, "a7's explain output", 10*time.Second, `document.getElementById('explain').textContent`,
		func(s string) bool {
			return strings.Contains(s, "role.coder.remote") && strings.Contains(s, "role.coder.broken")
		})
	keepDocument(t, bctx, out, "rendered agent page")
}

func keepDocument(t *testing.T, bctx context.Context, out *outputs, name string) {
	t.Helper()
	doc, err := chromedp.Run(bctx, chromedp.Evaluate[string](`JSON.stringify({html: document.documentElement.outerHTML, text: document.documentElement.innerText})`))
	if err != nil {
		t.Fatal(err)
	}
	var d struct{ HTML, Text string }
	if err := json.Unmarshal([]byte(doc), &d); err != nil {
		t.Fatal(err)
	}
	out.add(name, []byte(d.HTML+"\n"+d.Text))
}
