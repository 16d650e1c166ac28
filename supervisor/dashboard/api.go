package dashboard

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"

	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/kvconfig"
	"github.com/tether-dev/tether/supervisor/fleet"
)

// Paging of the dashboard's table.
const (
	defaultLimit = 200
	maxLimit     = 1000
	// maxConfigs bounds the per-server configs shown in one table row.
	maxConfigs = 12
	// maxEventsShown bounds the events sent in one message or reply.
	maxEventsShown = 500
)

// agentRow is one agent in the dashboard's table: a compact fleet.AgentStatus.
type agentRow struct {
	ID         string `json:"id"`
	State      string `json:"state"`
	Since      int64  `json:"since"` // unix ms
	Reason     string `json:"reason,omitempty"`
	Role       string `json:"role,omitempty"`
	HeardMS    int64  `json:"heard_ms"` // heartbeat age; -1: never heard
	IntervalMS int64  `json:"interval_ms,omitempty"`
	// Conn is the connection state the last heartbeat reported (HeardMS
	// ago); ConnStale: the agent is no longer live, so it is history.
	Conn      string  `json:"conn,omitempty"`
	ConnStale bool    `json:"conn_stale,omitempty"`
	RTT       float64 `json:"rtt_ms"`
	// Reconnects, OK, Retried and Failed are the agent's cumulative
	// counters; Recent how much they rose over the rate window (nil: not
	// at all).
	Reconnects uint64        `json:"reconnects"`
	OK         uint64        `json:"ok"`
	Retried    uint64        `json:"retried"`
	Failed     uint64        `json:"failed"`
	Recent     *recentCounts `json:"recent,omitempty"`
	ErrClass   string        `json:"err_class,omitempty"`
	Configs    []configRow   `json:"configs,omitempty"`
	MoreCfgs   int           `json:"more_configs,omitempty"`
	Pending    int           `json:"pending,omitempty"`
	Unacked    int           `json:"probes_unacked,omitempty"`
	// Backlog is the tasks waiting or unacknowledged in its declared
	// consumers; QueueZombie: they pile up with no ack while it heartbeats.
	Backlog     uint64 `json:"backlog,omitempty"`
	QueueZombie bool   `json:"queue_zombie,omitempty"`
	Restarts    uint32 `json:"restarts,omitempty"`
	Duplicate   bool   `json:"duplicate,omitempty"`
	Skewed      bool   `json:"skewed,omitempty"`
	// Warnings are the status's (a role no config names).
	Warnings []string `json:"warnings,omitempty"`
	// MCPFailing are the MCP servers it fails while other agents reach them.
	MCPFailing []string `json:"mcp_failing,omitempty"`
}

// configRow is one server's config revision: what the agent runs (Rev,
// Applied, Err) and what it resolves to now (Cur, CurErr).
type configRow struct {
	Server  string `json:"server"`
	Rev     uint64 `json:"rev"`
	Applied bool   `json:"applied"`
	Err     string `json:"err,omitempty"`
	Stale   bool   `json:"stale,omitempty"`
	Cur     uint64 `json:"cur,omitempty"`
	CurErr  string `json:"cur_err,omitempty"`
}

func makeRow(st fleet.AgentStatus) agentRow {
	r := agentRow{ID: st.Agent, State: st.State.String(), Reason: st.Reason, Role: st.Role,
		HeardMS: -1, IntervalMS: st.IntervalMS, Conn: st.Conn.State, RTT: round2(st.Conn.RTTMS),
		Reconnects: st.Conn.Reconnects, OK: st.Calls.OK, Retried: st.Calls.Retried, Failed: st.Calls.Failed,
		ErrClass: st.Calls.LastErrorClass, Pending: st.Pending, Unacked: st.ProbesUnacked,
		Restarts: st.Restarts, Duplicate: st.Duplicate, Skewed: st.ClockSkewed, Warnings: st.Warnings, MCPFailing: st.MCPFailing,
		Backlog: st.Backlog, QueueZombie: st.QueueZombie}
	if !st.Since.IsZero() {
		r.Since = st.Since.UnixMilli()
	}
	if !st.LastHeard.IsZero() {
		r.HeardMS = st.SilentMS
	}
	r.ConnStale = connStale(st.State, r.HeardMS, st.IntervalMS)
	if len(st.Configs) > 0 {
		names := make([]string, 0, len(st.Configs))
		for s := range st.Configs {
			names = append(names, s)
		}
		sort.Strings(names)
		if len(names) > maxConfigs {
			r.MoreCfgs = len(names) - maxConfigs
			names = names[:maxConfigs]
		}
		r.Configs = make([]configRow, len(names))
		for i, s := range names {
			c := st.Configs[s]
			r.Configs[i] = configRow{Server: s, Rev: c.Revision, Applied: c.Applied, Err: c.Error, Stale: c.Stale, Cur: c.Current, CurErr: c.CurrentError}
		}
	}
	return r
}

