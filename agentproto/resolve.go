package agentproto

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/kvconfig"
)

// DefaultRequestTimeout bounds one resolve request.
const DefaultRequestTimeout = 2 * time.Second

// ErrNoConnection is returned (classified transient) while the client has
// no NATS connection, e.g. during a rebuild.
var ErrNoConnection = errors.New("agentproto: no NATS connection")

// Resolved is a config as the agent holds it.
type Resolved struct {
	Server   string
	Role     string
	Scope    string // "agent:<agent>", "role:<role>" or "global"
	Key      string
	Revision uint64
	AsOf     kvconfig.AsOf
	Config   *kvconfig.ServerConfig
	// Stale is true when the supervisor could not be reached (or answered
	// 422 for a newly broken entry) and this is the last known good config.
	Stale bool
	// Changed is true when this answer replaced a different revision.
	Changed bool
	// Err is the failure behind a stale answer, or a server's own error in
	// a ResolveAll result.
	Err error
}

// ResolverConfig configures a Resolver.
type ResolverConfig struct {
	// Agent is this agent's id. Required.
	Agent string
	// Subjects builds the subjects; zero value uses the "mcp" prefix.
	Subjects Subjects
	// Conn returns the current connection (nil while there is none). Required.
	Conn func() *nats.Conn
	// Policy retries each resolve; 503 and no-responders are retried, 404,
	// 422 and 400 are not. Zero value: DefaultPolicy with decorrelated
	// jitter (a whole fleet re-resolves after a shared outage; see
	// BENCHMARKS.md for why) and RequestTimeout per attempt.
	Policy Policy
	// RequestTimeout bounds one request when Policy.AttemptTimeout is zero.
	// Default DefaultRequestTimeout.
	RequestTimeout time.Duration
	// CacheFile, if set, keeps the last known good configs on disk (mode
	// 0600, written atomically on every change), so an agent restarted
	// while the supervisor is down starts with them, marked Stale.
	CacheFile string
	// AllowCommands are the stdio commands this agent may start, compared
	// exactly with a config's "command". A config naming any other is
	// refused: Resolve returns ErrCommandNotAllowed with no Config, it is
	// never handed to OnConfigChange subscribers or cached, and heartbeats
	// report it as not applied with the reason. Empty: no stdio server may
	// be started.
	AllowCommands []string
	// Guard, if set, wraps each request's context so that it ends with a
	// *PermissionError as soon as the server refuses the publish (the
	// Client sets it from its asynchronous permission errors).
	Guard func(ctx context.Context, subject string) (context.Context, func())
	// OnFleetSize, if set, is called with each resolveall reply's
	// fleet_size (at most MaxFleetSizeHint); the Client sizes its
	// reconnect window with it.
	OnFleetSize func(n int)
	Logger      zerolog.Logger
}

// Resolver is the agent's resolve client. It keeps the last known good
// config per server with its revision: when the supervisor cannot be
// reached it answers with that config marked Stale instead of failing, and
// it never replaces a config with an answer older than the one it holds.
// The last known good configs live in memory for the life of the process.
type Resolver struct {
	cfg     ResolverConfig
	log     zerolog.Logger
	mu      sync.Mutex
	lkg     map[string]*held
	refused map[string]refusal // configs refused by AllowCommands, per server
	subs    []func(Resolved) error
}

// refusal is a config revision the agent refused to run.
type refusal struct {
	revision uint64
	msg      string
}

type held struct {
	res     Resolved
	applied bool
	errMsg  string
	// fromCache: loaded from CacheFile and not yet confirmed; the first
	// answer from the supervisor replaces it whatever its revision (the
	// buckets may have been re-created since).
	fromCache bool
}

