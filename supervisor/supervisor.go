package supervisor

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/internal/logsample"
	"github.com/tether-dev/tether/kvconfig"
	"github.com/tether-dev/tether/supervisor/auth"
	"github.com/tether-dev/tether/supervisor/fleet"
	"github.com/tether-dev/tether/supervisor/lease"
)

// Version is reported by the micro service.
const Version = "0.1.0"

// Supervisor is a running supervisor: its NATS connection (and embedded
// server, if any), the config store, the micro service and the HTTP server.
type Supervisor struct {
	cfg     Config
	log     zerolog.Logger
	metrics *Metrics

	ns       *server.Server // nil with an external NATS
	auth     *auth.Material // the embedded server's operator-mode material; nil with an external NATS
	nc       *nats.Conn
	js       jetstream.JetStream
	buckets  kvconfig.Buckets
	store    *kvconfig.Store
	svc      micro.Service
	http     *http.Server
	httpAddr string
	httpWG   sync.WaitGroup
	fleet    atomic.Pointer[fleet.Fleet]

	// Log lines outside traffic causes are sampled; a reporter writes what
	// each sampler dropped (logsample).
	reqSampler, guardSampler, httpSampler *logsample.Sampler
	logReport                             *logsample.Reporter

	// Leadership (leader.go); unused when the caller set Fleet.IsLeader.
	lease      atomic.Pointer[lease.Lease]
	leading    atomic.Bool // took over the fleet under the current lease
	leadMu     sync.Mutex  // guards leadGen and writes of leading
	leadGen    uint64      // bumped on every lease change
	leadWake   chan struct{}
	firstTake  chan struct{} // closed when the lead goroutine's first takeover has ended
	leadCancel context.CancelFunc
	leadWG     sync.WaitGroup

	lock      *dataDirLock // the data directory's; nil with an external NATS
	closeOnce sync.Once
	stopping  atomic.Bool   // Drain or Close began: a disconnect is expected
	closed    chan struct{} // closed when Close's teardown has finished
}

