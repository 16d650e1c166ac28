package dashboard

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/internal/natstest"
	"github.com/tether-dev/tether/kvconfig"
	"github.com/tether-dev/tether/supervisor/fleet"
)

// fakeFleet is a Source the test changes directly.
type fakeFleet struct {
	mu      sync.Mutex
	agents  map[string]fleet.AgentStatus
	mass    bool
	invalid []fleet.InvalidEntry
	roles   []kvconfig.RoleUse
}

func newFakeFleet() *fakeFleet { return &fakeFleet{agents: map[string]fleet.AgentStatus{}} }

func (f *fakeFleet) set(id string, st fleet.State, role string, rtt float64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	a := f.agents[id]
	if a.State != st {
		a.Since = time.Now()
	}
	a.Agent, a.State, a.Role, a.Conn.RTTMS, a.Conn.State = id, st, role, rtt, "connected"
	a.LastHeard, a.SilentMS = time.Now(), 5
	a.Reason = "because " + st.String()
	f.agents[id] = a
}

func (f *fakeFleet) remove(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.agents, id)
}

func (f *fakeFleet) AgentIDs() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	ids := make([]string, 0, len(f.agents))
	for id := range f.agents {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

func (f *fakeFleet) Agent(id string) (fleet.AgentStatus, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	a, ok := f.agents[id]
	return a, ok
}

func (f *fakeFleet) Pending(id string) []agentproto.Command {
	if st, _ := f.Agent(id); st.State == fleet.StateZombie {
		return []agentproto.Command{{ID: "c1", Type: agentproto.CmdReconnect, Reason: "zombie"}}
	}
	return nil
}

func (f *fakeFleet) MassSilence() bool                   { f.mu.Lock(); defer f.mu.Unlock(); return f.mass }
func (f *fakeFleet) Leader() bool                        { return true }
func (f *fakeFleet) Leadership() (string, time.Duration) { return "test-replica", 0 }

func (f *fakeFleet) InvalidEntries(n int) []fleet.InvalidEntry {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.invalid[:min(n, len(f.invalid))])
}

func (f *fakeFleet) UnconfiguredRoles(n int) []kvconfig.RoleUse {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.roles[:min(n, len(f.roles))])
}

func testDashConfig(interval time.Duration) Config {
	return Config{Interval: interval, MaxEvents: DefaultEvents, MaxSamples: DefaultSamples}
}

func TestDashboardConfigInterval(t *testing.T) {
	for _, tc := range []struct{ hb, want, window time.Duration }{
		{fleet.DefaultHeartbeatInterval, time.Second, 5 * time.Minute},
		{2 * time.Second, time.Second, 5 * time.Minute},
		{100 * time.Millisecond, 50 * time.Millisecond, 15 * time.Second},
		{5 * time.Millisecond, minInterval, 3 * time.Second},
	} {
		if got := ConfigFor(tc.hb); got.Interval != tc.want || got.RateWindow != tc.window {
			t.Errorf("heartbeat %v: dashboard interval %v, rate window %v; want %v, %v", tc.hb, got.Interval, got.RateWindow, tc.want, tc.window)
		}
	}
}