// NewResolver checks the config and returns a Resolver.
func NewResolver(cfg ResolverConfig) (*Resolver, error) {
	if err := kvconfig.ValidateID(kvconfig.KindAgent, cfg.Agent); err != nil {
		return nil, fmt.Errorf("%w: ResolverConfig.Agent: %w", ErrInvalidConfig, err)
	}
	if cfg.Conn == nil {
		return nil, fmt.Errorf("%w: ResolverConfig.Conn is nil", ErrInvalidConfig)
	}
	if cfg.RequestTimeout == 0 {
		cfg.RequestTimeout = DefaultRequestTimeout
	}
	if p := &cfg.Policy; p.MaxAttempts == 0 && p.BaseDelay == 0 && p.MaxDelay == 0 && p.Jitter == 0 && p.MaxElapsed == 0 {
		d := DefaultPolicy()
		p.MaxAttempts, p.BaseDelay, p.MaxDelay, p.Jitter, p.MaxElapsed = d.MaxAttempts, d.BaseDelay, d.MaxDelay, d.Jitter, d.MaxElapsed
		p.JitterMode = JitterDecorrelated
	}
	if cfg.Policy.AttemptTimeout == 0 {
		cfg.Policy.AttemptTimeout = cfg.RequestTimeout
	}
	if err := cfg.Policy.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger.With().Str("agent", cfg.Agent).Logger()
	r := &Resolver{cfg: cfg, log: log, lkg: map[string]*held{}, refused: map[string]refusal{}}
	if err := r.loadCache(); err != nil {
		return nil, err
	}
	return r, nil
}

// Subscribe registers fn to be called, in the caller's goroutine of the
// resolve that produced it, whenever a server's config changes revision.
// An error from fn reports the config as not applied in heartbeats.
func (r *Resolver) Subscribe(fn func(Resolved) error) {
	r.mu.Lock()
	r.subs = append(r.subs, fn)
	r.mu.Unlock()
}

// request sends one request and decodes a contract error into *ServiceError.
func (r *Resolver) request(ctx context.Context, subject string) ([]byte, error) {
	return r.requestBody(ctx, subject, nil)
}

// requestBody is request with a body.
func (r *Resolver) requestBody(ctx context.Context, subject string, body []byte) ([]byte, error) {
	nc := r.cfg.Conn()
	if nc == nil {
		return nil, MarkTransient(ErrNoConnection)
	}
	if r.cfg.Guard != nil {
		var done func()
		ctx, done = r.cfg.Guard(ctx, subject)
		defer done()
	}
	msg, err := nc.RequestWithContext(ctx, subject, body)
	if err != nil {
		var pe *PermissionError
		if errors.As(context.Cause(ctx), &pe) {
			return nil, MarkPermanent(pe)
		}
		return nil, fmt.Errorf("agentproto: request %s: %w", subject, err)
	}
	if code := msg.Header.Get(HeaderServiceErrorCode); code != "" {
		se := &ServiceError{Subject: subject, Message: msg.Header.Get(HeaderServiceError)}
		se.Code, _ = strconv.Atoi(code)
		var body ErrorBody
		if json.Unmarshal(msg.Data, &body) == nil {
			if body.Error.Message != "" {
				se.Message = body.Error.Message
			}
			se.RetryAfter = time.Duration(body.Error.RetryAfterMS) * time.Millisecond
		}
		return nil, se
	}
	return msg.Data, nil
}

func (r *Resolver) policy(op string) Policy {
	p := r.cfg.Policy
	p.Op = op
	return p
}

