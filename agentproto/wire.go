package agentproto

import (
	"encoding/json"

	"strings"
	"time"

	"github.com/tether-dev/tether/kvconfig"
)

// DefaultPrefix is the first token of every Tether subject.
const DefaultPrefix = "mcp"

// Version is the protocol version token in every subject.
const Version = "v1"

// Subjects builds the subjects of the wire contract under a prefix. The
// zero value uses DefaultPrefix. Callers validate identifiers before
// building subjects (kvconfig.ValidateID); Subjects never does I/O.
type Subjects struct {
	Prefix string
}

func (s Subjects) base() string {
	p := s.Prefix
	if p == "" {
		p = DefaultPrefix
	}
	return p + "." + Version + "."
}

// Resolve is <prefix>.v1.resolve.<agent>.<server>.
func (s Subjects) Resolve(agent, server string) string {
	return s.base() + "resolve." + agent + "." + server
}

// ResolveAll is <prefix>.v1.resolveall.<agent>.
func (s Subjects) ResolveAll(agent string) string { return s.base() + "resolveall." + agent }

// Explain is <prefix>.v1.explain.<agent>.<server>.
func (s Subjects) Explain(agent, server string) string {
	return s.base() + "explain." + agent + "." + server
}

// Heartbeat is <prefix>.v1.hb.<agent>.
func (s Subjects) Heartbeat(agent string) string { return s.base() + "hb." + agent }

// Command is <prefix>.v1.cmd.<agent>.
func (s Subjects) Command(agent string) string { return s.base() + "cmd." + agent }

// FleetStatus is <prefix>.v1.fleet.status.
func (s Subjects) FleetStatus() string { return s.base() + "fleet.status" }

// FleetRelease is the operator request that ends an agent's quarantine:
// body {"agent":"<id>"}; every supervisor replica releases it, the leader
// answers (see PROTOCOL.md).
func (s Subjects) FleetRelease() string { return s.base() + "fleet.release" }

// Wildcard returns <prefix>.v1.<verb>.> for the supervisor's subscriptions.
func (s Subjects) Wildcard(verb string) string { return s.base() + verb + ".>" }

// Tokens splits a received subject into the tokens after
// <prefix>.v1.<verb>. It returns ok=false when the subject does not start
// with that prefix.
func (s Subjects) Tokens(verb, subject string) ([]string, bool) {
	p := s.Prefix
	if p == "" {
		p = DefaultPrefix
	}
	// Cut the pieces one by one instead of building the prefix: the
	// supervisor calls this for every request.
	rest, ok := strings.CutPrefix(subject, p)
	if ok {
		rest, ok = strings.CutPrefix(rest, "."+Version+".")
	}
	if ok {
		rest, ok = strings.CutPrefix(rest, verb)
	}
	if ok {
		rest, ok = strings.CutPrefix(rest, ".")
	}
	if !ok {
		return nil, false
	}
	return strings.Split(rest, "."), true
}

// InboxPrefix is the agent's private inbox prefix, _INBOX_<agent>
// (nats.CustomInboxPrefix), so per-agent permissions can protect replies.
func InboxPrefix(agent string) string { return "_INBOX_" + agent }

// HeartbeatReply is the reply subject of the agent's heartbeats,
// _INBOX_<agent>.hb, which the agent subscribes to.
func HeartbeatReply(agent string) string { return InboxPrefix(agent) + ".hb" }

// Scope strings used in replies.
const ScopeGlobal = "global"

// ResolveReply answers mcp.v1.resolve.<agent>.<server>.
type ResolveReply struct {
	Agent    string `json:"agent"`
	Server   string `json:"server"`
	Role     string `json:"role,omitempty"`
	Scope    string `json:"scope"`
	Key      string `json:"key"`
	Revision uint64 `json:"revision"`
	// AsOf is the supervisor index's watermark when it answered; a client
	// keeps a config from an answer that is at least as current.
	AsOf   kvconfig.AsOf   `json:"as_of"`
	Config json.RawMessage `json:"config"`
}

// ResolveAllReply answers mcp.v1.resolveall.<agent>: every server visible to
// the agent, each resolved or with its own error.
type ResolveAllReply struct {
	Agent   string                   `json:"agent"`
	Role    string                   `json:"role,omitempty"`
	AsOf    kvconfig.AsOf            `json:"as_of"`
	Servers map[string]ResolveResult `json:"servers"`
	// Next is the last server of this page when more follow: send it back
	// as After for the next page. Empty on the last page.
	Next string `json:"next"`
	// FleetSize is how many agents the supervisor tracks that would
	// reconnect if their server restarted (every state but gone); omitted
	// while it tracks none. Agents size their reconnect window with it
	// (Config.FleetSize).
	FleetSize FleetSizeHint `json:"fleet_size,omitempty"`
}