// connStale reports whether an agent's connection report (heardMS old)
// is history rather than news: it is suspect, lost or gone, or
// quarantined and late by more than two of its announced intervals.
func connStale(st fleet.State, heardMS, intervalMS int64) bool {
	switch st {
	case fleet.StateSuspect, fleet.StateLost, fleet.StateGone:
		return true
	case fleet.StateQuarantined:
		return intervalMS > 0 && heardMS > 2*intervalMS
	}
	return false
}

// pageQuery selects and pages the table: by state (or "problem": neither
// healthy nor gone), role, a substring of the agent id, or one agent.
type pageQuery struct {
	state  string // "" for all
	role   string
	q      string
	agent  string
	byID   bool // sort by id; default: worst state first
	offset int
	limit  int
}

// parsePageQuery validates a query string; errors name the parameter.
func parsePageQuery(v url.Values) (pageQuery, error) {
	q := pageQuery{state: v.Get("state"), role: v.Get("role"), q: v.Get("q"), agent: v.Get("agent"), limit: defaultLimit}
	if q.state != "" && q.state != "problem" {
		if _, ok := fleet.ParseState(q.state); !ok {
			return q, fmt.Errorf("dashboard: state %q is not one of problem, healthy, suspect, lost, zombie, quarantined, gone", q.state)
		}
	}
	if q.role != "" {
		if err := kvconfig.ValidateID(kvconfig.KindRole, q.role); err != nil {
			return q, err
		}
	}
	if q.agent != "" {
		if err := kvconfig.ValidateID(kvconfig.KindAgent, q.agent); err != nil {
			return q, err
		}
	}
	if q.q != "" && !kvconfig.ValidID(q.q) {
		return q, fmt.Errorf("dashboard: search %q: agent ids have only A-Z a-z 0-9 _ - (at most %d)", kvconfig.Truncate(q.q, 80), kvconfig.MaxIDLen)
	}
	q.q = strings.ToLower(q.q)
	switch s := v.Get("sort"); s {
	case "", "state":
	case "id":
		q.byID = true
	default:
		return q, fmt.Errorf("dashboard: sort %q is not state or id", kvconfig.Truncate(s, 80))
	}
	for _, p := range []struct {
		name     string
		dst      *int
		min, max int
	}{{"offset", &q.offset, 0, 1 << 30}, {"limit", &q.limit, 1, maxLimit}} {
		s := v.Get(p.name)
		if s == "" {
			continue
		}
		n, err := strconv.Atoi(s)
		if err != nil || n < p.min || n > p.max {
			return q, fmt.Errorf("dashboard: %s %q is not an integer in %d..%d", p.name, kvconfig.Truncate(s, 80), p.min, p.max)
		}
		*p.dst = n
	}
	return q, nil
}

func (q *pageQuery) match(r *agentRow) bool {
	switch {
	case q.agent != "" && r.ID != q.agent:
		return false
	case q.state == "problem" && (r.State == "healthy" || r.State == "gone"):
		return false
	case q.state != "" && q.state != "problem" && r.State != q.state:
		return false
	case q.role != "" && r.Role != q.role:
		return false
	case q.q != "" && !strings.Contains(strings.ToLower(r.ID), q.q):
		return false
	}
	return true
}

// pageReply is one page of the table.
type pageReply struct {
	Rows    []agentRow `json:"rows"`
	Matched int        `json:"matched"` // rows matching the filters, all pages
	Offset  int        `json:"offset"`
	Limit   int        `json:"limit"`
}

