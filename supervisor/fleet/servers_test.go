package fleet

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/kvconfig"
)

// MCP server health under the injected clock: heartbeats carrying a
// servers field are handed to the tracker and sweeps run by the test.

// serverRig is a clock rig whose agents report MCP server states.
type serverRig struct {
	*clockRig
	logs *syncBuf
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// lines returns the logged JSON lines whose message starts with msg.
func (s *syncBuf) lines(msg string) []map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]any
	for _, l := range strings.Split(s.b.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil && strings.HasPrefix(fmt.Sprint(m["message"]), msg) {
			out = append(out, m)
		}
	}
	return out
}

func newServerRig(t *testing.T) *serverRig {
	cfg := rigConfig()
	cfg.ProbeInterval = time.Hour // server health only: no probes, no zombies
	r := newClockRig(t, cfg)
	logs := &syncBuf{}
	r.tr.log = zerolog.New(logs)
	r.tr.change = r.tr.log
	r.tr.initServerLog(r.tr.log)
	return &serverRig{clockRig: r, logs: logs}
}

// serverEntry is one servers entry in a heartbeat.
func serverEntry(state string) string {
	failure := ""
	if state == ServerFailing {
		failure = `,"last_error_class":"transient","last_failure":"refused"`
	}
	return fmt.Sprintf(`{"ok":3,"retried":1,"failed":2,"outcome_unknown":0,"state":%q%s,"restarts":0}`, state, failure)
}

// hb sends one heartbeat from id with extra JSON fields appended.
func (r *serverRig) hb(id, extra string) {
	r.t.Helper()
	if r.inst[id] == "" {
		r.inst[id] = id + "-i1"
	}
	r.seq[id]++
	body := fmt.Sprintf(`{"agent":%q,"instance":%q,"seq":%d,"interval_ms":%d%s}`, id, r.inst[id], r.seq[id], r.cfg.HeartbeatInterval.Milliseconds(), extra)
	r.tr.handleHeartbeat(&nats.Msg{Subject: agentproto.Subjects{}.Heartbeat(id), Reply: agentproto.HeartbeatReply(id), Data: []byte(body)})
}

// echo sends a heartbeat from id reporting the echo server in state.
func (r *serverRig) echo(id, state string) { r.hb(id, `,"servers":{"echo":`+serverEntry(state)+`}`) }

// health is echo's fleet-wide health at the last sweep.
func (r *serverRig) health() ServerHealth {
	for _, h := range r.tr.serverView() {
		if h.Server == "echo" {
			return h
		}
	}
	return ServerHealth{}
}

// reresolves lists the reresolve commands pending for id, by server.
func (r *serverRig) reresolves(id string) [][]string {
	sh := r.tr.shard(id)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	var out [][]string
	for _, p := range sh.m[id].pending() {
		if p.cmd.Type == agentproto.CmdReresolve {
			out = append(out, p.cmd.Servers)
		}
	}
	return out
}

func (r *serverRig) wantHealth(state string, failing, agents int) {
	r.t.Helper()
	if h := r.health(); h.State != state || h.Failing != failing || h.Agents != agents {
		r.t.Fatalf("at %v: echo %+v, want %s %d/%d", r.at(), h, state, failing, agents)
	}
}

// beat sends one interval's heartbeats (states by agent) and sweeps once.
func (r *serverRig) beat(states map[string]string) {
	r.t.Helper()
	for _, id := range slices.Sorted(func(yield func(string) bool) {
		for k := range states {
			if !yield(k) {
				return
			}
		}
	}) {
		r.echo(id, states[id])
	}
	r.sweep()
}