// FleetSizeHint is a resolveall reply's fleet_size. It is advisory, so it
// never fails a reply's decoding: anything but a non-negative number reads
// as 0 (no hint), and a number over MaxFleetSizeHint as MaxFleetSizeHint.
type FleetSizeHint int

// UnmarshalJSON implements json.Unmarshaler without ever failing.
func (h *FleetSizeHint) UnmarshalJSON(b []byte) error {
	var f float64
	switch {
	case json.Unmarshal(b, &f) != nil || f != f || f < 1:
		*h = 0
	case f >= MaxFleetSizeHint:
		*h = MaxFleetSizeHint
	default:
		*h = FleetSizeHint(f)
	}
	return nil
}

// ResolveAllRequest is the optional body of a resolveall request: the page
// of servers after After (exclusive, in name order), at most Limit of them
// (0: as many as fit in one reply).
type ResolveAllRequest struct {
	After string `json:"after,omitempty"`
	Limit int    `json:"limit,omitempty"`
}

// ResolveResult is one server of a ResolveAllReply: either the resolution
// fields or Error.
type ResolveResult struct {
	Scope    string          `json:"scope,omitempty"`
	Key      string          `json:"key,omitempty"`
	Revision uint64          `json:"revision,omitempty"`
	Config   json.RawMessage `json:"config,omitempty"`
	Error    *ErrorDetail    `json:"error,omitempty"`
}

// Connection states reported in heartbeats (Heartbeat.Conn.State).
const (
	ConnConnected    = "connected"
	ConnReconnecting = "reconnecting"
	ConnRebuilding   = "rebuilding"
	ConnClosed       = "closed"
)

// Heartbeat is published by an agent on mcp.v1.hb.<agent> with reply
// subject _INBOX_<agent>.hb. Receivers ignore unknown fields.
type Heartbeat struct {
	Agent      string `json:"agent"`
	Instance   string `json:"instance"` // unique per process start
	Seq        uint64 `json:"seq"`
	SentAt     string `json:"sent_at"` // RFC 3339 UTC, informational
	IntervalMS int64  `json:"interval_ms"`
	// ProbeAck is the nonce of the latest probe received, repeated until a
	// newer one arrives.
	ProbeAck string `json:"probe_ack,omitempty"`
	// Acks are command ids received since the last heartbeat.
	Acks    []string                 `json:"acks,omitempty"`
	Conn    ConnStatus               `json:"conn"`
	Configs map[string]ConfigApplied `json:"configs,omitempty"`
	Calls   *CallCounts              `json:"calls,omitempty"`
	// Servers is the call health of each MCP server this agent calls,
	// keyed by server name (at most MaxServerStats entries); absent when
	// the agent reports none.
	Servers map[string]ServerCalls `json:"servers,omitempty"`
	// Consumers are the JetStream durable consumers the agent consumes
	// (Client.Consume), at most MaxConsumers.
	Consumers []ConsumerStatus `json:"consumers,omitempty"`
	// Goodbye marks the last heartbeat of a clean shutdown.
	Goodbye bool `json:"goodbye,omitempty"`
}

// ConsumerStatus is one durable consumer of a heartbeat: its stream and
// durable (identifiers, 1-64 of [A-Za-z0-9_-]) and the agent's cumulative
// counters for this process. LastAckMSAgo is how long ago a task was last
// acknowledged; absent when none was yet.
type ConsumerStatus struct {
	Stream       string `json:"stream"`
	Durable      string `json:"durable"`
	Handled      uint64 `json:"handled"`
	Acked        uint64 `json:"acked"`
	Naked        uint64 `json:"naked"`
	InFlight     uint64 `json:"in_flight"`
	LastAckMSAgo *int64 `json:"last_ack_ms_ago,omitempty"`
}

// Server states of ServerCalls.State.
const (
	// ServerIdle: configured, no call yet.
	ServerIdle = "idle"
	// ServerOK: the latest call succeeded.
	ServerOK = "ok"
	// ServerFailing: the latest call, or the latest attempt of a call
	// still retrying, failed.
	ServerFailing = "failing"
	// ServerQuarantined: a stdio server given up on after too many
	// restarts; calls fail fast until it is released.
	ServerQuarantined = "quarantined"
)

