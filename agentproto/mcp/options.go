package mcp

import (
	"fmt"
	"time"

	sdk "github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/agentproto"
)

// Defaults of Options.
const (
	// DefaultConnectTimeout bounds one connect (process start or HTTP
	// handshake, plus tools/list) when the config has no "timeout".
	DefaultConnectTimeout = 10 * time.Second
	// DefaultDrainTimeout bounds how long calls still running on a
	// replaced session may take before it is closed under them, when the
	// config has no "timeout".
	DefaultDrainTimeout = 30 * time.Second
	// DefaultDialTimeout bounds one TCP connect to an HTTP MCP server. A
	// SYN lost while a server restarts is otherwise resent by the kernel
	// only after 1 s and then 2 s more; giving up sooner lets the retry
	// dial again at once.
	DefaultDialTimeout = time.Second
	// MaxListedTools bounds the tools read from a server's tools/list for
	// their idempotency hints (at most maxToolPages pages).
	MaxListedTools = 1024
	maxToolPages   = 16
	// MaxToolNameLen bounds a tool name passed to Call.
	MaxToolNameLen = 256
)

// Log field names of the mcp package.
const (
	logKeyServer    = "server"
	logKeyTool      = "tool"
	logKeyFailure   = "failure"
	logKeyKey       = "key"
	logKeyRevision  = "revision"
	logKeyProtocol  = "protocol"
	logKeyTookMS    = "took_ms"
	logKeyRestarts  = "restarts"
	logKeyDelayMS   = "delay_ms"
	logKeyReason    = "reason"
	logKeyWaitedMS  = "waited_ms"
	logKeyInFlight  = "in_flight"
	logKeyAttempt   = "attempt"
	logKeyTransport = "transport"
	logKeyUntilMS   = "quarantine_ms"
)

// Options configures a ToolCaller. The zero value works.
type Options struct {
	// Client names this agent to MCP servers. Default "tether-agent".
	Client *sdk.Implementation
	// Policy is used when the server's config has no retry block. Default
	// agentproto.DefaultPolicy.
	Policy *agentproto.Policy
	// Stats counts calls for heartbeats ("calls"). Optional.
	Stats *agentproto.CallStats
	// ServerStats records this server's call health for the heartbeat's
	// "servers" object (pass agentproto.Client.ServerStats(server)).
	// Optional: nil records nothing.
	ServerStats *agentproto.ServerStats
	// AllowCommands are the stdio commands the caller may start (pass
	// agentproto.Client.AllowCommands()); a stdio config naming any other is
	// refused with agentproto.ErrCommandNotAllowed before anything runs.
	// A started server's environment is exactly the config's env.
	AllowCommands []string
	// ProtocolVersion is the MCP protocol version the client asks for
	// ("2025-11-25", "2026-07-28"); the server may negotiate another one
	// both support. Default "": the SDK's latest.
	ProtocolVersion string
	// ConnectTimeout bounds one connect when the config has no "timeout".
	// Default DefaultConnectTimeout.
	ConnectTimeout time.Duration
	// DialTimeout bounds one TCP connect to an HTTP/SSE server. Default
	// DefaultDialTimeout.
	DialTimeout time.Duration
	// ReuseConnsForUnsafeCalls sends calls to tools not known to be
	// idempotent on kept-alive HTTP connections too. By default each goes
	// on a new connection (one more TCP/TLS handshake): on a kept-alive
	// one the server may have closed just before, the write succeeds and
	// an EOF comes back, which cannot be told from a crash mid-call, so
	// the call would fail OutcomeUnknown although it never ran.
	ReuseConnsForUnsafeCalls bool
	// DrainTimeout bounds calls still running on a replaced session when
	// the config has no "timeout". Default DefaultDrainTimeout.
	DrainTimeout time.Duration
	// Restart is the restart intensity of a stdio server. Zero fields take
	// the Default* values of RestartPolicy.
	Restart RestartPolicy
	// Now is the clock of restart intensity. Default time.Now.
	Now func() time.Time
	// Logger receives one line per retry (server, tool, attempt, failure,
	// delay_ms), per session (re)connect and close, and per stdio
	// restart and quarantine.
	Logger zerolog.Logger
}

// Validate rejects negative durations and a bad restart policy.
func (o Options) Validate() error {
	if o.ConnectTimeout < 0 {
		return fmt.Errorf("mcp: options: ConnectTimeout %v is negative", o.ConnectTimeout)
	}
	if o.DialTimeout < 0 {
		return fmt.Errorf("mcp: options: DialTimeout %v is negative", o.DialTimeout)
	}
	if o.DrainTimeout < 0 {
		return fmt.Errorf("mcp: options: DrainTimeout %v is negative", o.DrainTimeout)
	}
	return o.Restart.Validate()
}

func (o Options) withDefaults() Options {
	if o.Client == nil {
		o.Client = &sdk.Implementation{Name: "tether-agent", Version: "0.1.0"}
	}
	if o.ConnectTimeout == 0 {
		o.ConnectTimeout = DefaultConnectTimeout
	}
	if o.DrainTimeout == 0 {
		o.DrainTimeout = DefaultDrainTimeout
	}
	if o.DialTimeout == 0 {
		o.DialTimeout = DefaultDialTimeout
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	o.Restart = o.Restart.withDefaults()
	return o
}