func TestDashboardRecorderDiffsStates(t *testing.T) {
	src := newFakeFleet()
	src.set("a1", fleet.StateHealthy, "coder", 1)
	src.set("a2", fleet.StateHealthy, "coder", 3)
	r := newRecorder(Config{Interval: time.Millisecond, MaxEvents: 4, MaxSamples: 3}, src)
	r.sample() // the baseline: no events for agents already there
	if evs, _, _, _ := r.eventsSince(0, 100, nil); len(evs) != 0 {
		t.Fatalf("baseline produced events: %+v", evs)
	}
	src.set("a1", fleet.StateZombie, "coder", 1)
	src.set("a3", fleet.StateHealthy, "", 2)
	src.remove("a2")
	r.sample()
	evs, _, last, _ := r.eventsSince(0, 100, nil)
	got := []string{}
	for _, e := range evs {
		got = append(got, e.Agent+":"+e.From+">"+e.To)
	}
	want := []string{"a1:healthy>zombie", "a2:healthy>", "a3:>healthy"}
	if strings.Join(got, " ") != strings.Join(want, " ") || last != 3 {
		t.Fatalf("events %v (last %d), want %v", got, last, want)
	}
	if evs[0].Reason != "because zombie" || evs[0].Role != "coder" {
		t.Errorf("event lacks reason or role: %+v", evs[0])
	}
	s, _ := r.current()
	if s.counts["zombie"] != 1 || s.counts["healthy"] != 1 || s.total != 2 || len(s.roles) != 1 {
		t.Errorf("snapshot counts %v total %d roles %v", s.counts, s.total, s.roles)
	}
	smp, _ := r.samplesSince(0)
	if n := len(smp); n != 2 || smp[1].Changes["zombie"] != 1 || smp[1].Changes["healthy"] != 1 || smp[1].Live != 2 || smp[1].RTTMax != 2 {
		t.Fatalf("samples %+v", smp)
	}
	// The rings are bounded; a reader that fell behind is told so.
	for i := range 5 {
		st := fleet.StateHealthy
		if i%2 == 0 {
			st = fleet.StateSuspect
		}
		src.set("a3", st, "", 2)
		r.sample()
	}
	evs, _, last, missed := r.eventsSince(1, 100, nil)
	if len(evs) != 4 || last != 8 || !missed || evs[0].Seq != 5 {
		t.Errorf("ring: %d events, last %d, missed %v, first seq %d; want 4, 8, true, 5", len(evs), last, missed, evs[0].Seq)
	}
	if smp, missed := r.samplesSince(1); len(smp) != 3 || !missed {
		t.Errorf("sample ring: %d samples, missed %v; want 3, true", len(smp), missed)
	}
	if evs, dropped, _, _ := r.eventsSince(0, 1, nil); len(evs) != 1 || dropped != 3 || evs[0].Seq != 8 {
		t.Errorf("limit 1: %+v dropped %d", evs, dropped)
	}
}

func TestDashboardPagesTenThousandAgents(t *testing.T) {
	const n = 10000
	src := newFakeFleet()
	states := []fleet.State{fleet.StateHealthy, fleet.StateHealthy, fleet.StateHealthy, fleet.StateSuspect, fleet.StateLost, fleet.StateZombie, fleet.StateQuarantined, fleet.StateGone}
	want := map[fleet.State]int{}
	for i := range n {
		st := states[i%len(states)]
		want[st]++
		src.set(fmt.Sprintf("agent-%05d", i), st, "role"+strconv.Itoa(i%3), float64(i%50)/10)
	}
	r := newRecorder(testDashConfig(time.Second), src)
	start := time.Now()
	r.sample()
	took := time.Since(start)
	s, _ := r.current()
	for st, c := range want {
		if s.counts[st.String()] != c {
			t.Errorf("count %v = %d, want %d", st, s.counts[st.String()], c)
		}
	}
	page := func(query string) pageReply {
		v, _ := url.ParseQuery(query)
		q, err := parsePageQuery(v)
		if err != nil {
			t.Fatal(err)
		}
		return s.page(q)
	}
	// Default: worst first, 200 rows.
	p := page("")
	if len(p.Rows) != defaultLimit || p.Matched != n || p.Rows[0].State != "quarantined" || p.Rows[0].ID != "agent-00006" {
		t.Fatalf("default page: %d rows of %d, first %s %s", len(p.Rows), p.Matched, p.Rows[0].ID, p.Rows[0].State)
	}
	if p := page("state=problem&limit=1000"); p.Matched != want[fleet.StateSuspect]+want[fleet.StateLost]+want[fleet.StateZombie]+want[fleet.StateQuarantined] {
		t.Errorf("problem filter matched %d", p.Matched)
	}
	if p := page("state=zombie&role=role1"); p.Matched == 0 || p.Matched >= want[fleet.StateZombie] {
		t.Errorf("zombie+role1 matched %d of %d zombies", p.Matched, want[fleet.StateZombie])
	}
	if p := page("q=AGENT-0999&sort=id"); p.Matched != 10 || p.Rows[0].ID != "agent-09990" {
		t.Errorf("search: %d matched, first %v", p.Matched, p.Rows)
	}
	if p := page("agent=agent-01234"); p.Matched != 1 || p.Rows[0].ID != "agent-01234" {
		t.Errorf("one agent: %+v", p)
	}
	// Paging by offset covers every agent once.
	seen := map[string]bool{}
	for off := 0; ; off += maxLimit {
		p := page("sort=id&limit=1000&offset=" + strconv.Itoa(off))
		for _, row := range p.Rows {
			if seen[row.ID] {
				t.Fatalf("%s on two pages", row.ID)
			}
			seen[row.ID] = true
		}
		if len(p.Rows) < maxLimit {
			break
		}
	}
	if len(seen) != n {
		t.Fatalf("pages covered %d of %d agents", len(seen), n)
	}
	// One stream message: the default page plus the head stays small.
	d := &Dashboard{rec: r}
	msg := d.message(&stream{q: pageQuery{limit: defaultLimit}}, s)
	t.Logf("10k agents: one sample %v; first stream message %d KB (200 rows)", took.Round(time.Microsecond), len(msg)>>10)
	if len(msg) > 128<<10 {
		t.Errorf("first stream message is %d bytes, want under 128 KB", len(msg))
	}
	next := d.message(&stream{q: pageQuery{limit: defaultLimit}, started: true, snapSeq: s.seq, evSeq: 1 << 60, smpSeq: s.seq, page: nil}, s)
	if len(next) > len(msg) {
		t.Errorf("follow-up message larger than the first")
	}
}

