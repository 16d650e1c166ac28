package fleet

import (
	"bytes"
	"encoding/json"
	"errors"
	"sort"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/micro"
	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/kvconfig"
)

// statusHeadroom is kept free under the server's max payload for headers
// and the reply's tail.
const statusHeadroom = 4 << 10

// maxInvalidShown bounds the invalid operator entries listed in a status reply.
const maxInvalidShown = 50

// maxRolesShown bounds the unconfigured roles listed in a status reply.
const maxRolesShown = 50

// maxInvalidError bounds the error text of one listed invalid entry: room
// for every problem of a typical value (three come to ~340 bytes), while
// 50 entries stay ~50 KiB of a reply.
const maxInvalidError = 1 << 10

// ConnInfo is an agent's connection as its last heartbeat reported it.
type ConnInfo = connInfo

// CallInfo are an agent's call counters as its last heartbeat reported them.
type CallInfo = callInfo

// ConfigStatus is one server's config as the agent runs it (revision,
// applied, error, stale from its heartbeat) next to what it resolves to now.
type ConfigStatus struct {
	Revision uint64 `json:"revision"`
	Applied  bool   `json:"applied"`
	Error    string `json:"error,omitempty"`
	Stale    bool   `json:"stale,omitempty"`
	// Current is the revision the agent resolves to now; CurrentError says
	// why it resolves to nothing (404, 422).
	Current      uint64 `json:"current,omitempty"`
	CurrentError string `json:"current_error,omitempty"`
}

// AgentStatus is one agent as mcp.v1.fleet.status and mcp_fleet show it.
type AgentStatus struct {
	Agent  string    `json:"agent"`
	State  State     `json:"state"`
	Since  time.Time `json:"since"`
	Reason string    `json:"reason,omitempty"`
	Role   string    `json:"role,omitempty"`
	// Instance is the process instance last heard; Seq its last sequence.
	Instance   string    `json:"instance,omitempty"`
	Seq        uint64    `json:"seq,omitempty"`
	LastHeard  time.Time `json:"last_heard,omitzero"`
	SilentMS   int64     `json:"silent_ms"`
	IntervalMS int64     `json:"interval_ms,omitempty"`
	Conn       ConnInfo  `json:"conn"`
	Calls      CallInfo  `json:"calls"`
	// Configs is per server: what the agent runs vs what it resolves to now.
	Configs map[string]ConfigStatus `json:"configs,omitempty"`
	// Restarts counts new instances; Recoveries the recovery events within
	// the quarantine period.
	Restarts      uint32 `json:"restarts,omitempty"`
	Recoveries    int    `json:"recoveries,omitempty"`
	Pending       int    `json:"pending,omitempty"`
	ProbesUnacked int    `json:"probes_unacked,omitempty"`
	// Duplicate: two instances heartbeat alternately under this id.
	Duplicate bool `json:"duplicate,omitempty"`
	// Spoofed counts heartbeats on this agent's subject naming another agent.
	Spoofed     uint32 `json:"spoofed,omitempty"`
	ClockSkewMS int64  `json:"clock_skew_ms,omitempty"`
	ClockSkewed bool   `json:"clock_skewed,omitempty"`
	// Servers is per MCP server the agent calls, as its last heartbeat
	// reported it; MCPFailing lists the servers it fails to reach while
	// other agents reach them (judged per agent: see serverhealth.go).
	Servers    map[string]ServerCalls `json:"servers,omitempty"`
	MCPFailing []string               `json:"mcp_failing,omitempty"`
	// Consumers are the durable consumers the agent declares, with their
	// backlog as the leader last read it; Backlog sums their pending and
	// unacknowledged messages; QueueZombie: it heartbeats while a backlog
	// has had no ack progress for Fleet.QueueZombieAfter intervals (its
	// state shows zombie).
	Consumers   []QueueStatus `json:"consumers,omitempty"`
	Backlog     uint64        `json:"backlog,omitempty"`
	QueueZombie bool          `json:"queue_zombie,omitempty"`
	// Warnings: what an operator most likely did not mean, such as a role
	// in mcp_agents that no config names (the agent silently gets global
	// configs only); the text is the one explain shows.
	Warnings []string `json:"warnings,omitempty"`
}

// InvalidEntry is an operator-written KV entry that is malformed: it is
// not pushed, and agents keep their last good config.
type InvalidEntry struct {
	Bucket   string `json:"bucket"`
	Key      string `json:"key"`
	Revision uint64 `json:"revision"`
	Error    string `json:"error"`
}

// Status is the reply of mcp.v1.fleet.status.
type Status struct {
	// Agents is this page, sorted by agent id.
	Agents []AgentStatus `json:"agents"`
	// Next is passed back as "after" for the next page; empty on the last.
	Next string `json:"next"`
	statusHead
}

