package agentproto

import (
	"errors"
	"sync/atomic"
	"time"
)

// ErrInvalidSubject reports a subject, queue group or probe subject that a
// subscription cannot use.
var ErrInvalidSubject = errors.New("agentproto: invalid subject")

// EventKind names a lifecycle event of a Client.
type EventKind string

// The events a Client reports (Config.OnEvent) and counts (Client.Stats).
const (
	EventConnected       EventKind = "connected"        // first connection made
	EventConnectFailed   EventKind = "connect_failed"   // a connect or rebuild attempt failed
	EventDisconnected    EventKind = "disconnected"     // link lost; nats.go reconnecting
	EventReconnectFailed EventKind = "reconnect_failed" // one nats.go reconnect attempt failed
	EventReconnected     EventKind = "reconnected"      // nats.go reconnected (Took: since disconnect)
	EventConnClosed      EventKind = "conn_closed"      // nats.go gave up on the connection
	EventLameDuck        EventKind = "lame_duck"        // the server is shutting down gracefully
	EventSlowConsumer    EventKind = "slow_consumer"    // a subscription dropped messages
	EventPermissionError EventKind = "permission_error" // the server refused a publish or subscription
	EventAsyncError      EventKind = "async_error"      // any other asynchronous error, handler panics
	EventHealthFailed    EventKind = "health_failed"    // a health round failed (Reason says how)
	EventLinkStale       EventKind = "link_stale"       // a PING went unanswered with nothing received: reconnecting
	EventRebuildStarted  EventKind = "rebuild_started"  // the watchdog tears the connection down
	EventRebuilt         EventKind = "rebuilt"          // new connection, everything restored (Took)
	EventSubRestored     EventKind = "sub_restored"     // one subscription re-created
	EventKVRestarted     EventKind = "kv_restarted"     // one KV watcher re-created from its revision
	EventCommand         EventKind = "command"          // a supervisor command accepted (Reason: type)
	EventClosed          EventKind = "closed"           // the client was closed
)

// Event is one lifecycle event.
type Event struct {
	Kind EventKind
	Time time.Time
	// Gen is the connection generation: 1 for the first connection, +1 per
	// rebuild.
	Gen     uint64
	Subject string        // the subscription or KV bucket concerned; the id for EventCommand
	Reason  string        // why, for rebuilds, restores and health failures
	Took    time.Duration // for EventReconnected and EventRebuilt
	Err     error
}

// Stats are a Client's counters since Connect.
type Stats struct {
	ConnectFailures   uint64 // failed connect/rebuild attempts
	Disconnects       uint64
	ReconnectFailures uint64 // failed nats.go reconnect attempts
	Reconnects        uint64 // successful nats.go reconnects
	ConnCloses        uint64 // connections nats.go gave up on
	LameDucks         uint64
	SlowConsumers     uint64
	PermissionErrors  uint64
	AsyncErrors       uint64
	HealthFailures    uint64 // failed health rounds
	StaleLinks        uint64 // links found stale by the client's own pings (liveness.go)
	Rebuilds          uint64 // completed rebuilds
	SubRestores       uint64
	KVRestarts        uint64
	Commands          uint64 // commands accepted (not duplicates)
	DuplicateCommands uint64 // re-sent ids acknowledged again and ignored
	UnknownCommands   uint64 // unknown types, acknowledged and ignored
	FencedCommands    uint64 // from a deposed leader (Command.Epoch): acknowledged and ignored
	InvalidCommands   uint64 // bodies that were not a command
	HeartbeatsSent    uint64
	// NoSupervisor counts heartbeats answered "no responders": no
	// supervisor was subscribed when they were published.
	NoSupervisor uint64
	// LastRebuild is how long the last rebuild took, from teardown to every
	// subscription registered at the server.
	LastRebuild time.Duration
}

type counters struct {
	connectFailures, disconnects, reconnectFailures, reconnects, connCloses atomic.Uint64
	lameDucks, slowConsumers, permissionErrors, asyncErrors, healthFailures atomic.Uint64
	rebuilds, subRestores, kvRestarts, commands, duplicates, unknown        atomic.Uint64
	invalid, heartbeats, fenced, staleLinks                                 atomic.Uint64
	lastRebuild                                                             atomic.Int64
}

// counter returns the counter an event kind adds to, nil for none.
func (s *counters) counter(k EventKind) *atomic.Uint64 {
	switch k {
	case EventConnectFailed:
		return &s.connectFailures
	case EventDisconnected:
		return &s.disconnects
	case EventReconnectFailed:
		return &s.reconnectFailures
	case EventReconnected:
		return &s.reconnects
	case EventConnClosed:
		return &s.connCloses
	case EventLameDuck:
		return &s.lameDucks
	case EventSlowConsumer:
		return &s.slowConsumers
	case EventPermissionError:
		return &s.permissionErrors
	case EventAsyncError:
		return &s.asyncErrors
	case EventHealthFailed:
		return &s.healthFailures
	case EventLinkStale:
		return &s.staleLinks
	case EventRebuilt:
		return &s.rebuilds
	case EventSubRestored:
		return &s.subRestores
	case EventKVRestarted:
		return &s.kvRestarts
	case EventCommand:
		return &s.commands
	}
	return nil
}

// Stats returns the client's counters; each is read atomically.
func (c *Client) Stats() Stats {
	s := &c.stats
	return Stats{
		ConnectFailures: s.connectFailures.Load(), Disconnects: s.disconnects.Load(),
		ReconnectFailures: s.reconnectFailures.Load(), Reconnects: s.reconnects.Load(),
		ConnCloses: s.connCloses.Load(), LameDucks: s.lameDucks.Load(),
		SlowConsumers: s.slowConsumers.Load(), PermissionErrors: s.permissionErrors.Load(),
		AsyncErrors: s.asyncErrors.Load(), HealthFailures: s.healthFailures.Load(), StaleLinks: s.staleLinks.Load(),
		Rebuilds: s.rebuilds.Load(), SubRestores: s.subRestores.Load(), KVRestarts: s.kvRestarts.Load(),
		Commands: s.commands.Load(), DuplicateCommands: s.duplicates.Load(),
		UnknownCommands: s.unknown.Load(), FencedCommands: s.fenced.Load(), InvalidCommands: s.invalid.Load(),
		HeartbeatsSent: s.heartbeats.Load(), NoSupervisor: c.noSupervisor.Load(),
		LastRebuild: time.Duration(s.lastRebuild.Load()),
	}
}

// emit counts e and hands it to Config.OnEvent.
func (c *Client) emit(e Event) {
	if p := c.stats.counter(e.Kind); p != nil {
		p.Add(1)
	}
	if c.cfg.OnEvent != nil {
		if e.Time.IsZero() {
			e.Time = time.Now()
		}
		c.cfg.OnEvent(e)
	}
}
