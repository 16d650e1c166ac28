package test

// What a new operator found on the dashboard (issue 16), in a real
// headless Chromium at 1280x800: a lost agent's last report shown as its
// present connection, failure totals red forever after recovery, a table
// wider than the window, an agent page empty until its first fetch, gone
// agents with pending commands, and the no-leader badge.

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/internal/natstest"
	"github.com/tether-dev/tether/internal/suptest"
	"github.com/tether-dev/tether/kvconfig"
	"github.com/tether-dev/tether/supervisor/dashboard"
	"github.com/tether-dev/tether/supervisor/fleet"
)

// longID is as long as an agent id may be: the table must still fit.
const longID = "agent-with-the-longest-id-an-operator-may-register-0123456789ab"

func TestDashboardBrowserStaleConnectionRatesAndGone(t *testing.T) {
	browser := findBrowser(t)
	srv := natstest.RunServer(t)
	cfg := suptest.Config(t, srv.URL())
	suptest.FastFleet(&cfg)
	cfg.HTTPAddr = "127.0.0.1:0"
	cfg.Fleet.GoneAfter = 2 * time.Second // lost for long enough to look at, then gone
	cfg.Fleet.QuarantineAfter = 100
	sup := suptest.Start(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	natstest.KVPut(t, sup.Buckets().Configs, "role.coder.github", `{"url":"https://mcp.github.example/coder"}`)
	suptest.Register(t, sup, "coder", "flaky-1", "recovered-1", "departing-1", longID)
	flaky := startScriptedAgent(t, srv.URL(), "flaky-1", scriptedBeat{})
	// Its failures were before the supervisor heard of it: history.
	startScriptedAgent(t, srv.URL(), "recovered-1", scriptedBeat{ok: 120, retried: 4, failed: 7, reconnects: 5})
	departing := startScriptedAgent(t, srv.URL(), "departing-1", scriptedBeat{})
	startScriptedAgent(t, srv.URL(), longID, scriptedBeat{})

	bctx := startBrowser(t, ctx, browser)
	base := "http://" + sup.HTTPAddr()
	if err := chromedp.Do(bctx, chromedp.Navigate(base+"/")); err != nil {
		t.Fatalf("open the dashboard: %v", err)
	}
	waitPage(t, bctx, "four agents healthy", 10*time.Second,
		`String(document.querySelectorAll('#rows tr.st-healthy').length)`, func(s string) bool { return s == "4" })
	cell := func(id, col string) string {
		return `(() => { const c = document.querySelector('#rows tr[data-agent="` + id + `"] td.` + col + `'); return c ? JSON.stringify({text: c.textContent, cls: c.className, title: c.title}) : ''; })()`
	}

	// A live agent's connection: as reported, with the report's age.
	waitPage(t, bctx, "live connection with its age", 3*time.Second, cell("flaky-1", "heard"), func(s string) bool {
		c := decodeCell(s)
		return strings.HasPrefix(c.Text, "connected, ") && strings.HasSuffix(c.Text, " ago") && !strings.Contains(c.Cls, "stale")
	})

	// Failures: totals always, red only for a rise within the window. One
	// agent's failures are from before (red forever on main), the other's
	// happen now.
	flaky.set(func(hb *scriptedBeat) { hb.ok, hb.retried, hb.failed, hb.reconnects = 30, 2, 3, 1 })
	win := waitPage(t, bctx, "recent failures red", 3*time.Second, cell("flaky-1", "calls"), func(s string) bool {
		c := decodeCell(s)
		return strings.Contains(c.Cls, "bad") && strings.HasPrefix(c.Text, "30 · 2 · 3")
	})
	window := dashboard.ConfigFor(cfg.Fleet.HeartbeatInterval).RateWindow
	label := fmtWindow(window)
	if c := decodeCell(win); c.Text != "30 · 2 · 3"+label+": 2 retried · 3 failed" {
		t.Errorf("flaky calls cell %q, want totals and %q", c.Text, label+": 2 retried · 3 failed")
	}
	waitPage(t, bctx, "recent reconnect", 3*time.Second, cell("flaky-1", "reconnects"), func(s string) bool {
		c := decodeCell(s)
		return c.Text == "1"+label+": 1 new" && strings.Contains(c.Cls, "warn")
	})
	waitPage(t, bctx, "old failures not red", 3*time.Second, cell("recovered-1", "calls"), func(s string) bool {
		c := decodeCell(s)
		return c.Text == "120 · 4 · 7"+label+": none" && !strings.Contains(c.Cls, "bad") && !strings.Contains(c.Cls, "warn")
	})
	waitPage(t, bctx, "old reconnects not coloured", 3*time.Second, cell("recovered-1", "reconnects"), func(s string) bool {
		c := decodeCell(s)
		return c.Text == "5"+label+": none" && !strings.Contains(c.Cls, "warn")
	})
	noSideScroll(t, bctx, "fleet page, four healthy agents")

	// The flaky agent's page: recent failures beside the totals.
	if err := chromedp.Do(bctx, chromedp.Navigate(base+"/agent/flaky-1")); err != nil {
		t.Fatal(err)
	}
	waitPage(t, bctx, "agent page: live connection", 3*time.Second, factJS("Connection"), func(s string) bool {
		c := decodeCell(s)
		return strings.HasPrefix(c.Text, "connected, ") && !strings.Contains(c.Cls, "stale")
	})
	waitPage(t, bctx, "agent page: totals", time.Second, factJS("Calls ok · retried · failed"), func(s string) bool {
		c := decodeCell(s)
		return c.Text == "30 · 2 · 3 in all" && !strings.Contains(c.Cls, "bad")
	})
	waitPage(t, bctx, "agent page: recent failures", time.Second, factJS("Last "+label), func(s string) bool {
		c := decodeCell(s)
		return c.Text == "2 retried · 3 failed · 1 reconnect" && strings.Contains(c.Cls, "bad")
	})
	if err := chromedp.Do(bctx, chromedp.Navigate(base+"/")); err != nil {
		t.Fatal(err)
	}
	waitPage(t, bctx, "fleet page again", 5*time.Second,
		`String(document.querySelectorAll('#rows tr').length)`, func(s string) bool { return s == "4" })

	// An agent goes silent: lost, its connection is history.
	departing.stop()
	stale := waitPage(t, bctx, "lost agent's connection stale", 5*time.Second, cell("departing-1", "heard"), func(s string) bool {
		c := decodeCell(s)
		return strings.HasPrefix(c.Text, "last reported connected, ") && strings.Contains(c.Cls, "stale")
	})
	if c := decodeCell(stale); !strings.Contains(c.Title, "last heartbeat reported") {
		t.Errorf("stale connection title %q", c.Title)
	}
	struck := waitPage(t, bctx, "struck connection state", time.Second,
		`getComputedStyle(document.querySelector('#rows tr[data-agent="departing-1"] td.heard .conn-state')).textDecorationLine`,
		func(s string) bool { return s != "" })
	if struck != "line-through" {
		t.Errorf("stale connection state decoration %q, want line-through", struck)
	}
	waitPage(t, bctx, "lost agent's RTT dimmed", time.Second, cell("departing-1", "rtt"), func(s string) bool {
		return strings.Contains(decodeCell(s).Cls, "muted")
	})
	// An operator's command waits for it while it is lost...
	if _, err := sup.Fleet().Send("departing-1", agentproto.CmdReconnect, nil, "operator"); err != nil {
		t.Fatal(err)
	}
	waitPage(t, bctx, "pending command of a lost agent", 3*time.Second, cell("departing-1", "pending"), func(s string) bool {
		return strings.HasSuffix(decodeCell(s).Text, " cmd") // 1, or 2 with a recovery from a flap under load
	})
	reason := waitPage(t, bctx, "lost reason", time.Second, cell("departing-1", "reason"), func(s string) bool {
		return strings.HasPrefix(decodeCell(s).Text, "no heartbeat for ")
	})
	if c := decodeCell(reason); c.Title != c.Text {
		t.Errorf("reason title %q, want the full reason %q", c.Title, c.Text)
	}
	noSideScroll(t, bctx, "fleet page, one agent lost")
	screenshot(t, bctx, "dashboard-stale.png")

	// ... and is dropped once it is gone: a gone agent owes nothing.
	waitPage(t, bctx, "agent gone", 5*time.Second,
		`document.querySelector('#rows tr[data-agent="departing-1"] td.state .pill').textContent`, func(s string) bool { return s == "gone" })
	waitPage(t, bctx, "no pending command once gone", 2*time.Second, cell("departing-1", "pending"), func(s string) bool {
		return decodeCell(s).Text == "—"
	})
	if got := sup.Fleet().Pending("departing-1"); len(got) != 0 {
		t.Errorf("gone agent still has pending commands: %+v", got)
	}
	waitPage(t, bctx, "gone agent's connection stale", time.Second, cell("departing-1", "heard"), func(s string) bool {
		return strings.Contains(decodeCell(s).Cls, "stale")
	})
	screenshot(t, bctx, "dashboard-gone.png")

	// The gone agent's page: its connection as history, nothing pending.
	if err := chromedp.Do(bctx, chromedp.Navigate(base+"/agent/departing-1")); err != nil {
		t.Fatal(err)
	}
	waitPage(t, bctx, "agent page: stale connection", 3*time.Second, factJS("Connection"), func(s string) bool {
		c := decodeCell(s)
		return strings.HasPrefix(c.Text, "last reported connected, ") && strings.Contains(c.Cls, "stale")
	})
	waitPage(t, bctx, "agent page: nothing pending", 3*time.Second,
		`String(document.querySelectorAll('#pending tbody tr').length) + ' ' + String(document.getElementById('pending-empty').hidden) + ' ' + document.getElementById('pending-empty').textContent`,
		func(s string) bool {
			return s == "0 false None: a gone agent is owed nothing; its pending commands were dropped."
		})
	noSideScroll(t, bctx, "agent page of a gone agent")
	screenshot(t, bctx, "dashboard-agent-gone.png")
}

// decodedCell is a table cell or fact as cell and factJS report it.
type decodedCell struct{ Text, Cls, Title string }

func decodeCell(s string) decodedCell {
	var c decodedCell
	_ = json.Unmarshal([]byte(s), &c)
	return c
}

// factJS reports the agent page's fact named name.
func factJS(name string) string {
	return `(() => { const f = [...document.querySelectorAll('#facts .fact')].find(f => f.querySelector('dt').textContent === ` + jsString(name) + `);
		const dd = f && f.querySelector('dd'); return dd ? JSON.stringify({text: dd.textContent, cls: dd.className}) : ''; })()`
}

func jsString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// fmtWindow is common.js's fmtWindow for windows under a minute or of
// whole minutes.
func fmtWindow(d time.Duration) string {
	if d%time.Minute == 0 {
		return strconv.Itoa(int(d/time.Minute)) + " min"
	}
	if s := d.Seconds(); s < 10 {
		return strconv.FormatFloat(s, 'f', 1, 64) + " s"
	}
	return strconv.Itoa(int(math.Round(d.Seconds()))) + " s"
}

// noSideScroll fails unless the page and every table in it fit the window
// without a horizontal scrollbar.
func noSideScroll(t *testing.T, ctx context.Context, where string) {
	t.Helper()
	got, err := chromedp.Run(ctx, chromedp.Evaluate[string](`JSON.stringify({
		inner: window.innerWidth,
		page: [document.documentElement.scrollWidth, document.documentElement.clientWidth],
		wraps: [...document.querySelectorAll('.table-wrap')].filter(w => w.offsetParent !== null && w.scrollWidth > w.clientWidth).map(w => (w.querySelector('table') || {}).id || '?')})`))
	if err != nil {
		t.Fatal(err)
	}
	var m struct {
		Inner int
		Page  [2]int
		Wraps []string
	}
	if err := json.Unmarshal([]byte(got), &m); err != nil {
		t.Fatal(err)
	}
	if m.Inner != 1280 {
		t.Fatalf("%s: window %d px wide, want 1280", where, m.Inner)
	}
	if m.Page[0] > m.Page[1] || len(m.Wraps) > 0 {
		path := screenshot(t, ctx, "dashboard-failure.png")
		t.Errorf("%s: scrolls sideways at 1280 px: page %d px wide in %d, tables wider than their box: %v; screenshot %s", where, m.Page[0], m.Page[1], m.Wraps, path)
	}
}

// scriptedBeat is what a scripted agent's next heartbeat reports.
type scriptedBeat struct {
	ok, retried, failed, reconnects uint64
}

// scriptedAgent speaks the heartbeat contract on a plain connection with
// counters the test sets; it answers probes, so it stays healthy until
// stop silences it.
type scriptedAgent struct {
	mu      sync.Mutex
	beat    scriptedBeat
	probe   string
	silence chan struct{}
	once    sync.Once
}

func (a *scriptedAgent) set(fn func(*scriptedBeat)) {
	a.mu.Lock()
	defer a.mu.Unlock()
	fn(&a.beat)
}

// stop ends its heartbeats (it stays connected, as a hung process does).
func (a *scriptedAgent) stop() { a.once.Do(func() { close(a.silence) }) }

func startScriptedAgent(t *testing.T, url, id string, first scriptedBeat) *scriptedAgent {
	nc := natstest.Connect(t, url, nats.CustomInboxPrefix(agentproto.InboxPrefix(id)))
	a := &scriptedAgent{beat: first, silence: make(chan struct{})}
	if _, err := nc.Subscribe(subj.Command(id), func(m *nats.Msg) {
		var c agentproto.Command
		if json.Unmarshal(m.Data, &c) == nil && c.Type == agentproto.CmdProbe {
			a.mu.Lock()
			a.probe = c.Nonce
			a.mu.Unlock()
		}
	}); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop); <-done })
	go func() {
		defer close(done)
		tk := time.NewTicker(50 * time.Millisecond)
		defer tk.Stop()
		for seq := 1; ; seq++ {
			a.mu.Lock()
			b := a.beat
			hb := map[string]any{"agent": id, "instance": id + "-1", "seq": seq, "interval_ms": 50,
				"sent_at": time.Now().UTC().Format(time.RFC3339Nano), "probe_ack": a.probe,
				"conn":  map[string]any{"state": "connected", "reconnects": b.reconnects, "rtt_ms": 0.4},
				"calls": map[string]any{"ok": b.ok, "retried": b.retried, "failed": b.failed}}
			a.mu.Unlock()
			data, _ := json.Marshal(hb)
			_ = nc.PublishMsg(&nats.Msg{Subject: subj.Heartbeat(id), Reply: agentproto.HeartbeatReply(id), Data: data})
			select {
			case <-stop:
				return
			case <-a.silence:
				<-stop
				return
			case <-tk.C:
			}
		}
	}()
	return a
}