// statusHead is everything in a status reply but the page itself.
type statusHead struct {
	// Counts is agents per state, over every agent matching the agent and
	// role filters (the state filter and paging do not change it).
	Counts map[string]int `json:"counts"`
	// Total is the number of agents counted.
	Total int `json:"total"`
	// MassSilence: a large share of the fleet went silent at once; the
	// supervisor suspects the broker or its own link and sends nothing.
	MassSilence bool `json:"mass_silence,omitempty"`
	Silent      int  `json:"silent,omitempty"`
	// Leader: this supervisor sends commands and writes mcp_fleet.
	Leader bool `json:"leader"`
	// Invalid lists malformed operator entries (first 50 by bucket and key).
	Invalid []InvalidEntry `json:"invalid,omitempty"`
	// UnconfiguredRoles lists roles that records in mcp_agents name but no
	// key in mcp_configs does (first 50 by role): their agents get global
	// configs only. Fleet-wide, whatever the filters.
	UnconfiguredRoles []kvconfig.RoleUse `json:"unconfigured_roles,omitempty"`
	// Servers is MCP server health across the fleet at the last sweep, by
	// server name (first 256, down ones first); fleet-wide, whatever the
	// filters. Absent when no live agent reports a server.
	Servers map[string]ServerHealth `json:"servers,omitempty"`
}

// snapshot is an agent's status; the shard lock is held.
func (t *tracker) snapshot(a *agent, now int64, wall time.Time) AgentStatus {
	st := AgentStatus{
		Agent: a.id, State: a.state, Reason: a.reason(), Instance: a.instance, Seq: a.seq,
		IntervalMS: a.intervalMS, Conn: a.conn, Calls: a.calls, Restarts: a.restarts(),
		Recoveries: len(a.recoveries()), Pending: len(a.pending()), ProbesUnacked: overdueProbes(a.probes, now, t.timing(a).probeTimeout),
		Duplicate: a.duplicate, Spoofed: a.spoofed(), ClockSkewMS: a.skewMS, ClockSkewed: a.skewed,
	}
	st.Since = wall.Add(time.Duration(a.since - now)).UTC()
	t.queueSnapshot(a, now, &st)
	if a.heardWall != 0 {
		st.LastHeard = time.Unix(0, a.heardWall).UTC()
		st.SilentMS = time.Duration(now - a.heard).Milliseconds()
	}
	serverSnapshot(&st, a, now, wall)
	ix := t.index.Load()
	if ix != nil {
		var w string
		if st.Role, w = ix.RoleWarning(a.id); w != "" {
			st.Warnings = append(st.Warnings, w)
		}
	}
	if len(a.configs) > 0 {
		st.Configs = make(map[string]ConfigStatus, len(a.configs))
		for _, c := range a.configs {
			cs := ConfigStatus{Revision: c.Revision, Applied: c.Applied, Error: c.Error, Stale: c.Stale}
			if ix != nil {
				if r, err := ix.Resolve(a.id, c.server); err == nil {
					cs.Current = r.Revision
				} else {
					cs.Current, cs.CurrentError = r.Revision, kvconfig.Truncate(err.Error(), 200)
				}
			}
			st.Configs[c.server] = cs
		}
	}
	return st
}

// sortedIDs returns every tracked agent id, sorted; rebuilt only when
// agents joined or were forgotten.
func (t *tracker) sortedIDs() []string {
	t.sortMu.Lock()
	defer t.sortMu.Unlock()
	gen := t.idsGen.Load()
	if t.sorted != nil && t.sortedGen == gen {
		return t.sorted
	}
	ids := make([]string, 0, len(t.sorted)+16)
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		for _, a := range sh.list {
			ids = append(ids, a.id)
		}
		sh.mu.Unlock()
	}
	sort.Strings(ids)
	t.sorted, t.sortedGen = ids, gen
	return ids
}

// lookup returns an agent's status.
func (t *tracker) lookup(id string) (AgentStatus, bool) {
	sh := t.shard(id)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	a := sh.m[id]
	if a == nil {
		return AgentStatus{}, false
	}
	return t.snapshot(a, t.now(), t.clock.Now()), true
}