func TestDashboardQueryErrors(t *testing.T) {
	for _, tc := range []struct{ query, want string }{
		{"state=bogus", "state"},
		{"role=a.b", "role"},
		{"agent=a*", "agent"},
		{"q=a%20b", "search"},
		{"sort=age", "sort"},
		{"limit=0", "limit"},
		{"limit=5000", "limit"},
		{"offset=-1", "offset"},
		{"offset=x", "offset"},
	} {
		v, _ := url.ParseQuery(tc.query)
		if _, err := parsePageQuery(v); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one naming %q", tc.query, err, tc.want)
		}
	}
}

// testServer serves a dashboard over src and an in-memory index with
// one agent's role and a global and a role config carrying secrets.
func testServer(t *testing.T, src Source, interval time.Duration) (*Dashboard, *httptest.Server) {
	ix := kvconfig.NewIndex()
	ix.ApplyAgent("a1", 1, kvconfig.OpPut, []byte(`{"role":"coder"}`))
	ix.ApplyConfig("global.github", 2, kvconfig.OpPut, []byte(`{"url":"https://u:topsecret@gh.example/mcp?token=qsecret","headers":{"Authorization":"Bearer hsecret"}}`))
	ix.ApplyConfig("role.coder.github", 3, kvconfig.OpPut, []byte(`{"command":"gh-mcp","env":{"GH_TOKEN":"esecret"}}`))
	ix.ApplyConfig("global.broken", 4, kvconfig.OpPut, []byte(`{"timout":"3s","url":"https://x.example"}`))
	ix.MarkReady(kvconfig.BucketConfigs)
	ix.MarkReady(kvconfig.BucketAgents)
	d := New(testDashConfig(interval), src, func() *kvconfig.Index { return ix }, zerolog.New(zerolog.NewTestWriter(t)))
	mux := http.NewServeMux()
	d.Routes(mux)
	ts := httptest.NewServer(mux)
	t.Cleanup(ts.Close)
	d.Start()
	t.Cleanup(d.Close) // before ts.Close: open streams end first
	return d, ts
}

