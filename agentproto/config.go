package agentproto

import (
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/kvconfig"
)

// Defaults of Config. DefaultConfig uses all of them; a zero field of a
// Config falls back to the one its doc names.
const (
	// DefaultURLs is the NATS server to connect to.
	DefaultURLs = nats.DefaultURL
	// DefaultReconnectWait is the shortest reconnect window (see
	// ReconnectWindow): an agent never tries to connect more often than
	// this while it has no connection.
	DefaultReconnectWait = 100 * time.Millisecond
	// DefaultMaxReconnectWait is the longest reconnect window: no agent
	// waits longer than this after its server is back, however large the
	// fleet.
	DefaultMaxReconnectWait = 30 * time.Second
	// DefaultFleetSize and DefaultConnectRate give the default reconnect
	// window ReconnectWindow(1000, 2500, 100 ms, 30 s) = 400 ms: one agent
	// is working again at most 400 ms (plus one connect) after its server
	// returns, whatever the outage's length, and 1,000 agents restarted
	// together put at most ~250 connects per 100 ms on it. Measured
	// (BENCHMARKS.md, "Watchdog timing and cost"): one agent back 2–399 ms
	// after its server's return (9 restarts each of 0.5 s and 8 s, and
	// after CLOSED), 100 agents at p99 422 ms. A larger fleet sets
	// FleetSize (to the agents per server) and ConnectRate, or takes its
	// size from the supervisor's resolveall replies (fleet_size).
	DefaultFleetSize   = 1000
	DefaultConnectRate = 2500
	// DefaultReconnectJitter is the fraction of each KV watcher restart and
	// supervisor resolve retry delay taken off at random: d becomes
	// d − U[0, 0.5·d]. Connection attempts are spread by reconnect slots
	// instead (SlotDelay).
	DefaultReconnectJitter = 0.5
	// DefaultMaxReconnects is nats.go's reconnect attempts before it closes
	// the connection: -1 is unlimited. Past a close the watchdog rebuilds.
	DefaultMaxReconnects = -1
	// DefaultPingInterval and DefaultMaxPingsOut detect a black-holed link
	// within BlackHoleBound(900 ms, 2) = 2.7 s, leaving scheduling headroom
	// under the 3 s target (nats.go's 2 min × 2 take ~6 min). The client
	// sends these pings itself (liveness.go): one PING per interval, the
	// link stale when it is unanswered and nothing has arrived for interval
	// × MaxPingsOut (from the PING or the latest message), four times that
	// within a few windows of a reconnect. They are the link's only round trip: health rounds do not
	// flush.
	DefaultPingInterval = 900 * time.Millisecond
	DefaultMaxPingsOut  = 2
	// DefaultReconnectBufSize bounds, in bytes, what is buffered for the
	// server while reconnecting; publishes beyond it fail at once.
	DefaultReconnectBufSize = 1 << 20
	// DefaultConnectTimeout bounds one dial and handshake.
	DefaultConnectTimeout = 2 * time.Second
	// DefaultHealthInterval is the period of the health loop's local
	// checks (a refused subscription re-created, a closed or long
	// reconnecting connection rebuilt); they cost the server nothing.
	DefaultHealthInterval = time.Second
	// DefaultProbeTimeout bounds one self-probe's return.
	DefaultProbeTimeout = time.Second
	// DefaultProbeHeartbeats is the self-probe period in heartbeats: one
	// probe every 2 × HeartbeatInterval (10 s) unless ProbeInterval is set.
	DefaultProbeHeartbeats = 2
	// DefaultHealthFailures is how many failed rounds in a row make the
	// connection (or one probed subscription) dead.
	DefaultHealthFailures = 3
	// DefaultRebuildAfter rebuilds a connection that nats.go has been
	// reconnecting for this long.
	DefaultRebuildAfter = time.Minute
	// DefaultHeartbeatInterval is DESIGN.md's heartbeat period.
	DefaultHeartbeatInterval = 5 * time.Second
	// DefaultKVCheckInterval is how often a KV watcher's progress is
	// compared with its bucket.
	DefaultKVCheckInterval = 5 * time.Second
	// DefaultCommandMemory is how many handled command ids are remembered
	// to ignore re-sent ones.
	DefaultCommandMemory = 1024
	// DefaultMaxPendingCommands bounds accepted commands waiting for their
	// not_before; a command beyond it is not acknowledged (it is re-sent).
	DefaultMaxPendingCommands = 256
)