// Resolve asks the supervisor for server's config. On success the answer
// is remembered (unless it is older than the one held, which is then
// returned instead). If the supervisor cannot be reached after the retries
// and a last known good config is held, that is returned with Stale set and
// a nil error. A 404 forgets the held config and returns the error; a 422
// returns the error together with the held config marked Stale, so the
// caller may keep running it.
func (r *Resolver) Resolve(ctx context.Context, server string) (Resolved, error) {
	if err := kvconfig.ValidateID(kvconfig.KindServer, server); err != nil {
		return Resolved{}, MarkPermanent(err)
	}
	subject := r.cfg.Subjects.Resolve(r.cfg.Agent, server)
	data, err := RetryValue(ctx, r.policy("resolve "+server), func(ctx context.Context) ([]byte, error) {
		return r.request(ctx, subject)
	})
	if err != nil {
		return r.failed(server, err)
	}
	var rep ResolveReply
	if err := json.Unmarshal(data, &rep); err != nil {
		return r.failed(server, MarkPermanent(fmt.Errorf("agentproto: resolve %s: reply is not JSON: %w", server, err)))
	}
	res := Resolved{Server: server, Role: rep.Role, Scope: rep.Scope, Key: rep.Key, Revision: rep.Revision, AsOf: rep.AsOf}
	if res.Config, err = kvconfig.DecodeConfig(rep.Config); err != nil {
		return r.failed(server, MarkPermanent(fmt.Errorf("agentproto: resolve %s: config from %s revision %d: %w", server, rep.Key, rep.Revision, err)))
	}
	if err := r.commandAllowed(&res); err != nil {
		return r.refuse(res, err)
	}
	return r.accept(res), nil
}

// commandAllowed checks a stdio config's command against AllowCommands.
func (r *Resolver) commandAllowed(res *Resolved) error {
	return CheckCommand(res.Config, r.cfg.AllowCommands, res.Server, res.Key, res.Revision)
}

// CheckCommand returns ErrCommandNotAllowed (marked permanent, naming the
// server, key and revision) when cfg is a stdio config whose command is
// not exactly one of allow; nil otherwise. agentproto/mcp checks again
// before starting anything.
func CheckCommand(cfg *kvconfig.ServerConfig, allow []string, server, key string, revision uint64) error {
	if cfg == nil || cfg.Transport != kvconfig.TransportStdio || slices.Contains(allow, cfg.Command) {
		return nil
	}
	return MarkPermanent(fmt.Errorf("%w: server %s (%s revision %d) would run %q, which is not in this agent's Config.AllowCommands; not started (add it there to allow it)",
		ErrCommandNotAllowed, server, key, revision, kvconfig.Truncate(cfg.Command, 200)))
}

// refuse records a config the agent will not run, for heartbeats, and
// returns it without its Config.
func (r *Resolver) refuse(res Resolved, err error) (Resolved, error) {
	r.mu.Lock()
	prev, seen := r.refused[res.Server]
	r.refused[res.Server] = refusal{revision: res.Revision, msg: err.Error()}
	r.mu.Unlock()
	if !seen || prev.revision != res.Revision {
		r.log.Error().Err(err).Str("server", res.Server).Str("key", res.Key).Uint64("revision", res.Revision).
			Msg("config refused: stdio command not allowed")
	}
	res.Config, res.Err = nil, err
	return res, err
}

// accept stores a fresh answer unless the held one is newer, notifies
// subscribers on a change and returns what the agent now holds.
func (r *Resolver) accept(res Resolved) Resolved {
	r.mu.Lock()
	h := r.lkg[res.Server]
	if h != nil && !h.fromCache && (!res.AsOf.Covers(h.res.AsOf) ||
		res.AsOf.SameEpoch(h.res.AsOf) && h.res.Key == res.Key && res.Revision < h.res.Revision) {
		old := h.res
		r.mu.Unlock()
		r.log.Warn().Str("server", res.Server).Uint64("revision", res.Revision).Uint64("held_revision", old.Revision).
			Msg("resolve answer older than the config held; keeping the held one")
		old.Stale, old.Changed, old.Err = false, false, nil
		return old
	}
	delete(r.refused, res.Server)
	res.Changed = h != nil && (h.res.Revision != res.Revision || h.res.Key != res.Key)
	isNew := h == nil || res.Changed || h.res.Stale
	r.lkg[res.Server] = &held{res: res, applied: true}
	if isNew {
		r.saveCacheLocked()
	}
	subs := r.subs
	r.mu.Unlock()
	r.log.Info().Str("server", res.Server).Str("scope", res.Scope).Str("key", res.Key).Uint64("revision", res.Revision).
		Bool("changed", res.Changed).Msg("config resolved")
	if isNew {
		r.notify(subs, res)
	}
	return res
}

