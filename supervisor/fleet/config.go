package fleet

import (
	"errors"
	"fmt"
	"time"
)

// Defaults of Config.
const (
	DefaultHeartbeatInterval = 5 * time.Second
	DefaultSuspectAfter      = 2
	DefaultLostAfter         = 3
	DefaultZombieAfter       = 3
	DefaultGoneAfter         = time.Hour
	DefaultForgetAfter       = 24 * time.Hour
	DefaultMaxAgents         = 100_000
	DefaultEstablishedAfter  = 3
	DefaultCheckInterval     = 500 * time.Millisecond
	DefaultRecoveryRate      = 200.0
	DefaultRecoveryBurst     = 20
	DefaultMaxSpread         = 30 * time.Second
	DefaultPushSpreadRate    = 10000.0
	DefaultQuarantineAfter   = 3
	DefaultQuarantinePeriod  = 10 * time.Minute
	DefaultMassSilenceShare  = 0.5
	DefaultMassSilenceMin    = 20
	DefaultMassSilenceHold   = time.Minute
	DefaultMaxClockSkew      = time.Minute
	DefaultMaxPending        = 32
	DefaultPersistInterval   = time.Second
	DefaultQueueZombieAfter  = 3
	DefaultQueueInfoRate     = 100.0
	DefaultQueueInfoBatch    = 64
	DefaultQueueInfoTimeout  = 2 * time.Second

	// MaxZombieAfter bounds Config.ZombieAfter.
	MaxZombieAfter = 8
)

// Clock is the time source of the fleet tracker; nil means the real clock.
// Only differences of Now values are used, so a real clock's monotonic
// reading makes every judgement immune to wall-clock steps.
type Clock interface{ Now() time.Time }