// row is agent id's row, nil when the snapshot has none.
func (s *fleetSnap) row(id string) *agentRow {
	i := sort.Search(len(s.rows), func(i int) bool { return s.rows[i].ID >= id })
	if i < len(s.rows) && s.rows[i].ID == id {
		return &s.rows[i]
	}
	return nil
}

// page selects the rows of q from a snapshot.
func (s *fleetSnap) page(q pageQuery) pageReply {
	p := pageReply{Rows: []agentRow{}, Offset: q.offset, Limit: q.limit}
	if q.agent != "" {
		if row := s.row(q.agent); row != nil {
			p.Rows, p.Matched = append(p.Rows, *row), 1
		}
		return p
	}
	take := func(r *agentRow) {
		if !q.match(r) {
			return
		}
		if p.Matched >= q.offset && len(p.Rows) < q.limit {
			p.Rows = append(p.Rows, *r)
		}
		p.Matched++
	}
	if q.byID {
		for i := range s.rows {
			take(&s.rows[i])
		}
	} else {
		for _, i := range s.bySev {
			take(&s.rows[i])
		}
	}
	return p
}

// fleetReply is the reply of /api/fleet and the head of every stream message.
type fleetReply struct {
	Seq         uint64         `json:"seq"`
	T           int64          `json:"t"` // unix ms of the sample
	IntervalMS  int64          `json:"interval_ms"`
	Counts      map[string]int `json:"counts"`
	Total       int            `json:"total"`
	MassSilence bool           `json:"mass_silence,omitempty"`
	Leader      bool           `json:"leader"`
	// LeaderID is the replica holding the lease; NoLeaderMS how long none
	// has (then nobody sends commands).
	LeaderID   string `json:"leader_id,omitempty"`
	NoLeaderMS int64  `json:"no_leader_ms,omitempty"`
	// RateWindowMS is how far back the rows' recent failures look.
	RateWindowMS int64    `json:"rate_window_ms"`
	Roles        []string `json:"roles,omitempty"`
	// Notices are the invalid entries and the roles no config names
	// (notices.go); a stream sends them only when they changed.
	Notices json.RawMessage `json:"notices,omitempty"`
	Page    *pageReply      `json:"page,omitempty"`
}

func (d *Dashboard) head(s *fleetSnap) fleetReply {
	return fleetReply{Seq: s.seq, T: s.at.UnixMilli(), IntervalMS: d.rec.cfg.Interval.Milliseconds(),
		Counts: s.counts, Total: s.total, MassSilence: s.mass, Leader: s.leader,
		LeaderID: s.holder, NoLeaderMS: s.noLeader.Milliseconds(), RateWindowMS: d.rec.cfg.RateWindow.Milliseconds()}
}

// serveFleet is GET /api/fleet: counts and one page of the table.
func (d *Dashboard) serveFleet(w http.ResponseWriter, r *http.Request) {
	q, err := parsePageQuery(r.URL.Query())
	if err != nil {
		apiError(w, http.StatusBadRequest, err)
		return
	}
	s, _ := d.rec.current()
	rep := d.head(s)
	rep.Roles, rep.Notices = s.roles, s.notices
	p := s.page(q)
	rep.Page = &p
	secure(w)
	writeJSON(w, http.StatusOK, rep)
}