func TestDashboardBrowserAgentPagePaintsBeforeAnyFetch(t *testing.T) {
	browser := findBrowser(t)
	srv := natstest.RunServer(t)
	cfg := suptest.Config(t, srv.URL())
	suptest.FastFleet(&cfg)
	cfg.HTTPAddr = "127.0.0.1:0"
	cfg.Fleet.QuarantineAfter = 100 // a machine under load may make it flap: not the point here
	sup := suptest.Start(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Second)
	defer cancel()
	natstest.KVPut(t, sup.Buckets().Configs, "role.coder.github", `{"url":"https://mcp.github.example/coder"}`)
	suptest.Register(t, sup, "coder", "steady-1")
	startScriptedAgent(t, srv.URL(), "steady-1", scriptedBeat{})
	natstest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if st, ok := sup.Fleet().Agent("steady-1"); !ok || st.State != fleet.StateHealthy {
			return errNotYet
		}
		return nil
	})

	bctx := startBrowser(t, ctx, browser)
	// A tab where nothing the page asks for ever answers: no fetch, no
	// event stream. What it shows, it got with the page.
	tab, closeTab := chromedp.NewContext(bctx)
	defer closeTab()
	if err := chromedp.Do(tab, chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		_, err := cdp.Call(ctx, tg, page.AddScriptToEvaluateOnNewDocument, page.AddScriptToEvaluateOnNewDocumentParams{Source: `
			window.__asked = [];
			window.fetch = (u) => { window.__asked.push(String(u)); return new Promise(() => {}); };
			window.EventSource = function (u) { window.__asked.push(String(u)); this.readyState = 0; this.addEventListener = () => {}; this.close = () => {}; };`})
		return err
	})); err != nil {
		t.Fatal(err)
	}
	if err := chromedp.Do(tab, chromedp.Navigate("http://"+sup.HTTPAddr()+"/agent/steady-1")); err != nil {
		t.Fatal(err)
	}
	got := waitPage(t, tab, "agent painted from the page itself", 2*time.Second, `JSON.stringify({
		pill: document.getElementById('state-pill').textContent,
		loading: document.getElementById('loading').hidden,
		facts: document.getElementById('facts').textContent,
		explain: document.getElementById('explain').textContent,
		asked: window.__asked || []})`, func(s string) bool { return strings.Contains(s, `"loading":true`) })
	var p struct {
		Pill, Facts, Explain string
		Loading              bool
		Asked                []string
	}
	if err := json.Unmarshal([]byte(got), &p); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains([]string{"healthy", "suspect", "lost"}, p.Pill) || !strings.Contains(p.Facts, "connected, ") || !strings.Contains(p.Explain, "role.coder.github") {
		t.Errorf("agent page without any fetch: %+v", p)
	}
	for _, u := range p.Asked {
		if strings.Contains(u, "/api/agent/") {
			t.Errorf("the page fetched %s at once although it came with the agent", u)
		}
	}
	if len(p.Asked) != 1 || !strings.HasPrefix(p.Asked[0], "/events?agent=steady-1") {
		t.Errorf("requests made: %v, want the event stream only", p.Asked)
	}
	noSideScroll(t, tab, "agent page")
	screenshot(t, tab, "dashboard-agent-initial.png")
}