func TestServerDownAtTheSweepWhereMostUsersFail(t *testing.T) {
	r := newServerRig(t)
	ok := map[string]string{"a1": ServerOK, "a2": ServerOK, "a3": ServerOK}
	r.beat(ok)
	r.wantHealth(ServerOK, 0, 3)
	// One of three fails: not down.
	r.clk.advance(r.cfg.HeartbeatInterval)
	r.beat(map[string]string{"a1": ServerFailing, "a2": ServerOK, "a3": ServerOK})
	r.wantHealth(ServerOK, 1, 3)
	if got := counterValue(r.metrics.servers.down.WithLabelValues("echo")); got != 0 {
		t.Fatalf("down gauge %v at 1/3", got)
	}
	// The second: down at this very sweep, with one log line.
	r.clk.advance(r.cfg.HeartbeatInterval)
	r.echo("a2", ServerFailing)
	if h := r.health(); h.State != ServerOK {
		t.Fatalf("down before any sweep: %+v", h)
	}
	r.sweep()
	r.wantHealth(serverDown, 2, 3)
	h := r.health()
	if h.LastFailure != "refused" || !h.Since.Equal(r.clk.Now()) {
		t.Fatalf("down %+v, want last_failure refused since %v", h, r.clk.Now())
	}
	if got := counterValue(r.metrics.servers.down.WithLabelValues("echo")); got != 1 {
		t.Fatalf("down gauge %v", got)
	}
	if got := counterValue(r.metrics.servers.failing.WithLabelValues("echo")); got != 2 {
		t.Fatalf("failing gauge %v", got)
	}
	lines := r.logs.lines("MCP server down")
	if len(lines) != 1 || lines[0]["server"] != "echo" || lines[0]["failing"] != 2.0 || lines[0]["agents"] != 3.0 ||
		lines[0]["last_failure"] != "refused" || lines[0]["summary"] != "echo down for 2/3 agents" {
		t.Fatalf("down log lines %v", lines)
	}
	// While down, nobody is flagged or recovered for it, however long.
	for range 5 * 10 {
		r.clk.advance(r.cfg.CheckInterval)
		if r.at()%r.cfg.HeartbeatInterval == 0 {
			r.beat(map[string]string{"a1": ServerFailing, "a2": ServerFailing, "a3": ServerOK})
		} else {
			r.sweep()
		}
		r.wantHealth(serverDown, 2, 3)
	}
	for _, id := range []string{"a1", "a2", "a3"} {
		if rr := r.reresolves(id); len(rr) != 0 {
			t.Fatalf("%s got reresolves %v while echo is down", id, rr)
		}
		if st, _ := r.tr.lookup(id); len(st.MCPFailing) != 0 {
			t.Fatalf("%s flagged %v while echo is down", id, st.MCPFailing)
		}
	}
	if len(r.logs.lines("MCP server down")) != 1 {
		t.Fatal("down logged more than once")
	}
	// Back: the first agent's successful call clears it; the straggler's
	// failing time counts from then, so it is not blamed either.
	r.clk.advance(r.cfg.HeartbeatInterval)
	r.beat(map[string]string{"a1": ServerOK, "a2": ServerFailing, "a3": ServerOK})
	r.wantHealth(ServerOK, 1, 3)
	if up := r.logs.lines("MCP server back up"); len(up) != 1 || up[0]["server"] != "echo" {
		t.Fatalf("back-up log lines %v", up)
	}
	if got := counterValue(r.metrics.servers.down.WithLabelValues("echo")); got != 0 {
		t.Fatalf("down gauge %v after recovery", got)
	}
	r.clk.advance(r.cfg.HeartbeatInterval)
	r.beat(ok)
	r.wantHealth(ServerOK, 0, 3)
	if rr := r.reresolves("a2"); len(rr) != 0 {
		t.Fatalf("straggler got %v", rr)
	}
}

func TestServerOneFailingAgentIsFlaggedNotTheServer(t *testing.T) {
	r := newServerRig(t)
	r.beat(map[string]string{"a1": ServerOK, "a2": ServerOK})
	r.clk.advance(r.cfg.HeartbeatInterval)
	r.echo("a1", ServerFailing)
	failedAt := r.at()
	r.echo("a2", ServerOK)
	r.sweep()
	flagAt := failedAt + time.Duration(DefaultServerFailingAfter)*r.cfg.HeartbeatInterval
	for i := 0; i < 100 && r.at() < flagAt+5*r.cfg.HeartbeatInterval; i++ {
		r.clk.advance(r.cfg.CheckInterval)
		if r.at()%r.cfg.HeartbeatInterval == 0 {
			r.beat(map[string]string{"a1": ServerFailing, "a2": ServerOK})
		} else {
			r.sweep()
		}
		r.wantHealth(ServerOK, 1, 2) // 1/2 is not most: never down
		st, _ := r.tr.lookup("a1")
		flagged := slices.Equal(st.MCPFailing, []string{"echo"})
		if flagged != (r.at() >= flagAt) {
			t.Fatalf("at %v: a1 mcp_failing %v, want flagged from %v", r.at(), st.MCPFailing, flagAt)
		}
		// Exactly one reresolve of echo, queued when flagged, never again.
		if rr := r.reresolves("a1"); r.at() >= flagAt && (len(rr) != 1 || !slices.Equal(rr[0], []string{"echo"})) {
			t.Fatalf("at %v: a1 reresolves %v, want one of [echo]", r.at(), rr)
		}
		if st.Servers["echo"].State != ServerFailing || st.Servers["echo"].LastFailure != "refused" {
			t.Fatalf("a1 servers %+v", st.Servers)
		}
	}
	if got := counterValue(r.metrics.servers.agentsFlagged); got != 1 {
		t.Fatalf("flagged agents gauge %v", got)
	}
	if st, _ := r.tr.lookup("a2"); len(st.MCPFailing) != 0 || len(r.reresolves("a2")) != 0 {
		t.Fatalf("a2 %v %v", st.MCPFailing, r.reresolves("a2"))
	}
	if l := r.logs.lines("agent fails calls to an MCP server"); len(l) != 1 || l[0]["agent"] != "a1" || l[0]["server"] != "echo" {
		t.Fatalf("flag log lines %v", l)
	}
	// Its next successful call clears the flag.
	r.clk.advance(r.cfg.HeartbeatInterval)
	r.beat(map[string]string{"a1": ServerOK, "a2": ServerOK})
	if st, _ := r.tr.lookup("a1"); len(st.MCPFailing) != 0 {
		t.Fatalf("still flagged after success: %v", st.MCPFailing)
	}
	if got := counterValue(r.metrics.servers.agentsFlagged); got != 0 {
		t.Fatalf("flagged agents gauge %v after recovery", got)
	}
}

func TestServerIdleAndLostAgentsDoNotCount(t *testing.T) {
	r := newServerRig(t)
	r.beat(map[string]string{"a1": ServerOK, "a2": ServerOK, "a3": ServerOK, "a4": ServerIdle, "a5": ServerOK})
	r.wantHealth(ServerOK, 0, 4)
	// a5 goes silent until lost; the others beat on.
	for i := 0; r.state("a5") != StateLost; i++ {
		if i > 100 {
			t.Fatal("a5 never lost")
		}
		r.clk.advance(r.cfg.CheckInterval)
		if r.at()%r.cfg.HeartbeatInterval == 0 {
			r.beat(map[string]string{"a1": ServerOK, "a2": ServerOK, "a3": ServerOK, "a4": ServerIdle})
		} else {
			r.sweep()
		}
	}
	r.wantHealth(ServerOK, 0, 3)
	// Two of the three live users fail: down (2/4 with a lost or an idle
	// agent counted would not be).
	r.clk.advance(r.cfg.HeartbeatInterval)
	r.beat(map[string]string{"a1": ServerFailing, "a2": ServerFailing, "a3": ServerOK, "a4": ServerIdle})
	r.wantHealth(serverDown, 2, 3)
}

func TestServerSingleUserFailingIsDown(t *testing.T) {
	r := newServerRig(t)
	r.beat(map[string]string{"a1": ServerOK})
	r.clk.advance(r.cfg.HeartbeatInterval)
	r.beat(map[string]string{"a1": ServerFailing})
	r.wantHealth(serverDown, 1, 1)
	for range 5 {
		r.clk.advance(r.cfg.HeartbeatInterval)
		r.beat(map[string]string{"a1": ServerFailing})
	}
	if rr := r.reresolves("a1"); len(rr) != 0 {
		t.Fatalf("the only user got %v", rr)
	}
}

func TestServerDownRule(t *testing.T) {
	for _, tc := range []struct {
		failing, users int
		down           bool
	}{
		{0, 0, false}, {1, 1, true}, {0, 1, false}, {1, 2, false}, {2, 2, true},
		{1, 3, false}, {2, 3, true}, {2, 4, false}, {3, 4, true}, {50, 100, false}, {51, 100, true},
	} {
		if got := serverDownNow(tc.failing, tc.users); got != tc.down {
			t.Errorf("%d/%d: down %v, want %v", tc.failing, tc.users, got, tc.down)
		}
	}
}

func TestServersOutOfBoundsDiscardTheHeartbeat(t *testing.T) {
	many := make([]string, MaxServerEntries+1)
	for i := range many {
		many[i] = fmt.Sprintf(`"s%d":%s`, i, serverEntry(ServerOK))
	}
	atMost := strings.Join(many[:MaxServerEntries], ",")
	for _, tc := range []struct{ name, servers string }{
		{"257 servers", strings.Join(many, ",")},
		{"name over 64 bytes", `"` + strings.Repeat("s", 65) + `":` + serverEntry(ServerOK)},
		{"name not an identifier", `"a.b":` + serverEntry(ServerOK)},
		{"bad state", `"echo":{"state":"broken"}`},
		{"no state", `"echo":{"ok":1}`},
		{"bad error class", `"echo":{"state":"failing","last_error_class":"fatal"}`},
		{"last_failure over 64 bytes", `"echo":{"state":"failing","last_failure":"` + strings.Repeat("x", 65) + `"}`},
		{"last_failure free text", `"echo":{"state":"failing","last_failure":"password=hunter2"}`},
		{"counter over 2^53-1", `"echo":{"state":"ok","ok":9007199254740992}`},
		{"restarts over 2^53-1", `"echo":{"state":"ok","restarts":9007199254740992}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newServerRig(t)
			r.echo("b1", ServerOK)
			before := counterValue(r.metrics.hbDiscarded.WithLabelValues(DiscardOutOfBounds))
			seq := r.seq["b1"]
			r.hb("b1", `,"servers":{`+tc.servers+`}`)
			if got := counterValue(r.metrics.hbDiscarded.WithLabelValues(DiscardOutOfBounds)); got != before+1 {
				t.Fatalf("out_of_bounds discards %v, want %v", got, before+1)
			}
			st, _ := r.tr.lookup("b1")
			if st.Seq != seq || len(st.Servers) != 1 || st.Servers["echo"].State != ServerOK {
				t.Fatalf("discarded heartbeat applied: seq %d (want %d), servers %+v", st.Seq, seq, st.Servers)
			}
		})
	}
	// At the bounds: applied.
	r := newServerRig(t)
	r.hb("b2", `,"servers":{`+atMost+`}`)
	r.hb("b2", `,"servers":{"`+strings.Repeat("s", 64)+`":{"state":"failing","last_failure":"jsonrpc_-32603"},"t":{"state":"failing","last_failure":"brand_new_kind"}}`)
	st, _ := r.tr.lookup("b2")
	if len(st.Servers) != 2 || st.Servers["t"].LastFailure != "other" || st.Servers[strings.Repeat("s", 64)].LastFailure != "jsonrpc_-32603" {
		t.Fatalf("servers at the bounds %+v", st.Servers)
	}
	if got := counterValue(r.metrics.hbDiscarded.WithLabelValues(DiscardOutOfBounds)); got != 0 {
		t.Fatalf("%v discarded at the bounds", got)
	}
}

var serverSeeds = []string{
	`{"instance":"i","seq":1,"servers":{"echo":{"ok":12,"retried":3,"failed":1,"outcome_unknown":0,"state":"failing","last_error_class":"transient","last_failure":"refused","restarts":0},"jira":{"state":"idle"}}}`,
	`{"instance":"i","servers":null}`,
	`{"instance":"i","servers":{}}`,
	`{"instance":"i","servers":{"a":null}}`,
	`{"instance":"i","servers":{"a":{"state":"ok"},"a":{"ok":2}}}`,                 // a repeated key replaces
	`{"instance":"i","servers":{"a":{"state":"ok"}},"servers":{"b":{"ok":1}}}`,     // a repeated field adds
	`{"instance":"i","servers":{"a":{"state":"ok","state":"failing","ok":1}}}`,     // repeated inner keys merge
	`{"instance":"i","servers":{"a":{"State":"ok"}}}`,                              // other casing: slow path
	`{"instance":"i","servers":{"a":{"state":"o\u006b"}}}`,                         // escape: slow path
	`{"instance":"i","servers":{"a":{"ok":-1}}}`,                                   // error
	`{"instance":"i","servers":[]}`,                                                // error
	`{"instance":"i","servers":{"a":{"extra":[1,{"x":2}],"state":"quarantined"}}}`, // unknown skipped
	`{"instance":"i","servers":{"a":{"state":null,"ok":null}}}`,
}

func TestServersDecodeMatchesEncodingJSON(t *testing.T) {
	for _, s := range serverSeeds {
		checkDecode(t, []byte(s))
	}
	// Heartbeats with servers take the fast path.
	var hb hbIn
	d := hbDecoder{b: []byte(`{"instance":"i","servers":{"echo":{"ok":1,"state":"ok"}}}`)}
	if err := d.heartbeat(&hb); err != nil || hb.Servers["echo"].OK != 1 {
		t.Fatalf("fast path not taken: %v %+v", err, hb)
	}
}

func FuzzServersDecoder(f *testing.F) {
	for _, s := range serverSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) { checkDecode(t, data) })
}

func TestServersSurviveASupervisorRestart(t *testing.T) {
	r := newServerRig(t)
	r.beat(map[string]string{"a1": ServerOK, "a2": ServerOK})
	r.clk.advance(r.cfg.HeartbeatInterval)
	r.echo("a1", ServerFailing)
	for range 4 {
		r.clk.advance(r.cfg.HeartbeatInterval)
		r.beat(map[string]string{"a1": ServerFailing, "a2": ServerOK})
	}
	sh := r.tr.shard("a1")
	sh.mu.Lock()
	now, wall := r.tr.times()
	rec := r.tr.record(sh.m["a1"], now, wall)
	sh.mu.Unlock()
	data, err := encodeRecord(&rec)
	if err != nil {
		t.Fatal(err)
	}
	var back Record
	if err := json.Unmarshal(data, &back); err != nil {
		t.Fatal(err)
	}
	r2 := newServerRig(t)
	r2.tr.restore(&back)
	st, _ := r2.tr.lookup("a1")
	if !slices.Equal(st.MCPFailing, []string{"echo"}) || st.Servers["echo"].State != ServerFailing || st.Servers["echo"].OK != 3 {
		t.Fatalf("restored %+v", st)
	}
	// Its reresolve was queued before the restart (and restored with the
	// record): not queued again.
	if rr := r.reresolves("a1"); len(rr) != 1 {
		t.Fatalf("before the restart: reresolves %v", rr)
	}
	for range 3 {
		r2.clk.advance(r.cfg.HeartbeatInterval)
		r2.echo("a1", ServerFailing)
		r2.echo("a2", ServerOK)
		r2.sweep()
	}
	if rr := r2.reresolves("a1"); len(rr) != 1 || !slices.Equal(rr[0], []string{"echo"}) {
		t.Fatalf("after the restart: reresolves %v, want the one restored", rr)
	}
}

// An agent reporting as many servers at every bound as fit a heartbeat of
// MaxHeartbeatBytes still gets its mcp_fleet record written: the record
// adds failing_since to each, which takes it over mcp_fleet's max value
// size, so it is trimmed of its servers, keeping mcp_failing.
func TestServersAtTheBoundsFitTheFleetRecord(t *testing.T) {
	r := newServerRig(t)
	entry := fmt.Sprintf(`{"ok":%d,"retried":%[1]d,"failed":%[1]d,"outcome_unknown":%[1]d,"state":"failing","last_error_class":"transient","last_failure":"jsonrpc_-2147483648","restarts":%[1]d}`, uint64(MaxSafeInt))
	var servers []string
	n := min(MaxServerEntries, (MaxHeartbeatBytes-200)/(len(entry)+68))
	for i := range n {
		servers = append(servers, fmt.Sprintf("%q:%s", fmt.Sprintf("%060d%04d", 0, i), entry))
	}
	body := `,"servers":{` + strings.Join(servers, ",") + `}`
	r.hb("big", body)
	st, ok := r.tr.lookup("big")
	if !ok || len(st.Servers) != n {
		t.Fatalf("heartbeat at the bounds not applied: %v %d servers", ok, len(st.Servers))
	}
	st.MCPFailing = []string{"echo"}
	rec := Record{AgentStatus: st, Liveness: StateHealthy}
	full, _ := json.Marshal(rec)
	if len(full) <= kvconfig.MaxFleetRecordBytes {
		t.Fatalf("untrimmed record is %d bytes: not over the bound, the test proves nothing", len(full))
	}
	data, err := encodeRecord(&rec)
	if err != nil {
		t.Fatalf("record of %d bytes: %v", len(full), err)
	}
	var back Record
	if err := json.Unmarshal(data, &back); err != nil || !back.Trimmed || len(back.Servers) != 0 || !slices.Equal(back.MCPFailing, []string{"echo"}) {
		t.Fatalf("trimmed record (%d bytes from %d): %v %+v", len(data), len(full), err, back.AgentStatus.MCPFailing)
	}
}

// A hostile agent naming 256 servers and flapping them every heartbeat
// makes 256 transitions a sweep: the log lines they cause are bounded
// (and counted), the aggregates and metric labels by maxFleetServers.
func TestServerTransitionFloodIsSampled(t *testing.T) {
	r := newServerRig(t)
	states := []string{ServerOK, ServerFailing}
	for round := range 10 {
		var entries []string
		for i := range MaxServerEntries {
			entries = append(entries, fmt.Sprintf(`"x%d":%s`, i, serverEntry(states[round%2])))
		}
		r.clk.advance(r.cfg.HeartbeatInterval)
		r.hb("hostile", `,"servers":{`+strings.Join(entries, ",")+`}`)
		r.sweep()
	}
	lines := len(r.logs.lines("MCP server"))
	if lines == 0 || lines > 50 {
		t.Fatalf("%d MCP server log lines for %d transitions, want 1..50", lines, 10*MaxServerEntries)
	}
	if d := r.tr.sweep.srv.sampler.Dropped(); d < uint64(9*MaxServerEntries-50) {
		t.Fatalf("%d lines counted as dropped", d)
	}
	if n := len(r.tr.serverView()); n != MaxServerEntries {
		t.Fatalf("%d servers aggregated", n)
	}
}

func ExampleServerHealth_Summary() {
	fmt.Println(ServerHealth{Server: "echo", State: "down", Failing: 2, Agents: 2}.Summary())
	fmt.Println(ServerHealth{Server: "jira", State: ServerOK, Failing: 1, Agents: 3}.Summary())
	// Output:
	// echo down for 2/2 agents
	// jira ok (1/3 agents failing)
}

// A down server whose agents all go lost is no longer down (nobody is
// judged for it), and the log does not claim it came back.
func TestServerDownWhoseUsersAreLostIsNotSaidBackUp(t *testing.T) {
	r := newServerRig(t)
	r.beat(map[string]string{"a1": ServerFailing})
	r.wantHealth(serverDown, 1, 1)
	for i := 0; r.state("a1") != StateLost; i++ {
		if i > 100 {
			t.Fatal("a1 never lost")
		}
		r.step()
	}
	if h := r.health(); h.Server != "" {
		t.Fatalf("echo still aggregated with no live user: %+v", h)
	}
	if got := counterValue(r.metrics.servers.down.WithLabelValues("echo")); got != 0 {
		t.Fatalf("down gauge %v", got) // deleted, so a fresh series reads 0
	}
	if len(r.logs.lines("MCP server back up")) != 0 || len(r.logs.lines("MCP server no longer down")) != 1 {
		t.Fatalf("logs: back up %v, no longer down %v", r.logs.lines("MCP server back up"), r.logs.lines("MCP server no longer down"))
	}
}