// Start connects (starting the embedded server when cfg.NATSURL is empty),
// creates missing buckets, starts the KV watchers, registers the micro
// service and the HTTP server. It returns once everything is listening; the
// index may still be loading (resolves answer 503 until it is ready).
func Start(ctx context.Context, cfg Config) (_ *Supervisor, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.ReplicaID == "" {
		cfg.ReplicaID = defaultReplicaID()
	}
	if cfg.LeaseTTL == 0 {
		cfg.LeaseTTL = lease.DefaultTTL
	}
	useLease := cfg.Fleet.IsLeader == nil
	s := &Supervisor{cfg: cfg, log: cfg.Logger, metrics: NewMetrics(), closed: make(chan struct{}),
		reqSampler:   logsample.New("requests", 20, time.Second),
		guardSampler: logsample.New("refused replies", 10, time.Second),
		httpSampler:  logsample.New("http refusals", 5, 10*time.Second)}
	if useLease {
		cfg.Fleet.IsLeader = s.commanding
		s.cfg = cfg
	}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	url := cfg.NATSURL
	if url == "" {
		if err := checkListen(cfg.Listen, cfg.DataDir); err != nil {
			return nil, err
		}
		if s.lock, err = lockDataDir(cfg.DataDir); err != nil {
			return nil, err
		}
		m, created, err := auth.Ensure(cfg.DataDir, cfg.Prefix)
		if err != nil {
			return nil, fmt.Errorf("supervisor: auth material: %w", err)
		}
		if created {
			s.log.Info().Str("dir", m.Dir).Msg("auth material created: operator, system and Tether accounts; supervisor, operator and viewer credentials")
		}
		if len(m.Reissued) > 0 {
			s.log.Warn().Strs("files", m.Reissued).Str("dir", m.Dir).
				Msg("credentials re-issued: an older version wrote them with other permissions; the old ones are revoked, so copies handed out must be replaced")
		}
		if s.ns, err = startEmbedded(cfg, m, s.log); err != nil {
			return nil, err
		}
		s.auth = m
		url = s.ns.ClientURL()
		s.log.Info().Str("url", url).Str("data_dir", cfg.DataDir).Str("operator_creds", m.Path(auth.OperatorFile)).
			Msg("embedded nats-server started; auth is on: connect with the credentials in the auth directory")
	}
	if s.nc, err = nats.Connect(url, s.natsOptions()...); err != nil {
		return nil, fmt.Errorf("supervisor: connect to NATS at %s: %w", kvconfig.MaskURLs(url), err)
	}
	if s.js, err = jetstream.New(s.nc); err != nil {
		return nil, fmt.Errorf("supervisor: jetstream: %w", err)
	}
	bcfg := cfg.Buckets
	if bcfg.FleetMaxBytes == 0 { // one bounded record per agent
		bcfg.FleetMaxBytes = int64(cfg.Fleet.MaxAgents) * kvconfig.MaxFleetRecordBytes
	}
	if s.buckets, err = kvconfig.EnsureBuckets(ctx, s.js, bcfg); err != nil {
		return nil, err
	}
	fcfg := cfg.Fleet
	if useLease {
		fcfg.Fence = func() (int64, uint64) {
			if l := s.lease.Load(); l != nil {
				return l.Fence()
			}
			return 0, 0
		}
	}
	if cfg.Admission == AdmitRegistered {
		// s.store is set below, before fl.Start subscribes to heartbeats.
		fcfg.Admit = func(id string) bool { return s.store.Index().Registered(id) }
	}
	fl, err := fleet.New(fleet.Options{Config: fcfg, Prefix: cfg.Prefix, Conn: s.nc, KV: s.buckets.Fleet, WatchCheckInterval: cfg.WatchCheckInterval, Buckets: &bcfg,
		Metrics: s.metrics.Fleet, Logger: cfg.Logger})
	if err != nil {
		return nil, fmt.Errorf("supervisor: %w", err)
	}
	s.fleet.Store(fl)
	s.logReport = logsample.Start(s.log, cfg.LogSummaryInterval,
		append([]*logsample.Sampler{s.reqSampler, s.guardSampler, s.httpSampler}, fl.LogSamplers()...)...)
	log := s.log.With().Str("component", "kvconfig").Logger()
	s.store, err = kvconfig.OpenStore(kvconfig.StoreConfig{
		JetStream:     s.js,
		Buckets:       s.buckets,
		OnChange:      s.onChange,
		OnRestart:     func(bucket, _ string) { s.metrics.watcherRestarted(bucket) },
		CheckInterval: cfg.WatchCheckInterval,
		Recreate:      &bcfg,
		OnBucket:      s.metrics.bucketEvent,
		Logger:        &log,
	})
	if err != nil {
		return nil, err
	}
	if err = s.startService(); err != nil {
		return nil, err
	}
	if err = fl.Start(ctx, s.store.Index()); err != nil {
		return nil, err
	}
	if useLease {
		if err = s.startLease(ctx); err != nil {
			return nil, err
		}
	}
	if cfg.HTTPAddr != "" {
		if err = s.startHTTP(); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// natsWriteTimeout bounds one write to the NATS server (nats.go's
// FlusherTimeout, a minute by default): a write to a server that stopped
// reading fails the connection, which then reconnects, instead of holding
// the connection's lock, and with it every publish and Close, for a
// minute. The supervisor's pings take a link for dead after about as long.
const natsWriteTimeout = 2 * time.Second

func (s *Supervisor) natsOptions() []nats.Option {
	opts := []nats.Option{
		nats.Name("tether-supervisor"),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(s.cfg.ReconnectWait),
		nats.ReconnectJitter(s.cfg.ReconnectWait, s.cfg.ReconnectWait),
		nats.RetryOnFailedConnect(false),
		nats.FlusherTimeout(natsWriteTimeout),
		// Nothing is buffered while disconnected: a command, probe or
		// mcp_fleet write from before an outage must not land after it
		// (another replica may lead by then); each is retried from state.
		nats.ReconnectBufSize(-1),
		nats.PingInterval(time.Second),
		nats.MaxPingsOutstanding(2),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			ev := s.log.Warn()
			if s.stopping.Load() {
				ev = s.log.Debug() // our own shutdown
			}
			ev.Err(err).Msg("nats disconnected")
			if f := s.fleet.Load(); f != nil {
				f.LinkDown()
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			s.metrics.reconnected()
			if f := s.fleet.Load(); f != nil {
				f.LinkUp()
			}
			s.log.Info().Str("url", kvconfig.MaskURL(nc.ConnectedUrl())).Msg("nats reconnected")
			if s.store != nil {
				s.store.CheckWatchers()
			}
		}),
		nats.ClosedHandler(func(*nats.Conn) { s.log.Debug().Msg("nats connection closed") }),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			if errors.Is(err, nats.ErrPermissionViolation) {
				s.metrics.permissionError()
				if f := s.fleet.Load(); f != nil && strings.Contains(err.Error(), "Publish to \""+f.SelfProbeSubject()+"\"") {
					f.SelfProbeRefused()
				}
			}
			ev := s.log.Error().Err(err)
			if sub != nil {
				ev = ev.Str("subject", sub.Subject)
			}
			ev.Msg("nats async error")
		}),
	}
	if s.auth != nil {
		opts = append(opts, nats.UserCredentials(s.auth.Path(auth.SupervisorFile)))
	}
	if s.ns == nil {
		switch {
		case s.cfg.CredsFile != "":
			opts = append(opts, nats.UserCredentials(s.cfg.CredsFile))
		case s.cfg.User != "":
			opts = append(opts, nats.UserInfo(s.cfg.User, s.cfg.Password))
		case s.cfg.Token != "":
			opts = append(opts, nats.Token(s.cfg.Token))
		}
	}
	return opts
}