// errNotYet is a CheckFor condition not met yet.
var errNotYet = errors.New("not yet")

// leaderSource is a dashboard.Source of one healthy agent whose
// leadership the test sets.
type leaderSource struct {
	mu       sync.Mutex
	holder   string
	noLeader time.Duration
}

func (s *leaderSource) set(holder string, noLeader time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.holder, s.noLeader = holder, noLeader
}

func (s *leaderSource) AgentIDs() []string { return []string{"a1"} }
func (s *leaderSource) Agent(id string) (fleet.AgentStatus, bool) {
	if id != "a1" {
		return fleet.AgentStatus{}, false
	}
	now := time.Now()
	return fleet.AgentStatus{Agent: id, State: fleet.StateHealthy, Since: now.Add(-time.Minute), LastHeard: now, SilentMS: 20,
		IntervalMS: 1000, Conn: fleet.ConnInfo{State: "connected", RTTMS: 0.5}}, true
}
func (s *leaderSource) Pending(string) []agentproto.Command      { return nil }
func (s *leaderSource) MassSilence() bool                        { return false }
func (s *leaderSource) Leader() bool                             { return false }
func (s *leaderSource) InvalidEntries(int) []fleet.InvalidEntry  { return nil }
func (s *leaderSource) UnconfiguredRoles(int) []kvconfig.RoleUse { return nil }
func (s *leaderSource) Leadership() (holder string, d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.holder, s.noLeader
}