// Config configures a Client. Start from DefaultConfig and set Agent. Every
// duration is positive once defaults are applied; Validate names the field
// of any impossible setting.
type Config struct {
	// Agent is the agent id: 1–64 characters of [A-Za-z0-9_-]. Required.
	Agent string
	// URLs is the NATS server(s), comma separated. Empty means DefaultURLs.
	URLs string
	// CredsFile, User/Password and Token authenticate; at most one kind.
	CredsFile, User, Password, Token string
	// Name is the connection name the server shows. Empty means
	// "tether-agent-<agent>".
	Name string
	// Subjects builds the wire subjects; the zero value uses DefaultPrefix.
	Subjects Subjects

	// FleetSize is how many agents may lose one server at once (those
	// connected to one server of a cluster, or the whole fleet on a single
	// server) and ConnectRate the connects per second such a server should
	// see when it returns: together they set the reconnect window
	// ReconnectWindow(FleetSize, ConnectRate, ReconnectWait,
	// MaxReconnectWait). While it has no connection (nats.go reconnecting,
	// or the watchdog rebuilding) the client tries once per window at its
	// own phase (ReconnectPhase of the agent id), so it is working again
	// within one window of its server's return and the fleet's connects
	// are spread evenly over that window. Once a resolveall reply says the
	// supervisor tracks more agents than FleetSize per known server
	// (fleet_size), the window is sized for that many instead
	// (Client.ReconnectWindow; never past MaxReconnectWait). Zero means
	// DefaultFleetSize, DefaultConnectRate.
	FleetSize, ConnectRate int
	// ReconnectWait is the shortest reconnect window. Zero means
	// DefaultReconnectWait.
	ReconnectWait time.Duration
	// MaxReconnectWait is the longest reconnect window. Zero means
	// DefaultMaxReconnectWait; must not be below ReconnectWait.
	MaxReconnectWait time.Duration
	// ReconnectJitter in [0, 1] is the fraction of a KV watcher restart or
	// resolve retry delay taken off at random. Zero means
	// DefaultReconnectJitter; negative means none.
	ReconnectJitter float64
	// MaxReconnects is how many reconnect attempts nats.go makes before it
	// closes the connection (the watchdog then rebuilds it). Zero means
	// DefaultMaxReconnects (unlimited); negative means unlimited.
	MaxReconnects int
	// PingInterval and MaxPingsOut: the client PINGs the link every
	// PingInterval and declares it stale (EventLinkStale; it reconnects at
	// its next slot) when a PING is unanswered and nothing has arrived for
	// PingInterval × MaxPingsOut (counted from the PING or the latest
	// message), so a black hole is found within
	// BlackHoleBound(PingInterval, MaxPingsOut). For 2 reconnect windows
	// plus that bound after each reconnect or rebuild (not the first
	// connect) the limit is 4 times longer: a
	// server taking back its fleet answers late, and dropping its healthy
	// links would only add CONNECTs. Zero means DefaultPingInterval,
	// DefaultMaxPingsOut.
	PingInterval time.Duration
	MaxPingsOut  int
	// ReconnectBufSize bounds, in bytes, the reconnect buffer. Zero means
	// DefaultReconnectBufSize; negative disables buffering.
	ReconnectBufSize int
	// ConnectTimeout bounds one dial and handshake. Zero means
	// DefaultConnectTimeout.
	ConnectTimeout time.Duration

	// HealthInterval is the period of the health loop's local checks, and
	// of the probe rounds that confirm a lost probe. Zero means
	// DefaultHealthInterval.
	HealthInterval time.Duration
	// ProbeInterval is the period of self-probes on a healthy connection
	// (one probe per round, see Client.Subscribe), jittered by up to a
	// tenth. Zero means DefaultProbeHeartbeats × HeartbeatInterval; it is
	// at least HealthInterval.
	ProbeInterval time.Duration
	// ProbeTimeout bounds one probe's return; at most HealthInterval. Zero
	// means DefaultProbeTimeout, or HealthInterval if that is shorter.
	ProbeTimeout time.Duration
	// HealthFailures is how many failed rounds in a row trigger a rebuild
	// (or restore one probed subscription). Zero means DefaultHealthFailures.
	HealthFailures int
	// RebuildAfter rebuilds a connection nats.go has been reconnecting for
	// this long. Zero means DefaultRebuildAfter; negative means never.
	RebuildAfter time.Duration
	// HeartbeatInterval is the heartbeat period. Zero means
	// DefaultHeartbeatInterval.
	HeartbeatInterval time.Duration
	// KVCheckInterval is how often each KV watcher's progress is checked
	// against its bucket. Zero means DefaultKVCheckInterval.
	KVCheckInterval time.Duration
	// CommandMemory is how many handled command ids are remembered. Zero
	// means DefaultCommandMemory.
	CommandMemory int
	// MaxPendingCommands bounds commands waiting for not_before. Zero means
	// DefaultMaxPendingCommands.
	MaxPendingCommands int

	// ResolvePolicy retries resolves; the zero value is DefaultPolicy with
	// RequestTimeout per attempt (see ResolverConfig).
	ResolvePolicy Policy
	// RequestTimeout bounds one resolve request. Zero means
	// DefaultRequestTimeout.
	RequestTimeout time.Duration
	// SkipInitialResolve stops Connect from starting a background
	// ResolveAll. By default it does, so heartbeats carry configs.
	SkipInitialResolve bool
	// AllowCommands are the stdio MCP server commands this agent may
	// start, compared exactly with a config's "command" (use absolute
	// paths). A config naming any other command is refused and reported in
	// heartbeats; nothing an operator or attacker writes to mcp_configs can
	// make the agent run anything else. Empty: no stdio server is started.
	AllowCommands []string
	// ConfigCache, if set, is a file where the last known good configs are
	// kept (mode 0600), so a restart while the supervisor is down still
	// starts with them, marked stale. Default: memory only.
	ConfigCache string
	// CallStats counts the agent's tool calls for heartbeats; pass it as
	// Policy.Stats. Nil means the Client makes one (see Client.CallStats).
	CallStats *CallStats

	// Logger receives every lifecycle event; the zero Logger logs nothing.
	Logger zerolog.Logger
	// OnEvent, if set, is called synchronously for every Event, from the
	// client's goroutines: it must be quick and must not call Close.
	OnEvent func(Event)
	// Now reads the clock (not_before, sent_at). Nil means time.Now.
	Now func() time.Time
}