// status builds one page: agents after q.After matching the filters, at most
// q.Limit (0: as many as fit) and at most maxBytes of JSON in all.
func (f *Fleet) status(q statusQuery, maxBytes int) ([]byte, error) {
	t := f.t
	ids := t.sortedIDs()
	if q.Agent != "" {
		i := sort.SearchStrings(ids, q.Agent)
		if i == len(ids) || ids[i] != q.Agent {
			return nil, &requestError{agentproto.CodeNotFound, "fleet: agent " + strconv.Quote(q.Agent) + " is not in the fleet (it never sent a heartbeat, or was forgotten)"}
		}
		ids = ids[i : i+1]
	}
	head := statusHead{Counts: f.counts(ids, q.Role), Leader: f.cmd.Leader(), MassSilence: t.mass.Load(),
		Silent: int(t.silent.Load()), Invalid: f.push.invalidEntries(maxInvalidShown), UnconfiguredRoles: f.UnconfiguredRoles(maxRolesShown),
		Servers: serverMap(t.serverView(), maxServersShown)}
	for _, n := range head.Counts {
		head.Total += n
	}
	tail, _ := json.Marshal(head)
	start := 0
	if q.After != "" {
		start = sort.SearchStrings(ids, q.After)
		if start < len(ids) && ids[start] == q.After {
			start++
		}
	}
	buf := append(make([]byte, 0, 4096), `{"agents":[`...)
	budget := maxBytes - len(tail) - 96
	now, wall := t.times()
	n, next := 0, ""
	for _, id := range ids[start:] {
		st, ok := f.match(id, q, now, wall)
		if !ok {
			continue
		}
		if q.Limit > 0 && n == q.Limit {
			next = lastAgent(buf)
			break
		}
		enc, _ := json.Marshal(st)
		if len(buf)+len(enc)+1 > budget {
			if n == 0 {
				return nil, &requestError{agentproto.CodeUnavailable, "fleet: one agent's status does not fit the server's max payload"}
			}
			next = lastAgent(buf)
			break
		}
		if n > 0 {
			buf = append(buf, ',')
		}
		buf = append(buf, enc...)
		n++
	}
	buf = append(buf, "],"...)
	buf = append(buf, `"next":`...)
	buf = strconv.AppendQuote(buf, next)
	buf = append(buf, ',')
	return append(buf, tail[1:]...), nil
}

// lastAgent is the id of the last entry appended to a page (ids need no
// escaping: [A-Za-z0-9_-]).
func lastAgent(buf []byte) string {
	i := bytes.LastIndex(buf, []byte(`{"agent":"`))
	if i < 0 {
		return ""
	}
	rest := buf[i+len(`{"agent":"`):]
	return string(rest[:bytes.IndexByte(rest, '"')])
}

// match snapshots an agent if it passes the state and role filters.
func (f *Fleet) match(id string, q statusQuery, now int64, wall time.Time) (AgentStatus, bool) {
	t := f.t
	sh := t.shard(id)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	a := sh.m[id]
	if a == nil || q.state != StateUnknown && a.state != q.state {
		return AgentStatus{}, false
	}
	st := t.snapshot(a, now, wall)
	if q.Role != "" && st.Role != q.Role {
		return AgentStatus{}, false
	}
	return st, true
}

// counts is agents per state among ids, optionally of one role.
func (f *Fleet) counts(ids []string, role string) map[string]int {
	out := make(map[string]int, int(numStates))
	for s := StateHealthy; s < numStates; s++ {
		out[s.String()] = 0
	}
	t := f.t
	if role == "" && len(ids) == len(t.sortedIDs()) {
		for s := StateHealthy; s < numStates; s++ {
			out[s.String()] = int(t.counts[s].Load())
		}
		return out
	}
	ix := t.index.Load()
	for _, id := range ids {
		if role != "" {
			if ix == nil {
				continue
			}
			if r, _ := ix.Role(id); r != role {
				continue
			}
		}
		sh := t.shard(id)
		sh.mu.Lock()
		if a := sh.m[id]; a != nil && a.state != StateUnknown {
			out[a.state.String()]++
		}
		sh.mu.Unlock()
	}
	return out
}

// requestError is a fleet.status request error with its code (400).
type requestError struct {
	code int
	msg  string
}

func (e *requestError) Error() string { return e.msg }

// HandleStatus serves mcp.v1.fleet.status; the supervisor registers it as
// an endpoint of its micro service.
func (f *Fleet) HandleStatus(req micro.Request) {
	q, err := parseStatusRequest(req.Data())
	var page []byte
	if err == nil {
		page, err = f.status(q, int(f.nc.MaxPayload())-statusHeadroom)
	}
	if err != nil {
		f.errorReply(req, err)
		return
	}
	if err := req.Respond(page); err != nil {
		f.log.Warn().Err(err).Int("bytes", len(page)).Msg("cannot send fleet.status reply")
	}
}

func (f *Fleet) errorReply(req micro.Request, err error) {
	code, msg := agentproto.CodeBadRequest, err.Error()
	var be *requestError
	if errors.As(err, &be) {
		code = be.code
	}
	body, _ := json.Marshal(agentproto.ErrorBody{Error: agentproto.ErrorDetail{
		Code: agentproto.ErrorName(code), Status: code, Message: msg, Retryable: code == agentproto.CodeUnavailable}})
	if rerr := req.Error(strconv.Itoa(code), msg, body); rerr != nil {
		f.log.Warn().Err(rerr).Msg("cannot send fleet.status error reply")
	}
}