// serveTimeline is GET /api/timeline[?agent=ID]: the recent state changes
// and latency samples.
func (d *Dashboard) serveTimeline(w http.ResponseWriter, r *http.Request) {
	agent := r.URL.Query().Get("agent")
	var keep func(*stateEvent) bool
	if agent != "" {
		if err := kvconfig.ValidateID(kvconfig.KindAgent, agent); err != nil {
			apiError(w, http.StatusBadRequest, err)
			return
		}
		keep = func(e *stateEvent) bool { return e.Agent == agent }
	}
	evs, dropped, _, _ := d.rec.eventsSince(0, maxEventsShown, keep)
	smp, _ := d.rec.samplesSince(0)
	secure(w)
	writeJSON(w, http.StatusOK, map[string]any{
		"events": nonNil(evs), "events_dropped": dropped, "samples": nonNil(smp),
		"interval_ms": d.rec.cfg.Interval.Milliseconds()})
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// agentDetail is the reply of /api/agent/{id}: the agent's status, its
// pending commands, and for every server visible to it the explain output
// and the winning config with secrets masked.
type agentDetail struct {
	Agent   string               `json:"agent"`
	Known   bool                 `json:"known"`
	Status  *fleet.AgentStatus   `json:"status,omitempty"`
	Pending []agentproto.Command `json:"pending,omitempty"`
	Role    string               `json:"role,omitempty"`
	// Warnings are about the agent's registration: no entry in
	// mcp_agents, or a role that no config names (explain's texts).
	Warnings   []string       `json:"warnings,omitempty"`
	IndexError string         `json:"index_error,omitempty"`
	Servers    []serverDetail `json:"servers"`
	Events     []stateEvent   `json:"events"`
	// ConnStale: Status.Conn is the report of an agent no longer live.
	ConnStale bool `json:"conn_stale,omitempty"`
	// Recent is how much its failure counters rose over RateWindowMS, as
	// of the dashboard's latest sample (absent: not at all).
	Recent       *recentCounts `json:"recent,omitempty"`
	RateWindowMS int64         `json:"rate_window_ms"`
}

// serverDetail is one server as the agent would resolve it now.
type serverDetail struct {
	Server       string                 `json:"server"`
	Explain      *kvconfig.Explanation  `json:"explain,omitempty"`
	ExplainError string                 `json:"explain_error,omitempty"`
	Config       *kvconfig.ServerConfig `json:"config,omitempty"` // masked
}

// serveAgent is GET /api/agent/{id}.
func (d *Dashboard) serveAgent(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := kvconfig.ValidateID(kvconfig.KindAgent, id); err != nil {
		apiError(w, http.StatusBadRequest, err)
		return
	}
	secure(w)
	writeJSON(w, http.StatusOK, d.detail(id))
}

// detail is everything the agent page shows of a valid agent id.
func (d *Dashboard) detail(id string) agentDetail {
	det := agentDetail{Agent: id, Servers: []serverDetail{}, RateWindowMS: d.rec.cfg.RateWindow.Milliseconds()}
	var running map[string]fleet.ConfigStatus
	if st, ok := d.src.Agent(id); ok {
		det.Known, det.Status, running = true, &st, st.Configs
		det.Pending = d.src.Pending(id)
		heard := int64(-1)
		if !st.LastHeard.IsZero() {
			heard = st.SilentMS
		}
		det.ConnStale = connStale(st.State, heard, st.IntervalMS)
	}
	if s, _ := d.rec.current(); s != nil {
		if row := s.row(id); row != nil {
			det.Recent = row.Recent
		}
	}
	det.Events, _, _, _ = d.rec.eventsSince(0, maxEventsShown, func(e *stateEvent) bool { return e.Agent == id })
	det.Events = nonNil(det.Events)
	ix := d.index()
	if ix == nil {
		det.IndexError = "config index not open yet"
	} else {
		det.Role, det.Servers, det.IndexError = explainAll(ix, id, running)
		det.Warnings = ix.AgentWarnings(id)
	}
	return det
}

// explainAll explains every server visible to the agent plus every server
// it reports running (which may no longer resolve), sorted by name.
func explainAll(ix *kvconfig.Index, id string, running map[string]fleet.ConfigStatus) (string, []serverDetail, string) {
	role, items, err := ix.ResolveAll(id)
	if err != nil {
		if errors.Is(err, kvconfig.ErrNotReady) {
			return "", []serverDetail{}, "config index still loading; try again in a moment"
		}
		return "", []serverDetail{}, err.Error()
	}
	names := map[string]*kvconfig.ServerConfig{}
	for _, it := range items {
		names[it.Server] = nil
		if it.Err == nil && it.Config != nil {
			names[it.Server] = it.Config.Masked()
		}
	}
	for s := range running {
		if _, ok := names[s]; !ok {
			names[s] = nil
		}
	}
	out := make([]serverDetail, 0, len(names))
	for s, cfg := range names {
		sd := serverDetail{Server: s, Config: cfg}
		if x, err := ix.Explain(id, s); err != nil {
			sd.ExplainError = err.Error()
		} else {
			sd.Explain = &x
		}
		out = append(out, sd)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Server < out[j].Server })
	return role, out, ""
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