func get(t *testing.T, u string) (*http.Response, string) {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func TestDashboardHTTPEndpoints(t *testing.T) {
	src := newFakeFleet()
	src.set("a1", fleet.StateZombie, "coder", 1.5)
	src.set("b2", fleet.StateHealthy, "", 0.3)
	d, ts := testServer(t, src, 5*time.Millisecond)
	natstest.CheckFor(t, 2*time.Second, time.Millisecond, func() error {
		if s, _ := d.rec.current(); s.total != 2 {
			return errors.New("no sample yet")
		}
		return nil
	})

	for _, tc := range []struct{ path, ctype string }{
		{"/", "text/html"}, {"/agent/a1", "text/html"}, {"/static/fleet.js", "text/javascript"},
		{"/static/app.css", "text/css"}, {"/static/agent.js", "text/javascript"}, {"/static/charts.js", "text/javascript"},
	} {
		resp, body := get(t, ts.URL+tc.path)
		if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), tc.ctype) || len(body) == 0 {
			t.Errorf("%s: %d %q", tc.path, resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || resp.Header.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("%s: security headers missing: %q", tc.path, csp)
		}
	}
	for _, tc := range []struct {
		path string
		code int
	}{
		{"/agent/a.b", 400}, {"/agent/" + strings.Repeat("x", 65), 400}, {"/api/agent/a%2Ab", 400},
		{"/api/fleet?state=nope", 400}, {"/events?limit=0", 400}, {"/api/timeline?agent=a.b", 400},
		{"/static/nope.js", 404}, {"/static/..%2fdashboard.go", 404}, {"/static/index.txt", 404}, {"/nope", 404},
	} {
		resp, body := get(t, ts.URL+tc.path)
		if resp.StatusCode != tc.code {
			t.Errorf("%s: %d, want %d: %s", tc.path, resp.StatusCode, tc.code, body)
		}
		if tc.code == 400 && strings.HasPrefix(tc.path, "/api/") {
			var eb agentproto.ErrorBody
			if json.Unmarshal([]byte(body), &eb) != nil || eb.Error.Code != "bad_request" || eb.Error.Message == "" {
				t.Errorf("%s: error body %s", tc.path, body)
			}
		}
		if strings.Contains(body, "<") && tc.code == 400 {
			t.Errorf("%s: HTML in an error reply: %s", tc.path, body)
		}
	}

	_, body := get(t, ts.URL+"/api/fleet?state=problem")
	var fr fleetReply
	if err := json.Unmarshal([]byte(body), &fr); err != nil {
		t.Fatal(err)
	}
	if fr.Total != 2 || fr.Counts["zombie"] != 1 || fr.Page == nil || fr.Page.Matched != 1 || fr.Page.Rows[0].ID != "a1" || fr.Page.Rows[0].RTT != 1.5 {
		t.Fatalf("/api/fleet?state=problem: %s", body)
	}

	_, body = get(t, ts.URL+"/api/agent/a1")
	for _, secret := range []string{"topsecret", "qsecret", "hsecret", "esecret"} {
		if strings.Contains(body, secret) {
			t.Errorf("secret %q in /api/agent/a1: %s", secret, body)
		}
	}
	var det agentDetail
	if err := json.Unmarshal([]byte(body), &det); err != nil {
		t.Fatal(err)
	}
	if !det.Known || det.Role != "coder" || len(det.Servers) != 2 || len(det.Pending) != 1 {
		t.Fatalf("agent detail: %s", body)
	}
	broken, gh := det.Servers[0], det.Servers[1]
	if broken.Server != "broken" || broken.Explain == nil || broken.Explain.Outcome != "invalid_config" || broken.Config != nil {
		t.Errorf("broken server: %+v", broken)
	}
	if gh.Explain == nil || gh.Explain.Winner != "role:coder" || len(gh.Explain.Shadowed) != 1 || gh.Config == nil || gh.Config.Env["GH_TOKEN"] != kvconfig.Masked {
		t.Errorf("github: %+v", gh)
	}
	if got := (&kvconfig.ServerConfig{URL: "https://u:pw@h.example/p?token=t&x=1"}).Masked().URL; strings.Contains(got, "pw") || strings.Contains(got, "=t") || strings.Contains(got, "x=1") {
		t.Errorf("masked URL %s", got)
	}
	// An agent not in the fleet still gets its explain output.
	_, body = get(t, ts.URL+"/api/agent/newcomer")
	if err := json.Unmarshal([]byte(body), &det); err != nil || det.Known || len(det.Servers) != 2 {
		t.Errorf("unknown agent: %s", body)
	}
}

// sseFrame is one parsed server-sent event.
type sseFrame struct {
	id, event string
	msg       struct {
		Seq     uint64          `json:"seq"`
		Reset   bool            `json:"reset"`
		Counts  map[string]int  `json:"counts"`
		Events  []stateEvent    `json:"events"`
		Samples []latencySample `json:"samples"`
		Roles   []string        `json:"roles"`
		Notices *notices        `json:"notices"`
		Page    *pageReply      `json:"page"`
	}
}

// openStream reads /events frames into a channel, closed when the stream
// ends; cancel ends it from the client side and waits for the reader.
func openStream(t *testing.T, u string) (frames <-chan sseFrame, retry string, cancel func()) {
	t.Helper()
	ctx, stop := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		stop()
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		stop()
		resp.Body.Close()
		t.Fatalf("%s: %d %s", u, resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	br := bufio.NewReader(resp.Body)
	first, _ := br.ReadString('\n')
	blank, _ := br.ReadString('\n')
	if blank != "\n" {
		t.Fatalf("retry line not followed by a blank line: %q %q", first, blank)
	}
	ch := make(chan sseFrame, 1024)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(ch)
		defer resp.Body.Close()
		var f sseFrame
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			switch line = strings.TrimSuffix(line, "\n"); {
			case line == "":
				ch <- f
				f = sseFrame{}
			case strings.HasPrefix(line, "id: "):
				f.id = line[4:]
			case strings.HasPrefix(line, "event: "):
				f.event = line[7:]
			case strings.HasPrefix(line, "data: "):
				if err := json.Unmarshal([]byte(line[6:]), &f.msg); err != nil {
					t.Errorf("data is not JSON: %v: %s", err, line)
				}
			default:
				t.Errorf("unexpected line %q", line)
			}
		}
	}()
	cancelled := false
	t.Cleanup(func() {
		if !cancelled {
			stop()
			<-done
		}
	})
	return ch, strings.TrimSpace(first), func() { cancelled = true; stop(); <-done }
}

