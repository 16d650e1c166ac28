package test

// The live fleet dashboard in a real headless Chromium (issue 6): a real
// supervisor, a real agentproto.Client, and a zombie made the way it
// happens in production — the server drops the agent's command
// subscription after a permission change while its heartbeats go on.

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/internal/natstest"
	"github.com/tether-dev/tether/internal/suptest"
	"github.com/tether-dev/tether/supervisor"
)

// dashboardArtifacts is where the screenshots are kept, checked in. A run
// of the browser tests writes them there only with
// TEST_UPDATE_ARTIFACTS=1 (so a test run leaves the tree clean), and
// always the git-ignored dashboard-failure.png of a failed wait; otherwise
// into the test's temporary directory.
const dashboardArtifacts = "artifacts"

// xssPayload is put by a hostile agent into every free-text field it
// reports; the page must show it as text and never run it.
const xssPayload = `<img src=x onerror="window.__pwned=1"><b>bold</b>`

func TestDashboardBrowser(t *testing.T) {
	browser := findBrowser(t)
	start := time.Now()
	const id = "dash-1"
	url, deny := jsPermissionServer(t, subj.Command(id))

	cfg := supervisor.DefaultConfig()
	cfg.NATSURL, cfg.User, cfg.Password = url, "sup", "pw"
	cfg.HTTPAddr = "127.0.0.1:0"
	cfg.WatchCheckInterval, cfg.ReconnectWait = 50*time.Millisecond, 10*time.Millisecond
	cfg.Logger = zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	f := &cfg.Fleet
	f.HeartbeatInterval, f.CheckInterval = 50*time.Millisecond, 10*time.Millisecond
	f.ProbeInterval, f.ProbeTimeout, f.ResendInterval = 50*time.Millisecond, 100*time.Millisecond, 100*time.Millisecond
	f.PersistInterval = 20 * time.Millisecond
	f.QuarantineAfter = 100 // the zombie is held on purpose; do not quarantine it
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Second)
	defer cancel()
	sup, err := supervisor.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sup.Close)
	if err := sup.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	b := sup.Buckets()
	if _, err := b.Agents.Put(ctx, id, []byte(`{"role":"coder"}`)); err != nil {
		t.Fatal(err)
	}
	suptest.Register(t, sup, "coder", id)
	suptest.Register(t, sup, "viewer", "html-escape-check")
	if _, err := b.Configs.Put(ctx, "global.github", []byte(`{"url":"https://mcp.github.example/mcp","headers":{"Authorization":"Bearer sekrit-global"}}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Configs.Put(ctx, "role.coder.github", []byte(`{"url":"https://mcp.github.example/coder?token=sekrit-query","headers":{"Authorization":"Bearer sekrit-role"}}`)); err != nil {
		t.Fatal(err)
	}

	acfg := faultConfig(t, url, id)
	acfg.User, acfg.Password = "agent", "pw"
	acfg.SkipInitialResolve = false // heartbeats carry the config revisions
	startAgent(t, acfg)
	startHostileAgent(t, url, "html-escape-check")

	bctx := startBrowser(t, ctx, browser)
	base := "http://" + sup.HTTPAddr()
	if err := chromedp.Do(bctx, chromedp.Navigate(base+"/")); err != nil {
		t.Fatalf("open the dashboard: %v", err)
	}
	// A marker that a reload would wipe: every change below must arrive live.
	if _, err := chromedp.Run(bctx, chromedp.Evaluate[int](`window.__noReload = 42`)); err != nil {
		t.Fatal(err)
	}
	stateJS := `(() => { const p = document.querySelector('#rows tr[data-agent="` + id + `"] td.state .pill'); return p ? p.textContent : ''; })()`
	loaded := time.Now()
	waitPage(t, bctx, "agent "+id+" healthy in the table", 10*time.Second, stateJS, func(s string) bool { return s == "healthy" })
	t.Logf("page open → %s healthy in the table: %v", id, time.Since(loaded).Round(time.Millisecond))
	waitPage(t, bctx, "configs column current", 5*time.Second,
		`document.querySelector('#rows tr[data-agent="`+id+`"] td.configs').textContent`,
		func(s string) bool { return s == "github r2 · current" })

	fault := time.Now()
	deny(true) // the server drops the command subscription; heartbeats go on
	waitPage(t, bctx, "agent "+id+" zombie on the page", 10*time.Second, stateJS, func(s string) bool { return s == "zombie" })
	zombieShown := time.Now()
	waitPage(t, bctx, "zombie count chip", 2*time.Second,
		`document.querySelector('#counts [data-state="zombie"] .chip-n').textContent`, func(s string) bool { return s == "1" })
	noSideScroll(t, bctx, "fleet page with a zombie")
	screenshot(t, bctx, "dashboard-zombie.png")

	deny(false)
	healed := time.Now()
	waitPage(t, bctx, "agent "+id+" healthy again", 10*time.Second, stateJS, func(s string) bool { return s == "healthy" })
	recovered := time.Now()
	t.Logf("fault → zombie on the page %v; permission back → healthy on the page %v",
		zombieShown.Sub(fault).Round(time.Millisecond), recovered.Sub(healed).Round(time.Millisecond))

	// The timeline and the change list recorded the episode.
	waitPage(t, bctx, "zombie marks in the SVG timeline", 3*time.Second,
		`String(document.querySelectorAll('#timeline rect.mark-zombie').length)`, func(s string) bool { return s != "0" })
	waitPage(t, bctx, "zombie and recovery in the change list", 3*time.Second,
		`String([...document.querySelectorAll('#events .event')].filter(li => li.textContent.includes('`+id+`')).map(li => li.textContent).join('|'))`,
		func(s string) bool {
			return strings.Contains(s, "healthy → zombie") && strings.Contains(s, "zombie → healthy")
		})
	waitPage(t, bctx, "latency chart drawn", 3*time.Second,
		`String(document.querySelectorAll('#latency polyline').length)`, func(s string) bool { return s != "0" })

	// Hostile text is shown as text, never run.
	got, err := chromedp.Run(bctx, chromedp.Evaluate[string](`JSON.stringify({
		pwned: window.__pwned || 0,
		imgs: document.querySelectorAll('main img, main script').length,
		title: (document.querySelector('#rows tr[data-agent="html-escape-check"] td.configs') || {}).title || '',
		reason: (document.querySelector('#rows tr[data-agent="html-escape-check"] td.calls') || {}).title || '',
		noReload: window.__noReload || 0})`))
	if err != nil {
		t.Fatal(err)
	}
	var page struct {
		Pwned, Imgs, NoReload int
		Title, Reason         string
	}
	if err := json.Unmarshal([]byte(got), &page); err != nil {
		t.Fatal(err)
	}
	if page.Pwned != 0 || page.Imgs != 0 || !strings.Contains(page.Title, xssPayload) || !strings.Contains(page.Reason, xssPayload) {
		t.Errorf("hostile agent text not shown verbatim as text: %+v", page)
	}
	if page.NoReload != 42 {
		t.Errorf("the page reloaded (marker %d): updates must arrive live", page.NoReload)
	}
	noSideScroll(t, bctx, "fleet page")
	shot := screenshot(t, bctx, "dashboard.png")

	// One agent's page: every scope explained, secrets masked.
	if err := chromedp.Do(bctx, chromedp.Navigate(base+"/agent/"+id)); err != nil {
		t.Fatal(err)
	}
	explain := waitPage(t, bctx, "explain output for github", 5*time.Second,
		`document.getElementById('explain').textContent`,
		func(s string) bool {
			return strings.Contains(s, "role.coder.github") && strings.Contains(s, "global.github")
		})
	for _, want := range []string{"winner", "shadowed", "agent.dash-1.github", "****"} {
		if !strings.Contains(explain, want) {
			t.Errorf("explain output lacks %q: %s", want, explain)
		}
	}
	all, err := chromedp.Run(bctx, chromedp.Evaluate[string](`document.documentElement.textContent`))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(all, "sekrit") {
		t.Errorf("a secret reached the agent page")
	}
	waitPage(t, bctx, "agent page live state", 3*time.Second, `document.getElementById('state-pill').textContent`,
		func(s string) bool { return s == "healthy" })
	noSideScroll(t, bctx, "agent page")
	screenshot(t, bctx, "dashboard-agent.png")
	t.Logf("dashboard screenshot: %s (total %v)", shot, time.Since(start).Round(time.Millisecond))
}

// findBrowser returns Chromium's path, or skips (fails under CI=true).
func findBrowser(t *testing.T) string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	natstest.Missing(t, "chromium", "apt-get install chromium")
	return ""
}

// startBrowser starts headless Chromium with a fresh profile; it is closed
// (and waited for) on cleanup.
func startBrowser(t *testing.T, ctx context.Context, path string) context.Context {
	actx, acancel := chromedp.NewExecAllocator(ctx,
		chromedp.ExecPath(path),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 800), // a laptop: the pages must fit it (issue 16)
	)
	bctx, bcancel := chromedp.NewContext(actx)
	t.Cleanup(func() {
		cctx, ccancel := context.WithTimeout(bctx, 5*time.Second)
		defer ccancel()
		_ = chromedp.Cancel(cctx)
		bcancel()
		acancel()
	})
	if err := chromedp.Do(bctx); err != nil {
		t.Fatalf("start %s: %v", path, err)
	}
	return bctx
}

// waitPage polls a JavaScript expression (a string) until ok accepts it,
// within a deadline; on failure it saves a screenshot and fails.
func waitPage(t *testing.T, ctx context.Context, what string, within time.Duration, js string, ok func(string) bool) string {
	t.Helper()
	deadline := time.Now().Add(within)
	last, lastErr := "", error(nil)
	for time.Now().Before(deadline) {
		v, err := chromedp.Run(ctx, chromedp.Evaluate[string](js))
		if err == nil && ok(v) {
			return v
		}
		last, lastErr = v, err
		time.Sleep(25 * time.Millisecond)
	}
	path := screenshot(t, ctx, "dashboard-failure.png")
	t.Fatalf("%s: not within %v (last value %q, error %v); screenshot %s", what, within, last, lastErr, path)
	return ""
}

// screenshot saves a full-page PNG under test/artifacts and returns its path.
func screenshot(t *testing.T, ctx context.Context, name string) string {
	t.Helper()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Errorf("screenshot %s: %v", name, err)
		return ""
	}
	dir := t.TempDir()
	if os.Getenv("TEST_UPDATE_ARTIFACTS") == "1" || name == "dashboard-failure.png" {
		dir = dashboardArtifacts
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	abs, _ := filepath.Abs(path)
	return abs
}

// jsPermissionServer is natstest.RunPermissionServer with JetStream.
func jsPermissionServer(t *testing.T, subject string) (url string, deny func(bool)) {
	s, deny := natstest.RunPermissionServer(t, subject)
	return s.URL(), deny
}

// startHostileAgent speaks the heartbeat contract on a plain connection
// (it answers probes, so it stays healthy) and puts xssPayload into every
// free-text field a heartbeat has.
func startHostileAgent(t *testing.T, url, id string) {
	nc := natstest.Connect(t, url, nats.UserInfo("sup", "pw"), nats.CustomInboxPrefix(agentproto.InboxPrefix(id)))
	var mu sync.Mutex
	probe := ""
	if _, err := nc.Subscribe(subj.Command(id), func(m *nats.Msg) {
		var c agentproto.Command
		if json.Unmarshal(m.Data, &c) == nil && c.Type == agentproto.CmdProbe {
			mu.Lock()
			probe = c.Nonce
			mu.Unlock()
		}
	}); err != nil {
		t.Fatal(err)
	}
	stop, done := make(chan struct{}), make(chan struct{})
	t.Cleanup(func() { close(stop); <-done })
	go func() {
		defer close(done)
		tk := time.NewTicker(50 * time.Millisecond)
		defer tk.Stop()
		for seq := 1; ; seq++ {
			mu.Lock()
			hb := map[string]any{"agent": id, "instance": id + "-1", "seq": seq, "interval_ms": 50,
				"sent_at": time.Now().UTC().Format(time.RFC3339Nano), "probe_ack": probe,
				"conn":    map[string]any{"state": "connected", "reconnects": 0, "rtt_ms": 0.4},
				"configs": map[string]any{"github": map[string]any{"revision": 1, "applied": false, "error": xssPayload}},
				"calls":   map[string]any{"ok": 3, "retried": 1, "failed": 1, "last_error_class": xssPayload}}
			mu.Unlock()
			data, _ := json.Marshal(hb)
			_ = nc.PublishMsg(&nats.Msg{Subject: subj.Heartbeat(id), Reply: agentproto.HeartbeatReply(id), Data: data})
			select {
			case <-stop:
				return
			case <-tk.C:
			}
		}
	}()
}
