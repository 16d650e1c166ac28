package dashboard

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/tether-dev/tether/supervisor/fleet"
)

// Issue 16: cumulative failure counters stayed red forever after an agent
// recovered. The recorder turns successive samples of them into how much
// they rose over the last window; only that colours the page.

// update changes one agent of the fake fleet in place.
func (f *fakeFleet) update(id string, fn func(*fleet.AgentStatus)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	a := f.agents[id]
	fn(&a)
	f.agents[id] = a
}

// fakeClock is the recorder's clock, moved by the test.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

func recentOf(r *recorder, id string) recentCounts {
	s, _ := r.current()
	if row := s.row(id); row != nil && row.Recent != nil {
		return *row.Recent
	}
	return recentCounts{}
}

func TestDashboardRecorderRecentFailures(t *testing.T) {
	const window = 5 * time.Minute
	src := newFakeFleet()
	for _, id := range []string{"old-failures", "fails-now", "reconnects", "restarts", "forgotten"} {
		src.set(id, fleet.StateHealthy, "coder", 1)
	}
	src.update("old-failures", func(a *fleet.AgentStatus) { a.Calls.Failed, a.Calls.Retried, a.Conn.Reconnects = 5, 9, 2 })
	src.update("restarts", func(a *fleet.AgentStatus) { a.Calls.Failed = 10 })
	src.update("forgotten", func(a *fleet.AgentStatus) { a.Calls.Failed = 1 })
	clk := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	r := newRecorder(Config{Interval: time.Second, MaxEvents: 100, MaxSamples: 10, RateWindow: window}, src)
	r.now = clk.now
	step := func(d time.Duration) {
		for end := clk.t.Add(d); clk.t.Before(end); {
			clk.t = clk.t.Add(time.Second)
			r.sample()
		}
	}
	r.sample()
	// Counters an agent had when first seen are not recent: nobody knows
	// when they rose.
	if got := recentOf(r, "old-failures"); got != (recentCounts{}) {
		t.Fatalf("counters already there count as recent: %+v", got)
	}
	step(10 * time.Second)
	src.update("fails-now", func(a *fleet.AgentStatus) { a.Calls.Failed, a.Calls.Retried = 2, 1 })
	src.update("reconnects", func(a *fleet.AgentStatus) { a.Conn.Reconnects = 3 })
	src.update("restarts", func(a *fleet.AgentStatus) { a.Calls.Failed = 1 }) // a new process counts from 0
	src.remove("forgotten")
	step(time.Second)
	failedAt := clk.t
	for id, want := range map[string]recentCounts{
		"old-failures": {}, "fails-now": {Failed: 2, Retried: 1}, "reconnects": {Reconnects: 3}, "restarts": {Failed: 1},
	} {
		if got := recentOf(r, id); got != want {
			t.Errorf("%s: recent %+v, want %+v", id, got, want)
		}
	}
	if _, ok := r.rates.hist["forgotten"]; ok {
		t.Errorf("a forgotten agent's history is kept")
	}
	// More failures within the window add up.
	step(time.Minute)
	src.update("fails-now", func(a *fleet.AgentStatus) { a.Calls.Failed = 4 })
	step(time.Second)
	if got := recentOf(r, "fails-now"); got != (recentCounts{Failed: 4, Retried: 1}) {
		t.Errorf("fails-now after more failures: %+v", got)
	}
	lastAt := clk.t
	for clk.t.Sub(failedAt) < window-time.Second {
		step(time.Second)
	}
	if got := recentOf(r, "fails-now"); got != (recentCounts{Failed: 4, Retried: 1}) {
		t.Errorf("fails-now %v after its first failures, still within the window: %+v", clk.t.Sub(failedAt), got)
	}
	// The first failures leave the window when it has passed (to within
	// one step of window/rateSteps), the later ones after.
	for clk.t.Sub(failedAt) < window+window/rateSteps+time.Second {
		step(time.Second)
	}
	if got := recentOf(r, "fails-now"); got != (recentCounts{Failed: 2}) {
		t.Errorf("fails-now %v after the first failures: %+v, want the later 2 failed only", clk.t.Sub(failedAt), got)
	}
	if got := recentOf(r, "reconnects"); got != (recentCounts{}) {
		t.Errorf("reconnects %v after: %+v, want none", clk.t.Sub(failedAt), got)
	}
	for clk.t.Sub(lastAt) < window+window/rateSteps+time.Second {
		step(time.Second)
	}
	s, _ := r.current()
	for _, row := range s.rows {
		if row.Recent != nil {
			t.Errorf("%s: recent %+v a whole window after its last failure", row.ID, *row.Recent)
		}
	}
	if row := s.row("fails-now"); row.Failed != 4 || row.Retried != 1 {
		t.Errorf("totals changed: %+v", row)
	}
	// A steady agent keeps one point, a flapping one at most a window's
	// steps: the history is bounded.
	for i := range 1000 {
		src.update("fails-now", func(a *fleet.AgentStatus) { a.Calls.Failed = uint64(10 + i) })
		step(time.Second)
	}
	if n := len(r.rates.hist["fails-now"].pts); n > rateSteps+2 {
		t.Errorf("flapping agent: %d points kept, want at most %d", n, rateSteps+2)
	}
	if n := len(r.rates.hist["old-failures"].pts); n != 1 {
		t.Errorf("steady agent: %d points kept, want 1", n)
	}
	if got := recentOf(r, "fails-now"); got.Failed < 299 || got.Failed > 300+10 {
		t.Errorf("one failure a second: %d recent in %v, want about 300", got.Failed, window)
	}
}

