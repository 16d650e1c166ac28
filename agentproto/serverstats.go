package agentproto

import (
	"sort"
	"sync"
	"sync/atomic"

	"github.com/tether-dev/tether/kvconfig"
)

// MaxServerStats bounds a ServerRegistry (and so a heartbeat's "servers"
// object): the supervisor discards a heartbeat with more entries.
const MaxServerStats = 256

// maxCounter is the largest counter a heartbeat may carry (2^53-1, exact in
// every JSON number implementation); snapshots saturate there.
const maxCounter = 1<<53 - 1

// ServerStats is one MCP server's call health for the heartbeat's
// "servers" object. agentproto/mcp's ToolCaller updates it; it is safe for
// concurrent use, and a nil *ServerStats records nothing (the registry
// hands out nil past MaxServerStats servers or for an invalid name).
type ServerStats struct {
	ok, retried, failed, unknown, restarts atomic.Uint64

	mu          sync.Mutex
	state       string // "" is ServerIdle
	quarantined bool
	lastClass   Class
	lastFailure string
}

// AddOK records a call that succeeded: the state becomes ServerOK (unless
// the server is quarantined).
func (s *ServerStats) AddOK() {
	if s == nil {
		return
	}
	s.ok.Add(1)
	s.setState(ServerOK)
}

// AddRetried records a retry (an attempt after the first).
func (s *ServerStats) AddRetried() {
	if s != nil {
		s.retried.Add(1)
	}
}

// AttemptFailed records a failed attempt: its class, what happened (a
// Failure* kind; anything else is recorded as FailureOther) and the
// state ServerFailing (unless the server is quarantined).
func (s *ServerStats) AttemptFailed(c Class, failure string) {
	if s == nil {
		return
	}
	if !ValidFailure(failure) {
		failure = FailureOther
	}
	s.mu.Lock()
	s.lastClass, s.lastFailure = c, failure
	if !s.quarantined {
		s.state = ServerFailing
	}
	s.mu.Unlock()
}

// AddFailed records a call given up on; outcomeUnknown says it failed
// after the request may have reached the server (it counts in both
// Failed and OutcomeUnknown).
func (s *ServerStats) AddFailed(outcomeUnknown bool) {
	if s == nil {
		return
	}
	s.failed.Add(1)
	if outcomeUnknown {
		s.unknown.Add(1)
	}
}

// AddRestart records a restart of a supervised stdio server.
func (s *ServerStats) AddRestart() {
	if s != nil {
		s.restarts.Add(1)
	}
}

// SetQuarantined marks the server quarantined (state ServerQuarantined,
// last failure FailureQuarantined) or releases it (state ServerIdle until
// the next call).
func (s *ServerStats) SetQuarantined(q bool) {
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.quarantined == q {
		return
	}
	s.quarantined = q
	if q {
		s.state, s.lastFailure = ServerQuarantined, FailureQuarantined
		return
	}
	s.state = ServerIdle
}

func (s *ServerStats) setState(st string) {
	s.mu.Lock()
	if !s.quarantined {
		s.state = st
	}
	s.mu.Unlock()
}

// Snapshot returns the heartbeat entry. Counters saturate at 2^53-1.
func (s *ServerStats) Snapshot() ServerCalls {
	if s == nil {
		return ServerCalls{State: ServerIdle}
	}
	s.mu.Lock()
	st, class, failure := s.state, s.lastClass, s.lastFailure
	s.mu.Unlock()
	if st == "" {
		st = ServerIdle
	}
	return ServerCalls{
		OK:             sat(s.ok.Load()),
		Retried:        sat(s.retried.Load()),
		Failed:         sat(s.failed.Load()),
		OutcomeUnknown: sat(s.unknown.Load()),
		State:          st,
		LastErrorClass: class.String(),
		LastFailure:    failure,
		Restarts:       sat(s.restarts.Load()),
	}
}

func sat(n uint64) uint64 { return min(n, maxCounter) }

// ServerRegistry holds the ServerStats of each MCP server an agent calls,
// at most MaxServerStats of them. The zero value is ready; it is safe for
// concurrent use, and a nil *ServerRegistry hands out nil stats.
type ServerRegistry struct {
	mu      sync.Mutex
	servers map[string]*ServerStats
	refused atomic.Uint64
}

// Get returns the stats of server, creating them (state ServerIdle) on
// first use. It returns nil (which records nothing) for an invalid server
// name (kvconfig.ValidateID) or when MaxServerStats servers are already
// registered; Refused counts those.
func (r *ServerRegistry) Get(server string) *ServerStats {
	if r == nil {
		return nil
	}
	if !kvconfig.ValidID(server) {
		r.refused.Add(1)
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if s, ok := r.servers[server]; ok {
		return s
	}
	if len(r.servers) >= MaxServerStats {
		r.refused.Add(1)
		return nil
	}
	if r.servers == nil {
		r.servers = make(map[string]*ServerStats)
	}
	s := new(ServerStats)
	r.servers[server] = s
	return s
}

// Refused counts Get calls that returned nil (invalid name or registry
// full).
func (r *ServerRegistry) Refused() uint64 {
	if r == nil {
		return 0
	}
	return r.refused.Load()
}

// Snapshot returns every server's entry; nil when none is registered (the
// heartbeat then omits "servers").
func (r *ServerRegistry) Snapshot() map[string]ServerCalls {
	if r == nil {
		return nil
	}
	r.mu.Lock()
	stats := make(map[string]*ServerStats, len(r.servers))
	for k, v := range r.servers {
		stats[k] = v
	}
	r.mu.Unlock()
	if len(stats) == 0 {
		return nil
	}
	out := make(map[string]ServerCalls, len(stats))
	for k, v := range stats {
		out[k] = v.Snapshot()
	}
	return out
}

// Names returns the registered server names, sorted.
func (r *ServerRegistry) Names() []string {
	if r == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, 0, len(r.servers))
	for k := range r.servers {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// ServerStats returns the stats of MCP server name for this agent's
// heartbeats (pass it as agentproto/mcp Options.ServerStats). It is nil,
// recording nothing, for an invalid name or past MaxServerStats servers.
func (c *Client) ServerStats(name string) *ServerStats { return c.hb.servers.Get(name) }

// Servers is the registry behind ServerStats, whose snapshot every
// heartbeat carries as "servers".
func (c *Client) Servers() *ServerRegistry { return &c.hb.servers }