// DefaultConfig returns the documented defaults for agent.
func DefaultConfig(agent string) Config {
	return Config{
		Agent:              agent,
		URLs:               DefaultURLs,
		FleetSize:          DefaultFleetSize,
		ConnectRate:        DefaultConnectRate,
		ReconnectWait:      DefaultReconnectWait,
		MaxReconnectWait:   DefaultMaxReconnectWait,
		ReconnectJitter:    DefaultReconnectJitter,
		MaxReconnects:      DefaultMaxReconnects,
		PingInterval:       DefaultPingInterval,
		MaxPingsOut:        DefaultMaxPingsOut,
		ReconnectBufSize:   DefaultReconnectBufSize,
		ConnectTimeout:     DefaultConnectTimeout,
		HealthInterval:     DefaultHealthInterval,
		ProbeTimeout:       DefaultProbeTimeout,
		HealthFailures:     DefaultHealthFailures,
		RebuildAfter:       DefaultRebuildAfter,
		HeartbeatInterval:  DefaultHeartbeatInterval,
		KVCheckInterval:    DefaultKVCheckInterval,
		CommandMemory:      DefaultCommandMemory,
		MaxPendingCommands: DefaultMaxPendingCommands,
		RequestTimeout:     DefaultRequestTimeout,
		Logger:             zerolog.Nop(),
	}
}