// Config sets how the supervisor judges and recovers agents. Every
// duration is measured on the supervisor's own monotonic clock.
type Config struct {
	// HeartbeatInterval is the agents' heartbeat period. An agent that
	// announces interval_ms is judged in its own interval, clamped to
	// [1/10, 10x] this: its silence thresholds, probe cadence, probe
	// deadline and command re-sends are the durations below scaled by
	// (its interval / HeartbeatInterval), so every agent gets the same
	// number of its own intervals. Default DefaultHeartbeatInterval (5 s).
	HeartbeatInterval time.Duration
	// SuspectAfter is how many missed intervals make an agent suspect.
	// Default DefaultSuspectAfter (2).
	SuspectAfter int
	// LostAfter is how many missed intervals make it lost; > SuspectAfter.
	// Default DefaultLostAfter (3).
	LostAfter int
	// ProbeInterval is how often an agent beating at HeartbeatInterval is
	// probed on its command subject (others in proportion). Zero (the
	// default) is one HeartbeatInterval.
	ProbeInterval time.Duration
	// ProbeTimeout is how long a probe may wait for a heartbeat naming it
	// (scaled likewise); at least HeartbeatInterval, since only the next
	// heartbeat can answer it. Zero (the default) is 1.25 HeartbeatInterval:
	// one interval plus a quarter for delivery and the agent's phase.
	ProbeTimeout time.Duration
	// ZombieAfter is how many unanswered, overdue probes make an agent that
	// still heartbeats a zombie. 1..MaxZombieAfter. Default 3.
	ZombieAfter int
	// GoneAfter is the silence after which a lost agent is gone. Default
	// DefaultGoneAfter (1 h); must exceed LostAfter intervals.
	GoneAfter time.Duration
	// ForgetAfter is how long a gone agent is kept (in memory and in
	// mcp_fleet) before it is forgotten. Zero keeps it forever. Default
	// DefaultForgetAfter (24 h).
	ForgetAfter time.Duration
	// MaxAgents bounds the agents tracked (and so memory and mcp_fleet
	// keys): a heartbeat from a new id past it is discarded (reason
	// fleet_full) until gone agents are forgotten. Default
	// DefaultMaxAgents (100,000).
	MaxAgents int
	// Admit decides whether a heartbeat from an id not tracked yet starts
	// tracking it (admission); a refused one is discarded (reason
	// unregistered). Called on the heartbeat path for unknown ids only.
	// Nil admits every id.
	Admit func(id string) bool
	// EstablishedAfter is how many intervals an agent must have been heard
	// over before it counts for mass silence, so one-shot ids (heard once,
	// then silent) cannot trigger it. Default DefaultEstablishedAfter (3).
	EstablishedAfter int
	// CheckInterval is how often every agent is judged, probed and its
	// pending commands re-sent: the resolution of every detection time.
	// At most HeartbeatInterval. Default DefaultCheckInterval (500 ms).
	CheckInterval time.Duration
	// ResendInterval is how long an unacknowledged command waits before it
	// is sent again (scaled likewise). At least HeartbeatInterval (an ack
	// rides on the next heartbeat). Zero (the default) is two
	// HeartbeatIntervals.
	ResendInterval time.Duration
	// RecoveryRate is the fleet-wide rate of recovery commands (reconnect,
	// re-resolve after an outage), per second, with bursts of
	// RecoveryBurst. Defaults DefaultRecoveryRate (200/s) and 20.
	RecoveryRate  float64
	RecoveryBurst int
	// MaxSpread caps the window over which not_before is spread by a hash
	// of the agent id. Default DefaultMaxSpread (30 s).
	MaxSpread time.Duration
	// PushSpreadRate spreads a config push's not_before so that affected
	// agents re-resolve at about this many per second: 1,000 agents at the
	// default 10,000/s over 100 ms. Zero sends every push for immediate use.
	PushSpreadRate float64
	// QuarantineAfter and QuarantinePeriod are the restart intensity: an
	// agent needing recovery (restart, zombie, return from lost) more than
	// QuarantineAfter times within QuarantinePeriod is quarantined and gets
	// no more recovery commands until a whole period passes without one.
	// Defaults 3 and 10 min.
	QuarantineAfter  int
	QuarantinePeriod time.Duration
	// MassSilenceShare is the share (0..1] of live agents that, silent at
	// once, makes the supervisor blame the broker or its own link: agents
	// are held at suspect, nothing is sent, until they return or
	// MassSilenceHold passes. Only with at least MassSilenceMin live agents.
	// Defaults 0.5, 20 and 1 min.
	MassSilenceShare float64
	MassSilenceMin   int
	MassSilenceHold  time.Duration
	// MaxClockSkew flags agents whose sent_at differs from the supervisor's
	// wall clock by more than this (informational: judgements never use
	// sent_at). Default DefaultMaxClockSkew (1 min).
	MaxClockSkew time.Duration
	// MaxPending bounds pending commands per agent; past it, config pushes
	// collapse into one re-resolve of every server. Default 32.
	MaxPending int
	// PersistInterval is how often changed agent records are written to
	// mcp_fleet (state changes and pending commands only, never per
	// heartbeat). Default DefaultPersistInterval (1 s).
	PersistInterval time.Duration
	// QueueZombieAfter is how many of its intervals an agent's declared
	// consumer may have messages pending or unacknowledged without its ack
	// floor moving before the agent is a queue zombie (see queue.go); set
	// it above the longest task's duration in intervals. 1..100, default
	// DefaultQueueZombieAfter (3).
	QueueZombieAfter int
	// QueueInfoRate and QueueInfoBatch bound the consumer info requests
	// the leader makes for declared consumers: per second fleet-wide, and
	// at once per CheckInterval round; each consumer is read at most once
	// per its agent's interval. QueueInfoTimeout bounds one. Defaults
	// 100/s, 64 and 2 s.
	QueueInfoRate    float64
	QueueInfoBatch   int
	QueueInfoTimeout time.Duration
	// IsLeader gates everything that sends probes and commands or writes
	// mcp_fleet; every replica tracks heartbeats regardless. It is called
	// on the heartbeat path, so it must be cheap (an atomic load). Nil: this
	// supervisor is the leader.
	IsLeader func() bool
	// Fence is the leadership's fence, stamped on every command (see
	// agentproto.Command.Epoch): the lease's term and the revision at
	// which this replica became leader. Nil: commands are not fenced.
	Fence func() (term int64, epoch uint64)
	// ServerFailingAfter is how many of its intervals an agent must fail
	// calls to an MCP server that other agents reach (and that is not down)
	// before it is flagged mcp_failing and sent one reresolve of that
	// server. Zero (the default) is DefaultServerFailingAfter (2).
	ServerFailingAfter int
	// Clock is the time source; nil is the real clock.
	Clock Clock
}