func (r *Resolver) notify(subs []func(Resolved) error, res Resolved) {
	var errs []error
	for _, fn := range subs {
		if err := fn(res); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		r.mu.Lock()
		if h := r.lkg[res.Server]; h != nil && h.res.Revision == res.Revision {
			h.applied, h.errMsg = false, err.Error()
		}
		r.mu.Unlock()
		r.log.Error().Err(err).Str("server", res.Server).Uint64("revision", res.Revision).Msg("config not applied")
	}
}

// failed turns a failed resolve into the documented answer.
func (r *Resolver) failed(server string, err error) (Resolved, error) {
	var se *ServiceError
	isSE := errors.As(err, &se)
	r.mu.Lock()
	defer r.mu.Unlock()
	h := r.lkg[server]
	switch {
	case isSE && se.Code == CodeNotFound:
		delete(r.lkg, server)
		delete(r.refused, server)
		r.saveCacheLocked()
		r.log.Warn().Str("error", err.Error()).Str("server", server).Msg("config no longer exists (deleted by an operator?): dropped the held one; calls to this server fail until one is configured")
		return Resolved{Server: server, Err: err}, err
	case h == nil:
		r.log.Error().Err(err).Str("server", server).Msg("resolve failed and no last known good config is held")
		return Resolved{Server: server, Err: err}, err
	}
	h.res.Stale, h.res.Changed, h.res.Err = true, false, err
	h.errMsg = err.Error()
	out := h.res
	if isSE && se.Code == CodeInvalidConfig {
		r.log.Error().Err(err).Str("server", server).Uint64("revision", out.Revision).Msg("config now invalid; keeping the last known good one")
		return out, err
	}
	if Classify(err).Retryable() || errors.Is(err, context.DeadlineExceeded) {
		r.log.Warn().Err(err).Str("server", server).Uint64("revision", out.Revision).Msg("supervisor unreachable; serving the last known good config, stale")
		return out, nil
	}
	return out, err
}

// ResolveAll asks for every server visible to the agent. Each result
// carries its own Err. If the supervisor cannot be reached, the held
// configs are returned marked Stale (error only when none is held).
// Servers the supervisor no longer lists are forgotten. Pages are followed
// (ResolveAllReply.Next) until the last; nothing is forgotten unless every
// page arrived.
func (r *Resolver) ResolveAll(ctx context.Context) (map[string]Resolved, error) {
	subject := r.cfg.Subjects.ResolveAll(r.cfg.Agent)
	pages, err := r.resolveAllPages(ctx, subject)
	if err != nil {
		return r.allStale(err)
	}
	seen := map[string]bool{}
	out := map[string]Resolved{}
	for _, rep := range pages {
		for server, it := range rep.Servers {
			seen[server] = true
			out[server] = r.acceptItem(subject, rep, server, it)
		}
	}
	r.mu.Lock()
	dropped := false
	for server := range r.lkg {
		if !seen[server] {
			delete(r.lkg, server)
			dropped = true
		}
	}
	if dropped {
		r.saveCacheLocked()
	}
	r.mu.Unlock()
	return out, nil
}

// MaxFleetSizeHint bounds the fleet size a client takes from a resolveall
// reply: whatever a reply says, the window stays within
// Config.MaxReconnectWait.
const MaxFleetSizeHint = 10_000_000

// maxResolveAllPages bounds the pages one ResolveAll follows.
const maxResolveAllPages = 10000