// withDefaults returns c with every zero field set to its default.
func (c Config) withDefaults() Config {
	setD := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	setI := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	if c.URLs == "" {
		c.URLs = DefaultURLs
	}
	if c.Name == "" {
		c.Name = "tether-agent-" + c.Agent
	}
	setD(&c.ReconnectWait, DefaultReconnectWait)
	setD(&c.MaxReconnectWait, DefaultMaxReconnectWait)
	setD(&c.PingInterval, DefaultPingInterval)
	setD(&c.ConnectTimeout, DefaultConnectTimeout)
	setD(&c.HealthInterval, DefaultHealthInterval)
	setD(&c.ProbeTimeout, min(DefaultProbeTimeout, c.HealthInterval))
	setD(&c.RebuildAfter, DefaultRebuildAfter)
	setD(&c.HeartbeatInterval, DefaultHeartbeatInterval)
	setD(&c.ProbeInterval, max(DefaultProbeHeartbeats*c.HeartbeatInterval, c.HealthInterval))
	setD(&c.KVCheckInterval, DefaultKVCheckInterval)
	setD(&c.RequestTimeout, DefaultRequestTimeout)
	setI(&c.MaxReconnects, DefaultMaxReconnects)
	setI(&c.FleetSize, DefaultFleetSize)
	setI(&c.ConnectRate, DefaultConnectRate)
	setI(&c.MaxPingsOut, DefaultMaxPingsOut)
	setI(&c.ReconnectBufSize, DefaultReconnectBufSize)
	setI(&c.HealthFailures, DefaultHealthFailures)
	setI(&c.CommandMemory, DefaultCommandMemory)
	setI(&c.MaxPendingCommands, DefaultMaxPendingCommands)
	if c.ReconnectJitter == 0 {
		c.ReconnectJitter = DefaultReconnectJitter
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// Validate applies the defaults to a copy of c and reports every
// impossible setting, naming the field, in an error wrapping
// ErrInvalidConfig.
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	bad := func(field string, v any, why string) {
		errs = append(errs, fmt.Errorf("%s %v %s", field, v, why))
	}
	if err := kvconfig.ValidateID(kvconfig.KindAgent, c.Agent); err != nil {
		errs = append(errs, fmt.Errorf("Agent: %w", err))
	}
	if c.Subjects.Prefix != "" && !kvconfig.ValidID(c.Subjects.Prefix) {
		bad("Subjects.Prefix", fmt.Sprintf("%q", c.Subjects.Prefix), "must be 1-64 characters of A-Z a-z 0-9 _ -")
	}
	kinds := 0
	for _, set := range []bool{c.CredsFile != "", c.User != "" || c.Password != "", c.Token != ""} {
		if set {
			kinds++
		}
	}
	if kinds > 1 {
		errs = append(errs, errors.New("credentials: give one of CredsFile, User/Password or Token"))
	}
	c.checkSigns(bad)
	switch {
	case c.MaxReconnectWait < c.ReconnectWait:
		bad("MaxReconnectWait", c.MaxReconnectWait, "must not be below ReconnectWait "+c.ReconnectWait.String())
	case c.ProbeInterval > 0 && c.ProbeInterval < c.HealthInterval:
		bad("ProbeInterval", c.ProbeInterval, "must be at least HealthInterval "+c.HealthInterval.String())
	case c.ProbeTimeout > c.HealthInterval:
		bad("ProbeTimeout", c.ProbeTimeout, "must not exceed HealthInterval "+c.HealthInterval.String())
	case c.RebuildAfter > 0 && c.RebuildAfter < c.HealthInterval:
		bad("RebuildAfter", c.RebuildAfter, "must be at least HealthInterval "+c.HealthInterval.String()+" (or negative: never)")
	}
	if c.ReconnectJitter > 1 {
		bad("ReconnectJitter", c.ReconnectJitter, "must be at most 1")
	}
	if err := c.ResolvePolicy.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("ResolvePolicy: %w", err))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: client config: %w", ErrInvalidConfig, err)
	}
	return nil
}

// checkSigns reports the fields that must not be negative.
func (c *Config) checkSigns(bad func(field string, v any, why string)) {
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"ReconnectWait", c.ReconnectWait}, {"MaxReconnectWait", c.MaxReconnectWait},
		{"PingInterval", c.PingInterval}, {"ConnectTimeout", c.ConnectTimeout},
		{"HealthInterval", c.HealthInterval}, {"ProbeTimeout", c.ProbeTimeout},
		{"HeartbeatInterval", c.HeartbeatInterval}, {"KVCheckInterval", c.KVCheckInterval},
		{"ProbeInterval", c.ProbeInterval},
		{"RequestTimeout", c.RequestTimeout},
	} {
		if d.v < 0 {
			bad(d.name, d.v, "must not be negative")
		}
	}
	for _, n := range []struct {
		name string
		v    int
	}{
		{"MaxPingsOut", c.MaxPingsOut}, {"HealthFailures", c.HealthFailures},
		{"CommandMemory", c.CommandMemory}, {"MaxPendingCommands", c.MaxPendingCommands},
		{"FleetSize", c.FleetSize}, {"ConnectRate", c.ConnectRate},
	} {
		if n.v < 0 {
			bad(n.name, n.v, "must not be negative")
		}
	}
}

// jitter returns the effective jitter fraction (negative means none).
func (c *Config) jitter() float64 { return max(c.ReconnectJitter, 0) }

// ReconnectWindowOf is the reconnect window a client with this config
// uses, zero fields taking their defaults, until the supervisor reports a
// larger fleet (Client.ReconnectWindow): an agent is back within it of its
// server's return.
func (c Config) ReconnectWindowOf() time.Duration {
	d := c.withDefaults()
	return d.reconnectWindow()
}

// reconnectWindow is the client's reconnect window (defaults applied).
func (c *Config) reconnectWindow() time.Duration {
	return ReconnectWindow(c.FleetSize, c.ConnectRate, c.ReconnectWait, c.MaxReconnectWait)
}