// DefaultConfig returns the documented defaults.
func DefaultConfig() Config {
	return Config{
		HeartbeatInterval: DefaultHeartbeatInterval,
		SuspectAfter:      DefaultSuspectAfter,
		LostAfter:         DefaultLostAfter,
		ZombieAfter:       DefaultZombieAfter,
		GoneAfter:         DefaultGoneAfter,
		ForgetAfter:       DefaultForgetAfter,
		MaxAgents:         DefaultMaxAgents,
		EstablishedAfter:  DefaultEstablishedAfter,
		CheckInterval:     DefaultCheckInterval,
		RecoveryRate:      DefaultRecoveryRate,
		RecoveryBurst:     DefaultRecoveryBurst,
		MaxSpread:         DefaultMaxSpread,
		PushSpreadRate:    DefaultPushSpreadRate,
		QuarantineAfter:   DefaultQuarantineAfter,
		QuarantinePeriod:  DefaultQuarantinePeriod,
		MassSilenceShare:  DefaultMassSilenceShare,
		MassSilenceMin:    DefaultMassSilenceMin,
		MassSilenceHold:   DefaultMassSilenceHold,
		MaxClockSkew:      DefaultMaxClockSkew,
		MaxPending:        DefaultMaxPending,
		PersistInterval:   DefaultPersistInterval,
		QueueZombieAfter:  DefaultQueueZombieAfter,
		QueueInfoRate:     DefaultQueueInfoRate,
		QueueInfoBatch:    DefaultQueueInfoBatch,
		QueueInfoTimeout:  DefaultQueueInfoTimeout,
	}
}

// Effective is c with its derived timings filled in, as the fleet runs it
// (for logging the effective settings).
func (c Config) Effective() Config { return c.withDerived() }

// withDerived fills the timings whose zero means "derived from
// HeartbeatInterval".
func (c Config) withDerived() Config {
	if c.ProbeInterval == 0 {
		c.ProbeInterval = c.HeartbeatInterval
	}
	if c.ProbeTimeout == 0 {
		c.ProbeTimeout = c.HeartbeatInterval + c.HeartbeatInterval/4
	}
	if c.ResendInterval == 0 {
		c.ResendInterval = 2 * c.HeartbeatInterval
	}
	if c.ServerFailingAfter == 0 {
		c.ServerFailingAfter = DefaultServerFailingAfter
	}
	return c
}

// LostWindow is how long silence takes to make an agent lost.
func (c *Config) LostWindow() time.Duration {
	return time.Duration(c.LostAfter) * c.HeartbeatInterval
}