func (s *Supervisor) onChange(ch kvconfig.Change) {
	s.metrics.kvChange(ch.Bucket, ch.Op.String(), ch.Err != nil)
	if f := s.fleet.Load(); f != nil {
		f.ConfigChanged(ch)
	}
}

func (s *Supervisor) startService() error {
	r := &resolver{
		subj:       agentproto.Subjects{Prefix: s.cfg.Prefix},
		index:      s.store.Index(),
		log:        s.reqSampler.Logger(s.log.With().Str("component", "resolver").Logger()),
		retryAfter: DefaultRetryAfterNotReady,
		maxPayload: func() int { return int(s.nc.MaxPayload()) },
		fleetSize: func() int {
			if f := s.fleet.Load(); f != nil {
				return f.Size()
			}
			return 0
		},
		metrics:         s.metrics,
		admitRegistered: s.cfg.Admission == AdmitRegistered,
	}
	svc, err := micro.AddService(s.nc, micro.Config{
		Name:        DefaultServiceName,
		Version:     Version,
		Description: "Tether: scoped MCP server configs, resolved over NATS",
		QueueGroup:  DefaultQueueGroup,
	})
	if err != nil {
		return fmt.Errorf("supervisor: register micro service: %w", err)
	}
	s.svc = svc
	g := newReplyGuard(r.subj, s.metrics, s.guardSampler.Logger(s.log.With().Str("component", "service").Logger()))
	f := s.fleet.Load()
	for _, ep := range []struct {
		name, verb, subject string
		named               bool // the first token names the requesting agent
		h                   micro.HandlerFunc
	}{
		{"resolve", "resolve", r.subj.Wildcard("resolve"), true, r.handleResolve},
		{"resolveall", "resolveall", r.subj.Wildcard("resolveall"), true, r.handleResolveAll},
		{"explain", "explain", r.subj.Wildcard("explain"), false, r.handleExplain},
		{"fleet-status", "", r.subj.FleetStatus(), false, f.HandleStatus},
	} {
		h := g.guard(ep.name, ep.verb, ep.named, ep.h)
		if err := svc.AddEndpoint(ep.name, h, micro.WithEndpointSubject(ep.subject)); err != nil {
			return fmt.Errorf("supervisor: add endpoint %s: %w", ep.name, err)
		}
	}
	return nil
}

// Fleet is the supervisor's fleet tracker.
func (s *Supervisor) Fleet() *fleet.Fleet { return s.fleet.Load() }

// Index is the supervisor's config index.
func (s *Supervisor) Index() *kvconfig.Index { return s.store.Index() }

// Buckets are the KV buckets in use.
func (s *Supervisor) Buckets() kvconfig.Buckets { return s.buckets }

// Conn is the supervisor's NATS connection.
func (s *Supervisor) Conn() *nats.Conn { return s.nc }