// waitFrame reads frames until ok accepts one.
func waitFrame(t *testing.T, frames <-chan sseFrame, within time.Duration, what string, ok func(*sseFrame) bool) sseFrame {
	t.Helper()
	deadline := time.After(within)
	for {
		select {
		case f, open := <-frames:
			if !open {
				t.Fatalf("%s: stream ended", what)
			}
			if ok(&f) {
				return f
			}
		case <-deadline:
			t.Fatalf("%s: no such frame within %v", what, within)
		}
	}
}

func TestDashboardStreamFraming(t *testing.T) {
	src := newFakeFleet()
	src.set("a1", fleet.StateHealthy, "coder", 1)
	d, ts := testServer(t, src, 5*time.Millisecond)
	frames, retry, cancel := openStream(t, ts.URL+"/events?state=problem")
	if retry != "retry: "+strconv.Itoa(streamRetryMS) {
		t.Errorf("first line %q", retry)
	}
	f := waitFrame(t, frames, 2*time.Second, "first frame", func(*sseFrame) bool { return true })
	if f.event != "tick" || f.id == "" || !f.msg.Reset || f.msg.Page == nil || f.msg.Roles == nil || f.msg.Counts == nil {
		t.Fatalf("first frame: %+v", f)
	}
	src.set("a1", fleet.StateZombie, "coder", 1)
	f = waitFrame(t, frames, 2*time.Second, "zombie event", func(f *sseFrame) bool {
		return len(f.msg.Events) > 0 && f.msg.Events[0].To == "zombie"
	})
	if f.msg.Reset || f.msg.Page == nil || f.msg.Page.Matched != 1 || f.msg.Page.Rows[0].State != "zombie" || f.msg.Counts["zombie"] != 1 {
		t.Fatalf("zombie frame: %+v", f.msg)
	}
	// Later frames carry neither the unchanged page nor repeated events.
	after := f.msg.Seq
	f = waitFrame(t, frames, 2*time.Second, "quiet frame", func(f *sseFrame) bool { return f.msg.Seq > after })
	if f.msg.Page != nil || len(f.msg.Events) > 0 || f.msg.Roles != nil || len(f.msg.Samples) == 0 {
		t.Errorf("quiet frame: %+v", f.msg)
	}
	// The handler ends when the client goes away.
	cancel()
	natstest.CheckFor(t, 2*time.Second, time.Millisecond, func() error {
		if n := d.active.Load(); n != 0 {
			return fmt.Errorf("%d streams still open", n)
		}
		return nil
	})
	// ... and when the dashboard closes.
	frames, _, _ = openStream(t, ts.URL+"/events?agent=a1")
	waitFrame(t, frames, 2*time.Second, "agent frame", func(f *sseFrame) bool { return f.msg.Page != nil && f.msg.Page.Matched == 1 })
	closed := make(chan struct{})
	go func() { d.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(2 * time.Second):
		t.Fatal("dashboard Close did not return with a stream open")
	}
	for range frames { // the server ends the stream
	}
	if resp, body := get(t, ts.URL+"/events"); resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("stream after close: %d %s", resp.StatusCode, body)
	}
}

// A queue zombie's row carries its backlog and the flag the table marks.
func TestRowShowsQueueBacklog(t *testing.T) {
	r := makeRow(fleet.AgentStatus{Agent: "q1", State: fleet.StateZombie, Backlog: 21, QueueZombie: true,
		Reason: "queue zombie: TASKS_q1/q1 has 20 pending and 1 unacknowledged"})
	b, _ := json.Marshal(r)
	for _, want := range []string{`"backlog":21`, `"queue_zombie":true`, `"state":"zombie"`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("row %s lacks %s", b, want)
		}
	}
	if b, _ := json.Marshal(makeRow(fleet.AgentStatus{Agent: "a1", State: fleet.StateHealthy})); strings.Contains(string(b), "backlog") {
		t.Errorf("row without consumers shows a backlog: %s", b)
	}
}