func TestDashboardBrowserNoLeaderBadge(t *testing.T) {
	browser := findBrowser(t)
	src := &leaderSource{}
	src.set("", 7*time.Second)
	d := dashboard.New(dashboard.ConfigFor(50*time.Millisecond), src, func() *kvconfig.Index { return nil }, zerolog.New(zerolog.NewTestWriter(t)))
	mux := http.NewServeMux()
	d.Routes(mux)
	ts := httptest.NewServer(mux)
	t.Cleanup(ts.Close)
	d.Start()
	t.Cleanup(d.Close) // before ts.Close: open streams end first
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	bctx := startBrowser(t, ctx, browser)
	if err := chromedp.Do(bctx, chromedp.Navigate(ts.URL+"/")); err != nil {
		t.Fatal(err)
	}
	badge := `(() => { const b = document.getElementById('role-badge'); return JSON.stringify({text: b.textContent, cls: b.className, shown: b.offsetParent !== null}); })()`
	waitPage(t, bctx, "no-leader badge", 5*time.Second, badge, func(s string) bool {
		return s == `{"text":"no leader for 7 s: no replica sends commands","cls":"badge bad","shown":true}`
	})
	screenshot(t, bctx, "dashboard-no-leader.png")
	// A replica takes the lease: the badge says who commands, live.
	src.set("replica-b", 0)
	waitPage(t, bctx, "follower badge", 5*time.Second, badge, func(s string) bool {
		return s == `{"text":"follower (read-only: replica replica-b sends commands)","cls":"badge warn","shown":true}`
	})
}
