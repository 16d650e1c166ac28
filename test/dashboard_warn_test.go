package test

// What the operator on main never saw (issue 12): invalid KV entries and a
// role that no config names, on the dashboard in a real headless
// Chromium, arriving live and leaving when fixed.

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/tether-dev/tether/internal/natstest"
	"github.com/tether-dev/tether/internal/suptest"
)

func TestDashboardBrowserShowsWarningsAndInvalidEntries(t *testing.T) {
	browser := findBrowser(t)
	srv := natstest.RunServer(t)
	cfg := suptest.Config(t, srv.URL())
	suptest.FastFleet(&cfg)
	cfg.HTTPAddr = "127.0.0.1:0"
	sup := suptest.Start(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Second)
	defer cancel()
	b := sup.Buckets()
	natstest.KVPut(t, b.Configs, "global.github", `{"url":"https://mcp.github.example/mcp"}`)
	natstest.KVPut(t, b.Configs, "role.coder.github", `{"url":"https://mcp.github.example/coder"}`)
	suptest.Register(t, sup, "coderz", "typo-1")
	suptest.Register(t, sup, "coder", "fine-1")
	for _, id := range []string{"typo-1", "fine-1"} {
		acfg := faultConfig(t, srv.URL(), id)
		acfg.SkipInitialResolve = false
		startAgent(t, acfg)
	}

	bctx := startBrowser(t, ctx, browser)
	base := "http://" + sup.HTTPAddr()
	if err := chromedp.Do(bctx, chromedp.Navigate(base+"/")); err != nil {
		t.Fatalf("open the dashboard: %v", err)
	}
	if _, err := chromedp.Run(bctx, chromedp.Evaluate[int](`window.__noReload = 42`)); err != nil {
		t.Fatal(err)
	}
	waitPage(t, bctx, "both agents in the table", 10*time.Second,
		`String(document.querySelectorAll('#rows tr').length)`, func(s string) bool { return s == "2" })

	// The role no config names: a notice above the table and a flag in the row.
	notice := waitPage(t, bctx, "role notice", 5*time.Second,
		`document.getElementById('role-notice').hidden ? '' : document.getElementById('role-list').textContent`,
		func(s string) bool { return s != "" })
	if want := `role "coderz" is named by no config in mcp_configs: agent typo-1 gets global configs only; check the role in mcp_agents`; !strings.Contains(notice, want) {
		t.Errorf("role notice %q lacks %q", notice, want)
	}
	waitPage(t, bctx, "flagged role cell", 3*time.Second,
		`(() => { const c = document.querySelector('#rows tr[data-agent="typo-1"] td.role'); return c ? c.textContent + '|' + c.className + '|' + c.title : ''; })()`,
		func(s string) bool {
			return strings.HasPrefix(s, "coderz ⚠|role warn|role \"coderz\" is named by no config")
		})
	waitPage(t, bctx, "unflagged role cell", 3*time.Second,
		`document.querySelector('#rows tr[data-agent="fine-1"] td.role').textContent`, func(s string) bool { return s == "coder" })
	if hidden := waitPage(t, bctx, "no invalid panel yet", 3*time.Second,
		`String(document.getElementById('invalid-panel').hidden)`, func(s string) bool { return s != "" }); hidden != "true" {
		t.Errorf("invalid panel shown with no invalid entry")
	}

	// Invalid entries appear live: a malformed value (with a secret in it),
	// an unrecognised key and a malformed registry record.
	bad := natstest.KVPut(t, b.Configs, "global.jira", `{"url":"https://jira.example/mcp","timout":"3s","headers":{"Authorization":"Bearer sekrit-jira"}}`)
	typo := natstest.KVPut(t, b.Configs, "globl.github", `{"url":"https://mcp.github.example/mcp"}`)
	rec := natstest.KVPut(t, b.Agents, "broken-1", `{"rol":"coder"}`)
	rowsJS := `[...document.querySelectorAll('#invalid tbody tr')].map(tr => [...tr.cells].map(td => td.textContent).join(' | ')).join('\n')`
	rows := waitPage(t, bctx, "three invalid entries", 5*time.Second, `document.getElementById('invalid-panel').hidden ? '' : `+rowsJS,
		func(s string) bool { return strings.Count(s, "\n") == 2 })
	for _, want := range []string{
		"mcp_agents | broken-1 | r" + itoa(rec) + ` | kvconfig: invalid mcp_agents "broken-1" revision ` + itoa(rec),
		"mcp_configs | global.jira | r" + itoa(bad) + ` | kvconfig: invalid mcp_configs "global.jira" revision ` + itoa(bad) + `: field "timout": unknown field`,
		"mcp_configs | globl.github | r" + itoa(typo) + " | ",
	} {
		if !strings.Contains(rows, want) {
			t.Errorf("invalid entries\n%s\nlack %q", rows, want)
		}
	}
	all, err := chromedp.Run(bctx, chromedp.Evaluate[string](`document.documentElement.textContent`))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(all, "sekrit") {
		t.Errorf("a secret of an invalid entry reached the page")
	}
	screenshot(t, bctx, "dashboard-warnings.png")

	// The agent page says it too, once, at the top.
	if err := chromedp.Do(bctx, chromedp.Navigate(base+"/agent/typo-1")); err != nil {
		t.Fatal(err)
	}
	waitPage(t, bctx, "agent page warning", 5*time.Second,
		`document.getElementById('warnings').hidden ? '' : document.getElementById('warnings').textContent`,
		func(s string) bool {
			return s == `role "coderz" is named by no config in mcp_configs: agent typo-1 gets global configs only; check the role in mcp_agents`
		})
	explain := waitPage(t, bctx, "explain cards", 5*time.Second, `document.getElementById('explain').textContent`,
		func(s string) bool { return strings.Contains(s, "global.github") && strings.Contains(s, "global.jira") })
	if !strings.Contains(explain, `unrecognised key "globl.github" in mcp_configs`) || strings.Contains(explain, `role "coderz" is named`) {
		t.Errorf("explain cards: want the server's own warnings only, got %q", explain)
	}
	screenshot(t, bctx, "dashboard-agent-warnings.png")

	// Fixed: both go away, live, on the fleet page.
	if err := chromedp.Do(bctx, chromedp.Navigate(base+"/")); err != nil {
		t.Fatal(err)
	}
	if _, err := chromedp.Run(bctx, chromedp.Evaluate[int](`window.__noReload = 43`)); err != nil {
		t.Fatal(err)
	}
	waitPage(t, bctx, "invalid panel after load", 5*time.Second, `document.getElementById('invalid-panel').hidden ? '' : `+rowsJS,
		func(s string) bool { return strings.Count(s, "\n") == 2 })
	natstest.KVPut(t, b.Agents, "typo-1", `{"role":"coder"}`)
	natstest.KVPut(t, b.Configs, "global.jira", `{"url":"https://jira.example/mcp"}`)
	if err := b.Configs.Delete(ctx, "globl.github"); err != nil {
		t.Fatal(err)
	}
	if err := b.Agents.Delete(ctx, "broken-1"); err != nil {
		t.Fatal(err)
	}
	waitPage(t, bctx, "notices gone", 5*time.Second,
		`String(document.getElementById('role-notice').hidden) + ' ' + String(document.getElementById('invalid-panel').hidden) + ' ' + String(window.__noReload)`,
		func(s string) bool { return s == "true true 43" })
	waitPage(t, bctx, "role cell unflagged", 3*time.Second,
		`document.querySelector('#rows tr[data-agent="typo-1"] td.role').textContent`, func(s string) bool { return s == "coder" })
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }
