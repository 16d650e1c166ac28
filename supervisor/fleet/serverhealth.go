package fleet

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/internal/logsample"
)

// MCP server health across the fleet, the MCP analogue of mass silence.
// On every sweep, among the live agents (healthy or suspect) that report a
// server in a state other than idle, a server failing (failing or
// quarantined) for more than half of them is down: 1/1, 2/2, 2/3, 3/4 and
// so on. A single user failing is the server's fault too — with nothing to
// compare against, blaming (and recovering) the agent would only add load.
// While a server is down its agents are neither judged nor recovered for
// it. A server that is not down but that one agent keeps failing for
// ServerFailingAfter of its intervals while at least one other agent calls
// it successfully is flagged on that agent (mcp_failing) and the agent
// gets one reresolve of that server per failing episode, through the
// recovery queue and restart intensity (never looped). An agent's failing
// time counts from when the server was last down at the earliest, so the
// stragglers of a recovering server are not blamed.

// DefaultServerFailingAfter is the default of Config.ServerFailingAfter.
const DefaultServerFailingAfter = 2

// maxFleetServers bounds the servers aggregated (and so metric label
// values): servers are operator-defined, so a fleet has far fewer; past
// it, names not aggregated yet are ignored (logged once).
const maxFleetServers = 1024

// maxServersShown bounds the servers listed in a fleet.status reply (down
// ones first).
const maxServersShown = 256

// ServerHealth is one MCP server across the fleet at the last sweep.
type ServerHealth struct {
	Server string `json:"-"`
	// State is "down" (failing for most of its live users) or "ok".
	State string `json:"state"`
	// Failing of Agents live agents (idle ones not counted) fail calls to it.
	Failing int `json:"failing"`
	Agents  int `json:"agents"`
	// Since is when it went down; zero while ok.
	Since time.Time `json:"since,omitzero"`
	// LastFailure is the most common failure kind among the failing agents.
	LastFailure string `json:"last_failure,omitempty"`
}

// Summary is the one-line form the CLI, the dashboard and the log use:
// "echo down for 2/2 agents", "echo ok (1/3 agents failing)".
func (h ServerHealth) Summary() string {
	if h.State == serverDown {
		return fmt.Sprintf("%s down for %d/%d agents", h.Server, h.Failing, h.Agents)
	}
	return fmt.Sprintf("%s ok (%d/%d agents failing)", h.Server, h.Failing, h.Agents)
}

const serverDown = "down"

// serverAgg is one server's tally; owned by the sweep goroutine.
type serverAgg struct {
	users, failing, ok int
	failures           map[string]int
	down               bool
	downAt             int64 // monotonic
	downWall           time.Time
	upSince            int64 // monotonic: when it was last back up (0: never down)
	lastFailure        string
}

// serverEvent is a down/up transition or an agent flag, logged by act.
type serverEvent struct {
	kind          uint8
	server, agent string
	failing, of   int
	failure       string
	lasted        time.Duration
}

const (
	evServerDown uint8 = iota
	evServerUp
	evAgentFlagged
)

// serverSweep is the sweep's server state.
type serverSweep struct {
	aggs    map[string]*serverAgg
	cand    []string // live agents failing for some server, this sweep
	events  []serverEvent
	gone    []string // aggregates dropped this sweep (their metrics go)
	flagged int      // agents flagged mcp_failing among this sweep's candidates
	full    bool
	// log is sampled by sampler: agents name servers, so hostile ones could
	// make transitions flap; a real fleet's few servers never reach it.
	log     zerolog.Logger
	sampler *logsample.Sampler
}

// initServerLog sets the (sampled) logger of server transitions and flags.
func (t *tracker) initServerLog(log zerolog.Logger) {
	ss := &t.sweep.srv
	if ss.sampler == nil {
		ss.sampler = logsample.New("mcp server health", 50, time.Second)
	}
	ss.log = ss.sampler.Logger(log)
}

// beginServers zeroes the tallies before a sweep counts agents.
func (t *tracker) beginServers() {
	ss := &t.sweep.srv
	if ss.aggs == nil {
		ss.aggs = map[string]*serverAgg{}
	}
	for _, g := range ss.aggs {
		g.users, g.failing, g.ok = 0, 0, 0
		clear(g.failures)
	}
	ss.cand, ss.events, ss.gone, ss.flagged = ss.cand[:0], ss.events[:0], ss.gone[:0], 0
}

// tallyServers counts one agent's servers (a.servers is not nil); its
// shard lock is held.
func (t *tracker) tallyServers(a *agent) {
	if a.live != StateHealthy && a.live != StateSuspect {
		return
	}
	ss := &t.sweep.srv
	cand := false
	list := *a.servers
	for i := range list {
		s := &list[i]
		if s.state == srvIdle {
			continue
		}
		g := ss.aggs[s.name]
		if g == nil {
			if len(ss.aggs) >= maxFleetServers {
				if !ss.full {
					ss.full = true
					ss.log.Error().Int("max_servers", maxFleetServers).Str("server", s.name).
						Msg("MCP server health: more distinct server names reported than are aggregated; further names are ignored")
				}
				continue
			}
			g = &serverAgg{failures: map[string]int{}}
			ss.aggs[s.name] = g
		}
		g.users++
		if failing(s.state) {
			g.failing++
			g.failures[s.failure]++
			cand = true
		} else {
			g.ok++
		}
	}
	if cand {
		ss.cand = append(ss.cand, a.id)
	}
}

// serverDownNow is the fleet-wide rule: failing for more than half of the
// live agents that use the server (a single user counts: 1/1 is down).
func serverDownNow(failing, users int) bool {
	return users > 0 && 2*failing > users
}

// judgeServers flags servers down or back up from this sweep's tallies,
// then judges the agents failing for servers that are not down.
func (t *tracker) judgeServers(now int64, wall time.Time, command bool) {
	ss := &t.sweep.srv
	for name, g := range ss.aggs {
		g.lastFailure = mostCommon(g.failures)
		down := serverDownNow(g.failing, g.users)
		switch {
		case down && !g.down:
			g.down, g.downAt, g.downWall = true, now, wall
			ss.events = append(ss.events, serverEvent{kind: evServerDown, server: name, failing: g.failing, of: g.users, failure: g.lastFailure})
		case !down && g.down:
			g.down, g.upSince = false, now
			ss.events = append(ss.events, serverEvent{kind: evServerUp, server: name, failing: g.failing, of: g.users,
				failure: g.lastFailure, lasted: time.Duration(now - g.downAt)})
		}
		if g.users == 0 && !g.down {
			delete(ss.aggs, name)
			ss.gone = append(ss.gone, name)
		}
	}
	for _, id := range ss.cand {
		sh := t.shard(id)
		sh.mu.Lock()
		if a := sh.m[id]; a != nil {
			t.judgeAgentServers(a, now, command)
		}
		sh.mu.Unlock()
	}
	t.publishServers()
}

// judgeAgentServers flags (and recovers, when command) an agent failing
// for a server other agents reach; the shard lock is held.
func (t *tracker) judgeAgentServers(a *agent, now int64, command bool) {
	ss := &t.sweep.srv
	need := int64(t.cfg.ServerFailingAfter) * int64(effectiveInterval(t.cfg.HeartbeatInterval, a.intervalMS))
	flagged := false
	list := a.serverList()
	for i := range list {
		s := &list[i]
		g := ss.aggs[s.name]
		if !failing(s.state) || g == nil {
			continue
		}
		if g.down { // the server's fault: neither judged nor recovered for it
			if s.flagged {
				s.flagged = false
				a.dirty |= dirtyOther
			}
			continue
		}
		if !s.flagged && g.ok > 0 && now-max(s.failSince, g.upSince) >= need {
			s.flagged = true
			a.dirty |= dirtyOther
			ss.events = append(ss.events, serverEvent{kind: evAgentFlagged, server: s.name, agent: a.id,
				failing: g.failing, of: g.users, failure: s.failure, lasted: time.Duration(now - s.failSince)})
		}
		flagged = flagged || s.flagged
		if s.flagged && command && !s.reresolved && !a.quarantined && a.live == StateHealthy {
			s.reresolved = true
			t.serverRecovery(a, s, now)
		}
	}
	if flagged {
		ss.flagged++
	}
}

// serverRecovery queues one reresolve of the server for the agent: its
// config may be stale. It counts towards the restart intensity.
func (t *tracker) serverRecovery(a *agent, s *agentServer, now int64) {
	why := "calls to MCP server " + s.name + " fail"
	if s.failure != "" {
		why += " (" + s.failure + ")"
	}
	why += " while other agents reach it: re-resolving its config"
	if t.noteRecovery(a, now, why) {
		t.sweep.quar = append(t.sweep.quar, a.id)
		return
	}
	t.addPending(a, agentproto.Command{Type: agentproto.CmdReresolve, Servers: []string{s.name}, Reason: why}, true, now)
	t.enqueueRecovery(a.id)
}

// mostCommon is the most frequent failure kind (ties: the first by name).
func mostCommon(m map[string]int) string {
	best, n := "", 0
	for k, c := range m {
		if c > n || c == n && k < best {
			best, n = k, c
		}
	}
	return best
}

// publishServers makes this sweep's picture readable by fleet.status,
// the dashboard and metrics (down servers first, then by name).
func (t *tracker) publishServers() {
	ss := &t.sweep.srv
	if len(ss.aggs) == 0 && len(t.serverView()) == 0 {
		return // a fleet without MCP server reports: nothing to publish, no allocation
	}
	out := make([]ServerHealth, 0, len(ss.aggs))
	for name, g := range ss.aggs {
		h := ServerHealth{Server: name, State: ServerOK, Failing: g.failing, Agents: g.users, LastFailure: g.lastFailure}
		if g.down {
			h.State, h.Since = serverDown, g.downWall.UTC()
		}
		out = append(out, h)
	}
	slices.SortFunc(out, func(x, y ServerHealth) int {
		if (x.State == serverDown) != (y.State == serverDown) {
			if x.State == serverDown {
				return -1
			}
			return 1
		}
		return strings.Compare(x.Server, y.Server)
	})
	t.servers.Store(&out)
}

// serverView is the last sweep's per-server picture.
func (t *tracker) serverView() []ServerHealth {
	if p := t.servers.Load(); p != nil {
		return *p
	}
	return nil
}

// actServers logs this sweep's server transitions and agent flags and
// sets the server metrics; outside any lock.
func (t *tracker) actServers() {
	ss := &t.sweep.srv
	for _, e := range ss.events {
		switch e.kind {
		case evServerDown:
			h := ServerHealth{Server: e.server, State: serverDown, Failing: e.failing, Agents: e.of}
			ss.log.Error().Str("server", e.server).Int("failing", e.failing).Int("agents", e.of).Str("last_failure", e.failure).
				Str("summary", h.Summary()).Msg("MCP server down: failing for most of the agents that call it; its agents are not judged or recovered for it")
		case evServerUp:
			msg := "MCP server back up"
			if e.of == 0 {
				msg = "MCP server no longer down: no live agent calls it any more (it was not seen back up)"
			}
			ss.log.Warn().Str("server", e.server).Int("failing", e.failing).Int("agents", e.of).Str("last_failure", e.failure).
				Dur("down_ms", e.lasted).Msg(msg)
		case evAgentFlagged:
			ss.log.Warn().Str("agent", e.agent).Str("server", e.server).Str("last_failure", e.failure).
				Int("failing", e.failing).Int("agents", e.of).Dur("failing_ms", e.lasted).
				Msg("agent fails calls to an MCP server other agents reach: flagged mcp_failing, re-resolving its config")
		}
	}
	t.metrics.serverGauges(t.serverView(), ss.gone, ss.flagged)
}

// serverMap is the fleet.status form of view: at most n, by name.
func serverMap(view []ServerHealth, n int) map[string]ServerHealth {
	if len(view) == 0 {
		return nil
	}
	out := make(map[string]ServerHealth, min(n, len(view)))
	for _, h := range view[:min(n, len(view))] {
		out[h.Server] = h
	}
	return out
}

// Servers is MCP server health across the fleet at the last sweep: down
// servers first, then by name.
func (f *Fleet) Servers() []ServerHealth { return f.t.serverView() }

// serverMetrics are the per-server gauges; their server label takes at
// most maxFleetServers values (operator-defined names), and a server no
// live agent reports any more is deleted from them.
type serverMetrics struct {
	down, agents, failing *prometheus.GaugeVec
	agentsFlagged         prometheus.Gauge
}

func newServerMetrics(reg prometheus.Registerer) serverMetrics {
	gv := func(name, help string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: help}, []string{"server"})
	}
	m := serverMetrics{
		down:    gv("tether_mcp_server_down", "1 while an MCP server fails for most of the live agents that call it (more than half; idle agents not counted)."),
		agents:  gv("tether_mcp_server_agents", "Live agents calling an MCP server (state ok, failing or quarantined), at the last sweep."),
		failing: gv("tether_mcp_server_failing_agents", "Live agents whose calls to an MCP server fail (failing or quarantined), at the last sweep."),
		agentsFlagged: prometheus.NewGauge(prometheus.GaugeOpts{Name: "tether_fleet_mcp_failing_agents",
			Help: "Live agents flagged mcp_failing: failing calls to an MCP server that other agents reach."}),
	}
	reg.MustRegister(m.down, m.agents, m.failing, m.agentsFlagged)
	return m
}

func (m *Metrics) serverGauges(view []ServerHealth, gone []string, flagged int) {
	if m == nil {
		return
	}
	s := &m.servers
	for _, name := range gone {
		s.down.DeleteLabelValues(name)
		s.agents.DeleteLabelValues(name)
		s.failing.DeleteLabelValues(name)
	}
	for _, h := range view {
		v := 0.0
		if h.State == serverDown {
			v = 1
		}
		s.down.WithLabelValues(h.Server).Set(v)
		s.agents.WithLabelValues(h.Server).Set(float64(h.Agents))
		s.failing.WithLabelValues(h.Server).Set(float64(h.Failing))
	}
	s.agentsFlagged.Set(float64(flagged))
}
