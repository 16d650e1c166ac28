package supervisor

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/kvconfig"
	"github.com/tether-dev/tether/supervisor/fleet"
	"github.com/tether-dev/tether/supervisor/lease"
)

// Defaults of Config.
const (
	DefaultListen             = "127.0.0.1:4222"
	DefaultDataDir            = "./data"
	DefaultHTTPAddr           = "127.0.0.1:8080"
	DefaultServiceName        = "mcp-supervisor"
	DefaultQueueGroup         = "mcp-supervisor"
	DefaultServerPing         = 2 * time.Second
	DefaultReconnectWait      = 50 * time.Millisecond
	DefaultReadyWait          = 30 * time.Second
	DefaultRetryAfterNotReady = 250 * time.Millisecond
	DefaultCloseTimeout       = 5 * time.Second
	DefaultLogSummary         = 10 * time.Second
)

// Admission modes (Config.Admission).
const (
	// AdmitRegistered tracks an agent id only once it is registered in
	// mcp_agents ('tetherctl agent add' registers every agent it issues
	// credentials for).
	AdmitRegistered = "registered"
	// AdmitAny tracks every id that heartbeats, up to Fleet.MaxAgents: for
	// a NATS whose permissions already pin each agent to its own subjects,
	// and for simulations.
	AdmitAny = "any"
)

// Config configures a Supervisor. Start from DefaultConfig.
type Config struct {
	// NATSURL is the NATS server(s) to use, comma separated. Empty: start an
	// embedded nats-server with JetStream on Listen, data in DataDir.
	NATSURL string
	// Credentials for an external NATS: a .creds file, or user/password, or
	// a token. At most one kind. Ignored with the embedded server.
	CredsFile, User, Password, Token string
	// Listen is the embedded server's client address. Default DefaultListen.
	Listen string
	// DataDir is the embedded server's JetStream store and auth material.
	// Default DefaultDataDir. Start locks it (<DataDir>/LOCK, see
	// datadir.go) before touching anything in it, so a second supervisor
	// on the same directory fails at once with a *DataDirLockedError; the
	// lock is released by Close, or by the OS when the process dies. With
	// an external NATS it holds at most the HTTP token and is not locked.
	DataDir string
	// ServerPingInterval is how often the embedded server pings clients, so a
	// dead client is noticed in seconds. Default DefaultServerPing.
	ServerPingInterval time.Duration
	// HTTPAddr serves the fleet dashboard (/, /agent/, /static/), /api/*,
	// /events, /metrics, /healthz and /readyz. Empty disables HTTP. Default
	// DefaultHTTPAddr. When its host is not loopback (127.0.0.0/8, ::1,
	// "localhost"; an empty host or 0.0.0.0 is every interface), everything
	// but /healthz and /readyz needs the bearer token in HTTPTokenFile.
	HTTPAddr string
	// HTTPTokenFile holds the bearer token a non-loopback HTTPAddr needs:
	// read at Start, or generated there (32 random bytes, hex; directory
	// 0700, file 0600) when missing, and reused afterwards. A file you
	// write yourself needs one line of at least 32 printable characters.
	// Empty (the default): <DataDir>/auth/http.token, also with an
	// external NATS (NATSURL), where DataDir holds nothing else.
	HTTPTokenFile string
	// HTTPAllowedHosts are the Host headers the HTTP server accepts
	// besides loopback ones, each "name", "IP" or either with ":port" (no
	// port: any): a request naming another host is refused (421), which
	// defeats DNS rebinding. Loopback names (localhost, 127.0.0.1, [::1])
	// are always accepted, with HTTPAddr's port when HTTPAddr is loopback.
	// Empty (the default) on a non-loopback HTTPAddr: its host (any IP
	// literal when that is 0.0.0.0, :: or empty) and the machine's
	// hostname. /healthz and /readyz take any Host.
	HTTPAllowedHosts []string
	// Prefix is the first subject token. Default agentproto.DefaultPrefix.
	Prefix string
	// Buckets says how missing KV buckets are created (replicas, history).
	Buckets kvconfig.BucketConfig
	// WatchCheckInterval is how often KV watchers are checked for stalls.
	// Default kvconfig.DefaultCheckInterval.
	WatchCheckInterval time.Duration
	// ReconnectWait is the base delay between reconnect attempts of the
	// supervisor's own NATS connection. Default DefaultReconnectWait.
	ReconnectWait time.Duration
	// Fleet sets heartbeat judgement, probes, command re-sends, recovery
	// pacing and quarantine. Default fleet.DefaultConfig(). Leave
	// Fleet.IsLeader nil: the supervisor then commands only while it holds
	// the leader lease (see LeaseTTL). A non-nil IsLeader replaces the
	// lease entirely (no lease is taken); tests use that.
	Fleet fleet.Config
	// Admission says which agent ids are tracked: AdmitRegistered (the
	// default) or AdmitAny. A heartbeat from an id refused is discarded
	// and counted (tether_heartbeats_discarded_total{reason="unregistered"}).
	// With AdmitRegistered the supervisor sets Fleet.Admit itself.
	Admission string
	// ReplicaID names this supervisor among the replicas sharing one NATS
	// (cluster): it is the leader lease's value and tags leadership logs.
	// Unique per process; up to 128 printable characters without spaces.
	// Empty (the default): hostname-pid-random, drawn at Start.
	ReplicaID string
	// LeaseTTL is how long the leader lease lives without renewal, renewed
	// every LeaseTTL/3: a crashed or cut-off leader is replaced within about
	// LeaseTTL (a closed one at once, as it releases the lease). Every
	// replica must use the same value; an existing lease bucket's max age
	// wins. Zero means lease.DefaultTTL (3 s); else at least lease.MinTTL.
	// Even a lone supervisor takes the lease: it wins it at its first try,
	// before Start returns.
	LeaseTTL time.Duration
	// CloseTimeout bounds Close, even with NATS unreachable or mcp_fleet
	// writes failing: writes in flight are abandoned at once; releasing the
	// leader lease (at most LeaseTTL/3; an unreleased lease expires after
	// LeaseTTL) and stopping the KV watchers share a quarter of it, or get
	// nothing once the connection is known to be down; whatever is still
	// running when it has passed (an embedded server slow to stop) is
	// logged and finishes in the background, the data directory staying
	// locked until it is done. Drain takes at most its ctx plus
	// CloseTimeout. Must be positive; default DefaultCloseTimeout (5 s).
	CloseTimeout time.Duration
	// LogSummaryInterval is how often one line per sampled log stream says
	// how many lines were dropped (log lines caused by requests and
	// heartbeats are sampled). Default DefaultLogSummary (10 s).
	LogSummaryInterval time.Duration
	// Logger receives everything; default disabled.
	Logger zerolog.Logger
}