// ServerCalls is one MCP server's entry in a heartbeat's "servers" object:
// the call health this agent (instance) sees for that server.
type ServerCalls struct {
	// OK counts calls that succeeded.
	OK uint64 `json:"ok"`
	// Retried counts retries (attempts after the first).
	Retried uint64 `json:"retried"`
	// Failed counts calls given up on (OutcomeUnknown ones included).
	Failed uint64 `json:"failed"`
	// OutcomeUnknown counts calls that failed after the request may have
	// reached the server and were not retried (the tool is not idempotent).
	OutcomeUnknown uint64 `json:"outcome_unknown"`
	// State is ServerIdle, ServerOK, ServerFailing or ServerQuarantined.
	State string `json:"state"`
	// LastErrorClass is the class of the latest failed attempt:
	// "transient", "permanent" or "unknown"; omitted if none yet.
	LastErrorClass string `json:"last_error_class,omitempty"`
	// LastFailure is what the latest failed attempt ran into, one of the
	// Failure* kinds (FailureKind); omitted if none yet.
	LastFailure string `json:"last_failure,omitempty"`
	// Restarts counts restarts of a supervised stdio server (0 for
	// http/sse).
	Restarts uint64 `json:"restarts"`
}

// ConnStatus is the connection part of a heartbeat.
type ConnStatus struct {
	State      string  `json:"state"`
	Reconnects uint64  `json:"reconnects"`
	RTTMS      float64 `json:"rtt_ms"`
}

// ConfigApplied reports which config revision an agent runs for a server.
type ConfigApplied struct {
	Revision uint64 `json:"revision"`
	Applied  bool   `json:"applied"`
	Error    string `json:"error,omitempty"`
	Stale    bool   `json:"stale,omitempty"`
}

// Command types.
const (
	CmdProbe     = "probe"
	CmdReconnect = "reconnect"
	CmdReresolve = "reresolve"
)

// Command is sent by the supervisor on mcp.v1.cmd.<agent> or as a reply to a
// heartbeat. ID and Nonce are opaque strings echoed verbatim.
type Command struct {
	ID        string   `json:"id"`
	Type      string   `json:"type"`
	Reason    string   `json:"reason,omitempty"`
	Nonce     string   `json:"nonce,omitempty"`
	Servers   []string `json:"servers,omitempty"`
	NotBefore string   `json:"not_before,omitempty"` // RFC 3339 UTC
	// Epoch and Term fence the sender: the lease revision at which it
	// became leader, and the lease bucket's term (creation time, unix ms).
	// An agent ignores (but acknowledges) a reconnect or reresolve below
	// the highest (term, epoch) it has accepted: a deposed leader's late
	// command. Absent (zero) from senders that do not fence.
	Epoch uint64 `json:"epoch,omitempty"`
	Term  int64  `json:"term,omitempty"`
}

// FenceBelow reports whether c comes from an older leadership than
// (term, epoch): a lower term, or the same term and a lower epoch.
func (c Command) FenceBelow(term int64, epoch uint64) bool {
	if c.Epoch == 0 && c.Term == 0 {
		return false // an unfenced sender
	}
	return c.Term < term || c.Term == term && c.Epoch < epoch
}

// NotBeforeTime parses NotBefore; the zero time when it is empty or invalid.
func (c Command) NotBeforeTime() time.Time {
	t, err := time.Parse(time.RFC3339Nano, c.NotBefore)
	if err != nil {
		return time.Time{}
	}
	return t
}

// FleetStatusRequest is the optional body of mcp.v1.fleet.status.
type FleetStatusRequest struct {
	Agent string `json:"agent,omitempty"`
	State string `json:"state,omitempty"`
	Role  string `json:"role,omitempty"`
	After string `json:"after,omitempty"`
	Limit int    `json:"limit,omitempty"`
}

// IsHeartbeatReply reports whether subject is agent's heartbeat reply
// subject, without building it (the supervisor checks every heartbeat).
func IsHeartbeatReply(agent, subject string) bool {
	const pre, suf = "_INBOX_", ".hb"
	return len(subject) == len(pre)+len(agent)+len(suf) &&
		subject[:len(pre)] == pre && subject[len(pre):len(pre)+len(agent)] == agent && subject[len(pre)+len(agent):] == suf
}
