package test

// MCP server health on the dashboard (issue 14), in a real headless
// Chromium: an agent failing a server the others reach is flagged in its
// row; the server killed for every agent is a banner above the table,
// arriving live and leaving when it is back.

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/internal/demoagent"
	"github.com/tether-dev/tether/internal/natstest"
	"github.com/tether-dev/tether/internal/suptest"
)

func TestDashboardBrowserShowsMCPServerDown(t *testing.T) {
	browser := findBrowser(t)
	const hb = 200 * time.Millisecond
	srv := natstest.RunServer(t)
	cfg := suptest.Config(t, srv.URL())
	cfg.HTTPAddr = "127.0.0.1:0"
	f := &cfg.Fleet
	f.HeartbeatInterval, f.CheckInterval = hb, 10*time.Millisecond
	f.ProbeInterval, f.ProbeTimeout, f.ResendInterval = hb, hb*5/4, 2*hb
	sup := suptest.Start(t, cfg)
	ids := []string{"m1", "m2", "m3"}
	suptest.Register(t, sup, "demo", ids...)
	echo, err := demoagent.NewEchoServer("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(echo.Stop)
	retry := `"timeout":"1s","retry":{"max_attempts":3,"base_delay":"20ms","max_delay":"50ms"}`
	b := sup.Buckets()
	natstest.KVPut(t, b.Configs, "role.demo.echo", fmt.Sprintf(`{"url":%q,%s}`, echo.URL(), retry))
	// m3's own config names a port nothing listens on: it fails where the others succeed.
	natstest.KVPut(t, b.Configs, "agent.m3.echo", fmt.Sprintf(`{"url":"http://%s/mcp",%s}`, freeAddr(t), retry))
	natstest.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		_, err := sup.Index().Resolve("m3", "echo")
		return err
	})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	for _, id := range ids {
		wg.Go(func() {
			_, _ = demoagent.Run(ctx, demoagent.Config{NATSURL: srv.URL(), Agent: id, Interval: 20 * time.Millisecond,
				Logger: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.ErrorLevel + 1),
				Client: func(c *agentproto.Config) { c.HeartbeatInterval = hb }})
		})
	}

	bctx := startBrowser(t, ctx, browser)
	base := "http://" + sup.HTTPAddr()
	if err := chromedp.Do(bctx, chromedp.Navigate(base+"/")); err != nil {
		t.Fatalf("open the dashboard: %v", err)
	}
	if _, err := chromedp.Run(bctx, chromedp.Evaluate[int](`window.__noReload = 42`)); err != nil {
		t.Fatal(err)
	}
	reasonJS := `(() => { const c = document.querySelector('#rows tr[data-agent="m3"] td.reason'); return c ? c.textContent : ''; })()`
	waitPage(t, bctx, "m3 flagged in its row", 10*time.Second, reasonJS,
		func(s string) bool { return strings.Contains(s, "fails MCP server echo (others reach it)") })
	for _, id := range []string{"m1", "m2"} {
		if s := waitPage(t, bctx, id+" row", 3*time.Second,
			`document.querySelector('#rows tr[data-agent="`+id+`"] td.reason').textContent + '|'`,
			func(string) bool { return true }); strings.Contains(s, "fails MCP server") {
			t.Errorf("%s flagged: %q", id, s)
		}
	}
	bannerJS := `document.getElementById('servers-notice').hidden ? '' : document.getElementById('servers-list').textContent`
	if s := waitPage(t, bctx, "no banner yet", 3*time.Second, `String(document.getElementById('servers-notice').hidden)`,
		func(s string) bool { return s != "" }); s != "true" {
		t.Errorf("servers banner shown with echo up for 2 of 3 agents")
	}

	echo.Stop()
	killed := time.Now()
	banner := waitPage(t, bctx, "echo down banner", 10*time.Second, bannerJS,
		func(s string) bool { return strings.Contains(s, "echo down for 3/3 agents") })
	t.Logf("kill -> banner on the page %v (%.1f heartbeat intervals): %q", time.Since(killed).Round(time.Millisecond),
		float64(time.Since(killed))/float64(hb), banner)
	if !strings.Contains(banner, "last failure refused") {
		t.Errorf("banner %q does not say what failed", banner)
	}
	// While echo is down, nobody is blamed for it.
	waitPage(t, bctx, "m3 no longer flagged", 5*time.Second, reasonJS,
		func(s string) bool { return !strings.Contains(s, "fails MCP server") })
	noSideScroll(t, bctx, "fleet page with an MCP server down")
	screenshot(t, bctx, "dashboard-mcp-down.png")

	if err := echo.Start(); err != nil {
		t.Fatal(err)
	}
	waitPage(t, bctx, "banner gone", 10*time.Second, `String(document.getElementById('servers-notice').hidden)`,
		func(s string) bool { return s == "true" })
	waitPage(t, bctx, "m3 flagged again", 10*time.Second, reasonJS,
		func(s string) bool { return strings.Contains(s, "fails MCP server echo (others reach it)") })
	if got, err := chromedp.Run(bctx, chromedp.Evaluate[int](`window.__noReload || 0`)); err != nil || got != 42 {
		t.Errorf("the page reloaded (%v, %v): updates must arrive live", got, err)
	}
}