// DefaultConfig returns the documented defaults.
func DefaultConfig() Config {
	return Config{
		Listen:             DefaultListen,
		DataDir:            DefaultDataDir,
		ServerPingInterval: DefaultServerPing,
		HTTPAddr:           DefaultHTTPAddr,
		Prefix:             agentproto.DefaultPrefix,
		Buckets:            kvconfig.BucketConfig{Replicas: 1, History: kvconfig.DefaultHistory},
		WatchCheckInterval: kvconfig.DefaultCheckInterval,
		ReconnectWait:      DefaultReconnectWait,
		Fleet:              fleet.DefaultConfig(),
		Admission:          AdmitRegistered,
		LeaseTTL:           lease.DefaultTTL,
		CloseTimeout:       DefaultCloseTimeout,
		LogSummaryInterval: DefaultLogSummary,
		Logger:             zerolog.Nop(),
	}
}

// Validate rejects impossible settings, naming the field.
func (c *Config) Validate() error {
	var errs []error
	if c.NATSURL == "" {
		if _, _, err := net.SplitHostPort(c.Listen); err != nil {
			errs = append(errs, fmt.Errorf("Listen %q: %w", c.Listen, err))
		}
		if c.DataDir == "" {
			errs = append(errs, errors.New("DataDir: empty; the embedded server needs a store directory"))
		}
		if c.ServerPingInterval <= 0 {
			errs = append(errs, fmt.Errorf("ServerPingInterval %v must be positive", c.ServerPingInterval))
		}
	}
	kinds := 0
	if c.CredsFile != "" {
		kinds++
	}
	if c.User != "" || c.Password != "" {
		kinds++
	}
	if c.Token != "" {
		kinds++
	}
	if kinds > 1 {
		errs = append(errs, errors.New("credentials: give one of a creds file, user/password or a token"))
	}
	if kinds > 0 && c.NATSURL == "" {
		errs = append(errs, errors.New("credentials: --creds, --user/--password and --token are for an external NATS (--nats-url); the embedded server has auth always on with the credentials it generates in <data-dir>/auth/"))
	}
	if c.HTTPAddr != "" {
		if _, _, err := net.SplitHostPort(c.HTTPAddr); err != nil {
			errs = append(errs, fmt.Errorf("HTTPAddr %q: %w", c.HTTPAddr, err))
		}
		if c.httpNeedsToken() && c.httpTokenPath() == "" {
			errs = append(errs, fmt.Errorf("HTTPTokenFile: empty and no DataDir; HTTPAddr %q is not loopback and needs a token file", c.HTTPAddr))
		}
		for _, h := range c.HTTPAllowedHosts {
			if _, err := parseHostRule(h); err != nil {
				errs = append(errs, fmt.Errorf("HTTPAllowedHosts: %w", err))
			}
		}
	}
	if c.Prefix == "" || !kvconfig.ValidID(c.Prefix) {
		errs = append(errs, fmt.Errorf("Prefix %q: must be 1-64 characters of A-Z a-z 0-9 _ -", c.Prefix))
	}
	if c.WatchCheckInterval <= 0 {
		errs = append(errs, fmt.Errorf("WatchCheckInterval %v must be positive", c.WatchCheckInterval))
	}
	if c.LogSummaryInterval <= 0 {
		errs = append(errs, fmt.Errorf("LogSummaryInterval %v must be positive", c.LogSummaryInterval))
	}
	if c.ReconnectWait <= 0 {
		errs = append(errs, fmt.Errorf("ReconnectWait %v must be positive", c.ReconnectWait))
	}
	if c.CloseTimeout <= 0 {
		errs = append(errs, fmt.Errorf("CloseTimeout %v must be positive", c.CloseTimeout))
	}
	if c.LeaseTTL != 0 && c.LeaseTTL < lease.MinTTL {
		errs = append(errs, fmt.Errorf("LeaseTTL %v is below %v (zero means %v)", c.LeaseTTL, lease.MinTTL, lease.DefaultTTL))
	}
	if err := validReplicaID(c.ReplicaID); err != nil {
		errs = append(errs, err)
	}
	if err := c.Fleet.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.Admission != AdmitRegistered && c.Admission != AdmitAny {
		errs = append(errs, fmt.Errorf("Admission %q: want %q or %q", c.Admission, AdmitRegistered, AdmitAny))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("supervisor: invalid config: %w", err)
	}
	return nil
}

// maxReplicaID bounds Config.ReplicaID.
const maxReplicaID = 128

// validReplicaID accepts "" (a default is drawn) or up to maxReplicaID
// printable ASCII characters without spaces.
func validReplicaID(id string) error {
	if len(id) > maxReplicaID {
		return fmt.Errorf("ReplicaID %.20q...: longer than %d characters", id, maxReplicaID)
	}
	for i := 0; i < len(id); i++ {
		if id[i] <= ' ' || id[i] > '~' {
			return fmt.Errorf("ReplicaID %q: character %d is not printable ASCII without spaces", id, i)
		}
	}
	return nil
}

// defaultReplicaID is hostname-pid-random.
func defaultReplicaID() string {
	host, err := os.Hostname()
	if err != nil || validReplicaID(host) != nil || host == "" {
		host = "supervisor"
	}
	host = kvconfig.Truncate(host, 64)
	return host + "-" + strconv.Itoa(os.Getpid()) + "-" + strconv.FormatUint(rand.Uint64()>>40, 36)
}