// ClientURL is the URL agents use: the embedded server's, or cfg.NATSURL.
func (s *Supervisor) ClientURL() string {
	if s.ns != nil {
		return s.ns.ClientURL()
	}
	return s.cfg.NATSURL
}

// Metrics returns the supervisor's metrics.
func (s *Supervisor) Metrics() *Metrics { return s.metrics }

// WaitReady blocks until the index has loaded the buckets.
func (s *Supervisor) WaitReady(ctx context.Context) error { return s.store.WaitReady(ctx) }

// Ready reports NATS connected, index loaded and watchers alive, with the
// reason when not.
func (s *Supervisor) Ready() (bool, string) {
	switch {
	case s.nc == nil || !s.nc.IsConnected():
		return false, "nats not connected"
	case s.store == nil || !s.store.Index().Ready():
		return false, "config index not loaded yet"
	case !s.store.Healthy():
		return false, "a KV watcher is down; it is being re-created"
	}
	if f := s.fleet.Load(); f != nil {
		if ok, why := f.HeartbeatsReceiving(); !ok {
			return false, why
		}
	}
	if l := s.lease.Load(); l != nil {
		if gap := l.SinceLeader(); gap > 2*s.cfg.LeaseTTL {
			return false, fmt.Sprintf("no leader for %v (more than twice the lease TTL %v): no replica sends commands", gap.Round(time.Millisecond), s.cfg.LeaseTTL)
		}
	}
	if p := s.store.Problems(); len(p) > 0 {
		return true, "ready; warning: " + strings.Join(p, "; ")
	}
	return true, "ready"
}

// Run starts the supervisor and serves until ctx is done, then drains
// (bounded by RunDrainTimeout, then Config.CloseTimeout) and returns.
func Run(ctx context.Context, cfg Config) error {
	v := Build()
	f := cfg.Fleet.Effective()
	cfg.Logger.Info().Str("release", v.Release).Str("version", v.Version).Str("revision", v.Revision).Str("go", v.Go).
		Str("nats_url", kvconfig.MaskURLs(cfg.NATSURL)).Str("listen", cfg.Listen).Str("data_dir", cfg.DataDir).
		Str("http", cfg.HTTPAddr).Str("prefix", cfg.Prefix).Str("admission", cfg.Admission).Int("max_agents", f.MaxAgents).
		Dur("heartbeat_interval_ms", f.HeartbeatInterval).Int("suspect_after", f.SuspectAfter).Int("lost_after", f.LostAfter).
		Dur("probe_interval_ms", f.ProbeInterval).Dur("probe_timeout_ms", f.ProbeTimeout).Int("zombie_after", f.ZombieAfter).
		Int("quarantine_after", f.QuarantineAfter).Dur("quarantine_period_ms", f.QuarantinePeriod).
		Dur("lease_ttl_ms", cfg.LeaseTTL).Int("replicas", cfg.Buckets.Replicas).Msg("supervisor starting")
	s, err := Start(ctx, cfg)
	if err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, DefaultReadyWait)
	if err := s.WaitReady(rctx); err != nil {
		cfg.Logger.Warn().Err(err).Msg("config index still loading; resolves answer 503 until it is")
	} else {
		cfg.Logger.Info().Int("configs", s.Index().Len()).Str("nats", kvconfig.MaskURLs(s.ClientURL())).Str("http", s.HTTPAddr()).Msg("supervisor ready")
	}
	cancel()
	<-ctx.Done()
	cfg.Logger.Info().Msg("shutting down: draining")
	stopAt := time.Now()
	dctx, dcancel := context.WithTimeout(context.Background(), RunDrainTimeout)
	defer dcancel()
	err = s.Drain(dctx)
	ev := cfg.Logger.Info()
	if err != nil {
		ev = cfg.Logger.Warn().Err(err)
	}
	ev.Dur("took_ms", time.Since(stopAt)).Msg("supervisor stopped")
	return err
}

// BuildInfo is what Build reports of this binary.
type BuildInfo struct {
	Release, Version, Revision, Go string
}

// Build is this binary's release (Version, as the micro service reports
// it) and what tether_build_info says: module version, VCS revision and
// Go version (one source: buildLabels).
func Build() BuildInfo {
	v, g, r := buildLabels(debug.ReadBuildInfo())
	return BuildInfo{Release: Version, Version: v, Revision: r, Go: g}
}