// resolveAllPages fetches every page of the agent's resolveall, each with
// the retry policy.
func (r *Resolver) resolveAllPages(ctx context.Context, subject string) ([]ResolveAllReply, error) {
	var pages []ResolveAllReply
	after := ""
	for range maxResolveAllPages {
		var body []byte
		if after != "" {
			body, _ = json.Marshal(ResolveAllRequest{After: after})
		}
		data, err := RetryValue(ctx, r.policy("resolveall"), func(ctx context.Context) ([]byte, error) {
			return r.requestBody(ctx, subject, body)
		})
		if err != nil {
			return nil, err
		}
		var rep ResolveAllReply
		if err := json.Unmarshal(data, &rep); err != nil {
			return nil, fmt.Errorf("agentproto: resolveall: reply is not JSON: %w", err)
		}
		pages = append(pages, rep)
		if rep.FleetSize > 0 && r.cfg.OnFleetSize != nil {
			r.cfg.OnFleetSize(min(int(rep.FleetSize), MaxFleetSizeHint))
		}
		if rep.Next == "" {
			return pages, nil
		}
		if rep.Next <= after {
			return nil, MarkPermanent(fmt.Errorf("agentproto: resolveall: page after %q names next %q, not a later server", after, rep.Next))
		}
		after = rep.Next
	}
	return nil, MarkPermanent(fmt.Errorf("agentproto: resolveall: more than %d pages", maxResolveAllPages))
}

// acceptItem turns one server of a resolveall page into what the agent holds.
func (r *Resolver) acceptItem(subject string, rep ResolveAllReply, server string, it ResolveResult) Resolved {
	if it.Error != nil {
		se := &ServiceError{Subject: subject, Code: it.Error.Status, Message: it.Error.Message}
		res, _ := r.failed(server, se)
		return res
	}
	res := Resolved{Server: server, Role: rep.Role, Scope: it.Scope, Key: it.Key, Revision: it.Revision, AsOf: rep.AsOf}
	cfg, derr := kvconfig.DecodeConfig(it.Config)
	if derr != nil {
		out, _ := r.failed(server, MarkPermanent(derr))
		return out
	}
	res.Config = cfg
	if err := r.commandAllowed(&res); err != nil {
		out, _ := r.refuse(res, err)
		return out
	}
	return r.accept(res)
}
func (r *Resolver) allStale(err error) (map[string]Resolved, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.lkg) == 0 || !Classify(err).Retryable() && !errors.Is(err, context.DeadlineExceeded) {
		r.log.Error().Err(err).Msg("resolveall failed")
		return nil, err
	}
	out := make(map[string]Resolved, len(r.lkg))
	for s, h := range r.lkg {
		h.res.Stale, h.res.Err, h.res.Changed = true, err, false
		out[s] = h.res
	}
	r.log.Warn().Err(err).Int("servers", len(out)).Msg("supervisor unreachable; serving last known good configs, stale")
	return out, nil
}

// Reresolve re-resolves the named servers (all held ones when empty),
// swapping configs in place; subscribers hear of every change.
func (r *Resolver) Reresolve(ctx context.Context, servers []string) error {
	if len(servers) == 0 {
		_, err := r.ResolveAll(ctx)
		return err
	}
	var errs []error
	for _, s := range servers {
		if _, err := r.Resolve(ctx, s); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Held returns the config held for server, if any.
func (r *Resolver) Held(server string) (Resolved, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	h, ok := r.lkg[server]
	if !ok {
		return Resolved{}, false
	}
	return h.res, true
}

// Applied reports, per server, the revision held and whether it was
// applied, for the heartbeat's "configs".
func (r *Resolver) Applied() map[string]ConfigApplied {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]ConfigApplied, len(r.lkg))
	for s, h := range r.lkg {
		out[s] = ConfigApplied{Revision: h.res.Revision, Applied: h.applied, Error: h.errMsg, Stale: h.res.Stale}
	}
	for s, rf := range r.refused {
		out[s] = ConfigApplied{Revision: rf.revision, Applied: false, Error: rf.msg}
	}
	return out
}

// Degraded reports whether any held config is stale.
func (r *Resolver) Degraded() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, h := range r.lkg {
		if h.res.Stale {
			return true
		}
	}
	return false
}

// Servers lists the servers held, sorted.
func (r *Resolver) Servers() []string {
	r.mu.Lock()
	out := make([]string, 0, len(r.lkg))
	for s := range r.lkg {
		out = append(out, s)
	}
	r.mu.Unlock()
	sort.Strings(out)
	return out
}
