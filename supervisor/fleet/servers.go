package fleet

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/kvconfig"
)

// Per-MCP-server call health in heartbeats (the "servers" field): decoded,
// bounded and stored compactly per agent here; aggregated across the fleet
// on every sweep in serverhealth.go.

// Bounds of the heartbeat's servers field.
const (
	// MaxServerEntries bounds the servers one heartbeat reports.
	MaxServerEntries = 256
	// MaxFailureBytes bounds a last_failure value.
	MaxFailureBytes = 64
)

// Server call states as a heartbeat spells them (agentproto's, the wire's).
const (
	ServerIdle        = agentproto.ServerIdle
	ServerOK          = agentproto.ServerOK
	ServerFailing     = agentproto.ServerFailing
	ServerQuarantined = agentproto.ServerQuarantined
)

// serverIn is one entry of a heartbeat's servers object (the
// agentproto.ServerCalls shape).
type serverIn struct {
	OK             uint64 `json:"ok"`
	Retried        uint64 `json:"retried"`
	Failed         uint64 `json:"failed"`
	OutcomeUnknown uint64 `json:"outcome_unknown"`
	State          string `json:"state"`
	LastErrorClass string `json:"last_error_class"`
	LastFailure    string `json:"last_failure"`
	Restarts       uint64 `json:"restarts"`
}

var (
	serverStates = []string{ServerIdle, ServerOK, ServerFailing, ServerQuarantined}
	errorClasses = []string{"", "transient", "permanent", "unknown"}
	failureKinds = []string{"refused", "timeout", "reset", "dns", "tls", "session_lost", "protocol_version", "process_exited", "quarantined", "outcome_unknown", "not_allowed", "config", "canceled", "other"}
	serverInKeys = []string{"ok", "retried", "failed", "outcome_unknown", "state", "last_error_class", "last_failure", "restarts"}
	failureOther = "other"
)

// servers decodes a heartbeat's servers object exactly as encoding/json
// decodes it into map[string]serverIn: null clears the map, a repeated
// key replaces its entry, a repeated servers field adds to the map.
func (d *hbDecoder) servers(dst *map[string]serverIn) error {
	if d.null() {
		*dst = nil
		return nil
	}
	if d.i >= len(d.b) || d.b[d.i] != '{' {
		return errSlowPath
	}
	if *dst == nil {
		*dst = map[string]serverIn{}
	}
	m := *dst
	return d.object(func(k []byte) error {
		var s serverIn
		if !d.null() {
			if err := d.server(&s); err != nil {
				return err
			}
		}
		m[internKey(k)] = s
		return nil
	})
}

func (d *hbDecoder) server(s *serverIn) error {
	return d.object(func(k []byte) error {
		switch string(k) {
		case "ok":
			return d.uint(&s.OK)
		case "retried":
			return d.uint(&s.Retried)
		case "failed":
			return d.uint(&s.Failed)
		case "outcome_unknown":
			return d.uint(&s.OutcomeUnknown)
		case "restarts":
			return d.uint(&s.Restarts)
		case "state":
			return d.enum(&s.State, serverStates)
		case "last_error_class":
			return d.enum(&s.LastErrorClass, errorClasses)
		case "last_failure":
			return d.enum(&s.LastFailure, failureKinds)
		}
		return d.unknown(k, serverInKeys...)
	})
}

// enum reads a string, sharing the constant of a known value instead of
// allocating a copy.
func (d *hbDecoder) enum(dst *string, known []string) error {
	if d.null() {
		return nil
	}
	s, err := d.rawString()
	if err != nil {
		return err
	}
	for _, k := range known {
		if string(s) == k {
			*dst = k
			return nil
		}
	}
	*dst = string(s)
	return nil
}