// Validate rejects impossible combinations, naming the field.
func (c *Config) Validate() error {
	d := c.withDerived()
	c = &d
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf("Fleet."+format, a...)) }
	for _, f := range []struct {
		name string
		d    time.Duration
	}{
		{"HeartbeatInterval", c.HeartbeatInterval}, {"ProbeInterval", c.ProbeInterval},
		{"CheckInterval", c.CheckInterval}, {"ResendInterval", c.ResendInterval},
		{"QuarantinePeriod", c.QuarantinePeriod}, {"PersistInterval", c.PersistInterval},
		{"MassSilenceHold", c.MassSilenceHold}, {"MaxClockSkew", c.MaxClockSkew},
	} {
		if f.d <= 0 {
			bad("%s %v must be positive", f.name, f.d)
		}
	}
	if c.SuspectAfter < 1 {
		bad("SuspectAfter %d must be at least 1 interval", c.SuspectAfter)
	}
	if c.LostAfter <= c.SuspectAfter {
		bad("LostAfter %d must exceed SuspectAfter %d", c.LostAfter, c.SuspectAfter)
	}
	if c.ZombieAfter < 1 || c.ZombieAfter > MaxZombieAfter {
		bad("ZombieAfter %d outside 1..%d", c.ZombieAfter, MaxZombieAfter)
	}
	if c.ProbeTimeout < c.HeartbeatInterval {
		bad("ProbeTimeout %v is shorter than HeartbeatInterval %v: only a heartbeat can answer a probe, so every agent would look like a zombie", c.ProbeTimeout, c.HeartbeatInterval)
	}
	if c.GoneAfter <= c.LostWindow() {
		bad("GoneAfter %v must exceed LostAfter x HeartbeatInterval = %v", c.GoneAfter, c.LostWindow())
	}
	if c.ForgetAfter != 0 && c.ForgetAfter < c.GoneAfter {
		bad("ForgetAfter %v is shorter than GoneAfter %v (zero keeps gone agents forever)", c.ForgetAfter, c.GoneAfter)
	}
	if c.CheckInterval > c.HeartbeatInterval {
		bad("CheckInterval %v exceeds HeartbeatInterval %v: detection would be coarser than an interval", c.CheckInterval, c.HeartbeatInterval)
	}
	if c.ResendInterval < c.HeartbeatInterval {
		bad("ResendInterval %v is shorter than HeartbeatInterval %v: an ack rides on a heartbeat, so every command would be sent twice", c.ResendInterval, c.HeartbeatInterval)
	}
	if c.RecoveryRate <= 0 || c.RecoveryBurst < 1 {
		bad("RecoveryRate %v/s and RecoveryBurst %d must be positive", c.RecoveryRate, c.RecoveryBurst)
	}
	if c.MaxSpread < 0 || c.PushSpreadRate < 0 {
		bad("MaxSpread %v and PushSpreadRate %v must not be negative", c.MaxSpread, c.PushSpreadRate)
	}
	if c.QuarantineAfter < 1 {
		bad("QuarantineAfter %d must be at least 1", c.QuarantineAfter)
	}
	if c.MassSilenceShare <= 0 || c.MassSilenceShare > 1 {
		bad("MassSilenceShare %v outside (0, 1]", c.MassSilenceShare)
	}
	if c.MassSilenceMin < 1 {
		bad("MassSilenceMin %d must be at least 1", c.MassSilenceMin)
	}
	if c.MaxAgents < 1 {
		bad("MaxAgents %d must be at least 1", c.MaxAgents)
	}
	if c.EstablishedAfter < 1 {
		bad("EstablishedAfter %d must be at least 1 interval", c.EstablishedAfter)
	}
	if c.QueueZombieAfter < 1 || c.QueueZombieAfter > 100 {
		bad("QueueZombieAfter %d outside 1..100", c.QueueZombieAfter)
	}
	if c.QueueInfoRate <= 0 || c.QueueInfoBatch < 1 || c.QueueInfoTimeout <= 0 {
		bad("QueueInfoRate %v/s, QueueInfoBatch %d and QueueInfoTimeout %v must be positive", c.QueueInfoRate, c.QueueInfoBatch, c.QueueInfoTimeout)
	}
	if c.MaxPending < 1 {
		bad("MaxPending %d must be at least 1", c.MaxPending)
	}
	if c.ServerFailingAfter < 1 {
		bad("ServerFailingAfter %d must be at least 1 interval", c.ServerFailingAfter)
	}
	return errors.Join(errs...)
}
