package dashboard

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/tether-dev/tether/supervisor/fleet"
)

// Issue 16: a lost agent showed its last report's "connected" as the
// present, and the agent page painted empty until its first fetch.

func TestDashboardConnStale(t *testing.T) {
	for _, tc := range []struct {
		st                  fleet.State
		heardMS, intervalMS int64
		want                bool
	}{
		{fleet.StateHealthy, 10, 50, false},
		{fleet.StateZombie, 10, 50, false}, // it heartbeats: the report is news
		{fleet.StateSuspect, 120, 50, true},
		{fleet.StateLost, 200, 50, true},
		{fleet.StateGone, 3600_000, 50, true},
		{fleet.StateQuarantined, 90, 50, false}, // live, held
		{fleet.StateQuarantined, 101, 50, true}, // and silent past two intervals
		{fleet.StateQuarantined, 5000, 0, false},
	} {
		if got := connStale(tc.st, tc.heardMS, tc.intervalMS); got != tc.want {
			t.Errorf("%v heard %d ms ago (interval %d): stale %v, want %v", tc.st, tc.heardMS, tc.intervalMS, got, tc.want)
		}
	}
}

func TestDashboardConnStaleInTheAPI(t *testing.T) {
	src := newFakeFleet()
	src.set("up", fleet.StateHealthy, "coder", 1)
	src.set("down", fleet.StateLost, "coder", 1)
	src.update("down", func(a *fleet.AgentStatus) { a.SilentMS = 42_000 })
	d, ts := testServer(t, src, 5*time.Millisecond)
	waitSample(t, d, 1)
	_, body := get(t, ts.URL+"/api/fleet?sort=id")
	var fr fleetReply
	if err := json.Unmarshal([]byte(body), &fr); err != nil {
		t.Fatal(err)
	}
	if len(fr.Page.Rows) != 2 {
		t.Fatalf("rows: %s", body)
	}
	down, up := fr.Page.Rows[0], fr.Page.Rows[1]
	if down.Conn != "connected" || !down.ConnStale || down.HeardMS != 42_000 {
		t.Errorf("lost agent's connection not stale with its age: %+v", down)
	}
	if up.Conn != "connected" || up.ConnStale {
		t.Errorf("healthy agent's connection stale: %+v", up)
	}
	for id, want := range map[string]bool{"down": true, "up": false} {
		_, body := get(t, ts.URL+"/api/agent/"+id)
		var det agentDetail
		if err := json.Unmarshal([]byte(body), &det); err != nil {
			t.Fatal(err)
		}
		if det.ConnStale != want || det.Status == nil || det.Status.Conn.State != "connected" {
			t.Errorf("/api/agent/%s: conn_stale %v, want %v: %s", id, det.ConnStale, want, body)
		}
	}
}

func TestDashboardAgentPageEmbedsItsDetail(t *testing.T) {
	const hostile = `</script><script>window.__pwned=1</script><!-- & "quotes"`
	src := newFakeFleet()
	src.set("a1", fleet.StateZombie, "coder", 1.5)
	src.update("a1", func(a *fleet.AgentStatus) { a.Reason = hostile })
	d, ts := testServer(t, src, 5*time.Millisecond)
	waitSample(t, d, 1)
	const open = `<script id="initial" type="application/json">`
	for _, tc := range []struct {
		id    string
		known bool
	}{{"a1", true}, {"newcomer", false}} {
		resp, body := get(t, ts.URL+"/agent/"+tc.id)
		if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") || resp.Header.Get("Cache-Control") != "no-store" {
			t.Fatalf("/agent/%s: %d %q %q", tc.id, resp.StatusCode, resp.Header.Get("Content-Type"), resp.Header.Get("Cache-Control"))
		}
		if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") {
			t.Errorf("/agent/%s: CSP %q", tc.id, csp)
		}
		_, rest, ok := strings.Cut(body, open)
		if !ok {
			t.Fatalf("/agent/%s: no embedded detail in %s", tc.id, body)
		}
		data, _, ok := strings.Cut(rest, "</script>")
		if !ok {
			t.Fatalf("/agent/%s: embedded detail not closed", tc.id)
		}
		var det agentDetail
		if err := json.Unmarshal([]byte(data), &det); err != nil {
			t.Fatalf("/agent/%s: the embedded detail is not JSON (ended early?): %v: %s", tc.id, err, data)
		}
		if det.Agent != tc.id || det.Known != tc.known || len(det.Servers) == 0 || det.RateWindowMS == 0 {
			t.Errorf("/agent/%s: embedded detail %+v", tc.id, det)
		}
		if tc.known && (det.Status == nil || det.Status.State != fleet.StateZombie || det.Status.Reason != hostile || len(det.Pending) != 1) {
			t.Errorf("/agent/%s: embedded status %+v pending %v", tc.id, det.Status, det.Pending)
		}
		if strings.Count(body, "</script>") != strings.Count(string(webPage(t, d)), "</script>") {
			t.Errorf("/agent/%s: agent text added a </script>", tc.id)
		}
		if strings.Contains(body, "__pwned=1</script>") || strings.Contains(body, "<!-- &") {
			t.Errorf("/agent/%s: agent text embedded unescaped", tc.id)
		}
	}
}

// webPage is agent.html as embedded.
func webPage(t *testing.T, d *Dashboard) []byte {
	t.Helper()
	return append(append([]byte{}, d.agent.head...), append([]byte(initialSlot), d.agent.tail...)...)
}