// checkServers bounds a heartbeat's servers field: at most
// MaxServerEntries, names by the identifier rule, counters within 2^53-1,
// state one of idle|ok|failing|quarantined, last_error_class one of
// transient|permanent|unknown (or omitted), last_failure at most
// MaxFailureBytes of [a-z0-9_-] (a well-formed kind the supervisor does not
// know is stored as "other": it is an enum, never free text).
func checkServers(m map[string]serverIn) error {
	if len(m) > MaxServerEntries {
		return fmt.Errorf("%d servers entries, over %d", len(m), MaxServerEntries)
	}
	for name, s := range m {
		if !kvconfig.ValidID(name) {
			return fmt.Errorf("servers: name %q is not 1-64 of [A-Za-z0-9_-]", kvconfig.Truncate(name, 80))
		}
		switch {
		case s.OK > MaxSafeInt || s.Retried > MaxSafeInt || s.Failed > MaxSafeInt || s.OutcomeUnknown > MaxSafeInt || s.Restarts > MaxSafeInt:
			return fmt.Errorf("servers.%s: a counter is over 2^53-1", name)
		case !slices.Contains(serverStates, s.State):
			return fmt.Errorf("servers.%s.state %q is not one of %s", name, kvconfig.Truncate(s.State, 80), strings.Join(serverStates, ", "))
		case !slices.Contains(errorClasses, s.LastErrorClass):
			return fmt.Errorf("servers.%s.last_error_class %q is not one of transient, permanent, unknown", name, kvconfig.Truncate(s.LastErrorClass, 80))
		case len(s.LastFailure) > MaxFailureBytes:
			return fmt.Errorf("servers.%s.last_failure is %d bytes, over %d", name, len(s.LastFailure), MaxFailureBytes)
		case !failureToken(s.LastFailure):
			return fmt.Errorf("servers.%s.last_failure %q is not a failure kind ([a-z0-9_-])", name, kvconfig.Truncate(s.LastFailure, 80))
		}
	}
	return nil
}

func failureToken(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// canonFailure is the stored spelling of a last_failure: a listed kind,
// http_<3 digits>, jsonrpc_<integer> or "other".
func canonFailure(s string) string {
	switch {
	case s == "" || slices.Contains(failureKinds, s):
		return s
	case len(s) == 8 && strings.HasPrefix(s, "http_") && digits(s[5:]):
		return s
	case strings.HasPrefix(s, "jsonrpc_"):
		n := strings.TrimPrefix(s[8:], "-")
		if len(n) > 0 && len(n) <= 10 && digits(n) {
			return s
		}
	}
	return failureOther
}

func digits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return len(s) > 0
}

// Server call states as stored per agent.
const (
	srvIdle uint8 = iota
	srvOK
	srvFailing
	srvQuarantined
)

func stateCode(s string) uint8 {
	switch s {
	case ServerOK:
		return srvOK
	case ServerFailing:
		return srvFailing
	case ServerQuarantined:
		return srvQuarantined
	}
	return srvIdle
}

// failing: the latest call failed, or the server is quarantined.
func failing(st uint8) bool { return st == srvFailing || st == srvQuarantined }

// agentServer is what one agent last reported for one MCP server. Names,
// classes and failure kinds are interned (a fleet shares a handful).
type agentServer struct {
	name, class, failure         string
	ok, retried, failed, unknown uint64
	restarts                     uint64
	failSince                    int64 // monotonic: when it started failing (failing states only)
	state                        uint8
	flagged                      bool // failing here while other agents reach it (mcp_failing)
	reresolved                   bool // this failing episode's reresolve was queued
}

// ingestServers applies a heartbeat's servers field; the shard lock is held.
// The common case (the same servers as last time) updates in place.
func (t *tracker) ingestServers(a *agent, in map[string]serverIn, now int64) {
	if len(in) == 0 {
		if a.servers != nil {
			a.servers = nil
			a.dirty |= dirtyOther
		}
		return
	}
	list := a.serverList()
	same := len(in) == len(list)
	for i := 0; same && i < len(list); i++ {
		_, same = in[list[i].name]
	}
	if !same {
		if a.servers == nil && !t.anyServers.Load() {
			t.anyServers.Store(true)
		}
		list = rebuildServers(list, in)
		a.servers = &list
		a.dirty |= dirtyOther
	}
	for i := range list {
		s := &list[i]
		applyServer(a, s, in[s.name], now)
	}
}