func TestDashboardRecentFailuresInTheAPI(t *testing.T) {
	src := newFakeFleet()
	src.set("flaky", fleet.StateHealthy, "coder", 1)
	src.set("fine", fleet.StateHealthy, "coder", 1)
	src.update("fine", func(a *fleet.AgentStatus) { a.Calls.Failed = 7 }) // long ago
	d, ts := testServer(t, src, 5*time.Millisecond)
	waitSample(t, d, 2)
	src.update("flaky", func(a *fleet.AgentStatus) { a.Calls.Failed, a.Conn.Reconnects = 3, 1 })
	var rows map[string]json.RawMessage
	var fr struct {
		RateWindowMS int64 `json:"rate_window_ms"`
		Page         struct {
			Rows []json.RawMessage `json:"rows"`
		} `json:"page"`
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		_, body := get(t, ts.URL+"/api/fleet?sort=id")
		if err := json.Unmarshal([]byte(body), &fr); err != nil {
			t.Fatal(err)
		}
		rows = map[string]json.RawMessage{}
		for _, raw := range fr.Page.Rows {
			var id struct{ ID string }
			_ = json.Unmarshal(raw, &id)
			rows[id.ID] = raw
		}
		if strings.Contains(string(rows["flaky"]), `"recent"`) || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if want := DefaultRateWindow.Milliseconds(); fr.RateWindowMS != want {
		t.Errorf("rate_window_ms %d, want %d", fr.RateWindowMS, want)
	}
	if !strings.Contains(string(rows["flaky"]), `"failed":3,"recent":{"retried":0,"failed":3,"reconnects":1}`) {
		t.Errorf("flaky row: %s", rows["flaky"])
	}
	if strings.Contains(string(rows["fine"]), `"recent"`) || !strings.Contains(string(rows["fine"]), `"failed":7`) {
		t.Errorf("fine row (failures from before the dashboard watched): %s", rows["fine"])
	}
	_, body := get(t, ts.URL+"/api/agent/flaky")
	var det agentDetail
	if err := json.Unmarshal([]byte(body), &det); err != nil {
		t.Fatal(err)
	}
	if det.Recent == nil || *det.Recent != (recentCounts{Failed: 3, Reconnects: 1}) || det.RateWindowMS != fr.RateWindowMS {
		t.Errorf("/api/agent/flaky recent %+v window %d: %s", det.Recent, det.RateWindowMS, body)
	}
}

// waitSample waits until the recorder has taken n samples.
func waitSample(t *testing.T, d *Dashboard, n uint64) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		if s, _ := d.rec.current(); s.seq >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("fewer than %d samples in 2 s", n)
		}
		time.Sleep(time.Millisecond)
	}
}