// serverList is the agent's servers (nil for none). The record holds a
// pointer, 8 bytes for the many agents that report none.
func (a *agent) serverList() []agentServer {
	if a.servers == nil {
		return nil
	}
	return *a.servers
}

// rebuildServers makes the list for a new set of names, sorted, carrying
// over what is known of names reported before.
func rebuildServers(old []agentServer, in map[string]serverIn) []agentServer {
	out := make([]agentServer, 0, len(in))
	for name := range in {
		i, ok := slices.BinarySearchFunc(old, name, func(s agentServer, n string) int { return strings.Compare(s.name, n) })
		if ok {
			out = append(out, old[i])
			continue
		}
		out = append(out, agentServer{name: internSmall("", name)})
	}
	slices.SortFunc(out, func(x, y agentServer) int { return strings.Compare(x.name, y.name) })
	return out
}

func applyServer(a *agent, s *agentServer, v serverIn, now int64) {
	st := stateCode(v.State)
	if st != s.state {
		if failing(st) && !failing(s.state) {
			s.failSince = now
		}
		if !failing(st) {
			s.failSince, s.flagged, s.reresolved = 0, false, false
		}
		s.state = st
		a.dirty |= dirtyOther
	}
	s.class = internSmall(s.class, v.LastErrorClass)
	s.failure = internSmall(s.failure, canonFailure(v.LastFailure))
	s.ok, s.retried, s.failed, s.unknown, s.restarts = v.OK, v.Retried, v.Failed, v.OutcomeUnknown, v.Restarts
}

// ServerCalls is what an agent's last heartbeat reported for one MCP
// server, as fleet.status and mcp_fleet show it.
type ServerCalls struct {
	State          string `json:"state"`
	OK             uint64 `json:"ok"`
	Retried        uint64 `json:"retried"`
	Failed         uint64 `json:"failed"`
	OutcomeUnknown uint64 `json:"outcome_unknown"`
	LastErrorClass string `json:"last_error_class,omitempty"`
	LastFailure    string `json:"last_failure,omitempty"`
	Restarts       uint64 `json:"restarts,omitempty"`
	// FailingSince is when its calls to the server started failing.
	FailingSince time.Time `json:"failing_since,omitzero"`
}

// serverSnapshot fills an agent status's servers and mcp_failing; the
// shard lock is held.
func serverSnapshot(st *AgentStatus, a *agent, now int64, wall time.Time) {
	list := a.serverList()
	if len(list) == 0 {
		return
	}
	st.Servers = make(map[string]ServerCalls, len(list))
	for i := range list {
		s := &list[i]
		c := ServerCalls{State: serverStates[s.state], OK: s.ok, Retried: s.retried, Failed: s.failed,
			OutcomeUnknown: s.unknown, LastErrorClass: s.class, LastFailure: s.failure, Restarts: s.restarts}
		if failing(s.state) {
			c.FailingSince = wall.Add(time.Duration(s.failSince - now)).UTC()
		}
		st.Servers[s.name] = c
		if s.flagged {
			st.MCPFailing = append(st.MCPFailing, s.name)
		}
	}
}

// restoreServers rebuilds an agent's servers from its mcp_fleet record
// (a record is operator-writable: bounded like a heartbeat).
func (t *tracker) restoreServers(a *agent, r *Record, now int64) {
	if len(r.Servers) == 0 || len(r.Servers) > MaxServerEntries {
		return
	}
	in := make(map[string]serverIn, len(r.Servers))
	for name, c := range r.Servers {
		in[name] = serverIn{OK: c.OK, Retried: c.Retried, Failed: c.Failed, OutcomeUnknown: c.OutcomeUnknown,
			State: c.State, LastErrorClass: c.LastErrorClass, LastFailure: c.LastFailure, Restarts: c.Restarts}
	}
	if checkServers(in) != nil {
		return
	}
	list := rebuildServers(nil, in)
	a.servers = &list
	t.anyServers.Store(true)
	for i := range list {
		s := &list[i]
		applyServer(a, s, in[s.name], now)
		s.flagged = slices.Contains(r.MCPFailing, s.name) && failing(s.state)
		s.reresolved = s.flagged // its reresolve was queued before the restart
	}
}
