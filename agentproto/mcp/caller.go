package mcp

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"sync"
	"time"
	"unicode/utf8"

	sdk "github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/kvconfig"
)

// ToolCaller calls tools on one MCP server, as its resolved config says,
// with every call wrapped in agentproto.Retry and retried only when that
// cannot run the tool twice:
//
//   - a failure before the request could reach the server (connect
//     refused, DNS, session init failed, stdio process not started, HTTP
//     404/429/503 answered instead of running it) is retried per the
//     policy;
//   - a failure after the request may have reached it (the stream broke
//     mid-call, a reset or a timeout after the request was written) is
//     retried only for a tool the server annotates idempotentHint or
//     readOnlyHint (its tools/list, read once per session) or that the
//     config lists in idempotent_tools; any other tool's call fails with
//     an *OutcomeUnknownError, never retried.
//
// Sessions: connects happen in the background, one at a time, bounded by
// the config's timeout (or Options.ConnectTimeout); callers wait for one
// with their own context, so nothing holds a lock through a handshake. A
// session the server no longer knows (HTTP 404, protocol 2025-11-25) is
// re-initialized once within the attempt; a broken stream (2026-07-28)
// is re-issued, under the rule above, with a new request id. Swap never
// blocks: a changed config gets a new session for new calls while calls
// already running on the old one finish (bounded by the config's timeout
// or Options.DrainTimeout) before it is closed. A stdio server is
// supervised: an exited process is restarted by the caller itself (no
// call needed) after a backoff, and quarantined after too many restarts
// (Options.Restart), crash loop or not, calls or not.
type ToolCaller struct {
	opts  Options
	log   zerolog.Logger
	ss    *agentproto.ServerStats
	http  *http.Transport // kept-alive connections
	fresh *http.Transport // a new connection per request: calls that must not run twice

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // connects, session watchers and closers

	mu     sync.Mutex
	gen    *generation
	cur    *session // the session new calls use; nil: connect on demand
	live   map[*session]struct{}
	budget restartBudget // stdio restart intensity of the current config
	ran    bool          // a stdio process was started for the current config
	closed bool
}

// generation is one resolved config and what is derived from it.
type generation struct {
	res     agentproto.Resolved
	policy  agentproto.Policy
	idem    map[string]bool // idempotent_tools
	connect time.Duration   // bound of one connect
	drain   time.Duration   // bound of in-flight calls on a replaced session
}

func (g *generation) stdio() bool { return g.res.Config.Transport == kvconfig.TransportStdio }

// NewToolCaller returns a caller for res's server. It connects lazily, on
// the first call. It fails on invalid opts, a config that cannot be used
// and a stdio command not allowed (agentproto.ErrCommandNotAllowed).
func NewToolCaller(res agentproto.Resolved, opts Options) (*ToolCaller, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	opts = opts.withDefaults()
	ctx, cancel := context.WithCancel(context.Background())
	t := &ToolCaller{
		opts:   opts,
		log:    opts.Logger.With().Str(logKeyServer, res.Server).Logger(),
		ss:     opts.ServerStats,
		http:   httpTransport(opts.DialTimeout, true),
		fresh:  httpTransport(opts.DialTimeout, opts.ReuseConnsForUnsafeCalls),
		ctx:    ctx,
		cancel: cancel,
		live:   map[*session]struct{}{},
		budget: restartBudget{p: opts.Restart},
	}
	if err := t.Swap(res); err != nil {
		cancel()
		return nil, err
	}
	return t, nil
}

// Swap installs a new config (e.g. after a reresolve); it never blocks on
// the network. When the server's connection settings changed (transport,
// command, args, env, url, headers), new calls get a new session (a new
// process for stdio, with a fresh restart budget) and the old session is
// closed once the calls running on it finish; otherwise the session is
// kept and only the retry policy, timeout and idempotent_tools change.
func (t *ToolCaller) Swap(res agentproto.Resolved) error {
	g, err := t.generation(res)
	if err != nil {
		return err
	}
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return ErrClosed
	}
	old := t.gen
	changed := old != nil && !sameConnection(old.res.Config, res.Config)
	t.gen = g
	retire := t.cur
	if changed {
		t.budget.reset()
		t.ran = false
	}
	t.mu.Unlock()
	if changed {
		t.ss.SetQuarantined(false)
		if retire != nil {
			t.retire(retire, "config changed", false)
		}
		t.log.Info().Str(logKeyKey, res.Key).Uint64(logKeyRevision, res.Revision).Msg("mcp config changed; new calls use a new session")
	}
	return nil
}

func (t *ToolCaller) generation(res agentproto.Resolved) (*generation, error) {
	if res.Config == nil {
		return nil, fmt.Errorf("mcp: tool caller for %s: no config", res.Server)
	}
	if err := agentproto.CheckCommand(res.Config, t.opts.AllowCommands, res.Server, res.Key, res.Revision); err != nil {
		return nil, err
	}
	base := agentproto.DefaultPolicy()
	if t.opts.Policy != nil {
		base = *t.opts.Policy
	}
	base.Logger, base.Stats = t.opts.Logger, t.opts.Stats
	p, err := agentproto.PolicyFor(res.Config, base)
	if err != nil {
		return nil, fmt.Errorf("mcp: tool caller for %s (%s revision %d): %w", res.Server, res.Key, res.Revision, err)
	}
	g := &generation{res: res, policy: p, idem: map[string]bool{}, connect: t.opts.ConnectTimeout, drain: t.opts.DrainTimeout}
	if d := res.Config.Timeout.D(); d > 0 {
		g.connect, g.drain = d, d
	}
	for _, name := range res.Config.IdempotentTools {
		g.idem[name] = true
	}
	return g, nil
}

// sameConnection reports whether two configs reach the server the same way.
func sameConnection(a, b *kvconfig.ServerConfig) bool {
	return a.Transport == b.Transport && a.Command == b.Command && a.URL == b.URL &&
		reflect.DeepEqual(a.Args, b.Args) && reflect.DeepEqual(a.Env, b.Env) && reflect.DeepEqual(a.Headers, b.Headers)
}

// callState is one Call: its tool, arguments and attempts so far.
type callState struct {
	gen  *generation // current when the call began
	tool string
	args any
	n    int    // attempts made
	kind string // failure kind of the latest failed attempt
	// caller is the Call's context: when the caller cancels it, the
	// server is not to blame and its health is left as it was.
	caller context.Context
}

// canceledByCaller reports whether the caller gave up on the call (its
// context was cancelled, not timed out).
func canceledByCaller(ctx context.Context) bool { return errors.Is(ctx.Err(), context.Canceled) }

// Call calls tool with args, retrying as the ToolCaller doc says. A tool
// that reports an error in its result (IsError) is a successful call: the
// result says what went wrong. A call that may have run and was not
// retried fails with an *OutcomeUnknownError (errors.Is
// ErrOutcomeUnknown); other failures are agentproto's *RetryError.
func (t *ToolCaller) Call(ctx context.Context, tool string, args any) (*sdk.CallToolResult, error) {
	if tool == "" || len(tool) > MaxToolNameLen || !utf8.ValidString(tool) {
		return nil, agentproto.MarkPermanent(fmt.Errorf("mcp: tool name %q: want 1-%d bytes of UTF-8", kvconfig.Truncate(tool, 64), MaxToolNameLen))
	}
	t.mu.Lock()
	g, closed := t.gen, t.closed
	t.mu.Unlock()
	if closed {
		return nil, ErrClosed
	}
	c := &callState{gen: g, tool: tool, args: args}
	p := g.policy
	p.Op = "tool " + tool
	p.Logger = t.log.With().Str(logKeyTool, tool).Logger().Hook(failureHook{c})
	c.caller = ctx
	res, err := agentproto.RetryValue(ctx, p, func(ctx context.Context) (*sdk.CallToolResult, error) {
		return t.attempt(ctx, c)
	})
	if err != nil {
		if !canceledByCaller(ctx) {
			t.ss.AddFailed(errors.Is(err, ErrOutcomeUnknown))
		}
		return res, err
	}
	t.ss.AddOK()
	return res, nil
}

// failureHook adds the latest attempt's failure kind to the retry layer's
// warn and error lines (one per retry, with its attempt and delay_ms, and
// one per give-up).
type failureHook struct{ c *callState }

func (h failureHook) Run(e *zerolog.Event, level zerolog.Level, _ string) {
	if level >= zerolog.WarnLevel && h.c.kind != "" {
		e.Str(logKeyFailure, h.c.kind)
	}
}

func (t *ToolCaller) attempt(ctx context.Context, c *callState) (*sdk.CallToolResult, error) {
	if c.n++; c.n > 1 {
		t.ss.AddRetried()
	}
	res, err := t.try(ctx, c)
	if err != nil {
		c.kind = FailureKind(err)
		if !canceledByCaller(c.caller) {
			t.ss.AttemptFailed(agentproto.Classify(err), c.kind)
		}
	}
	return res, err
}

// Close closes every session at once (calls running on them fail), stops
// connects and waits for the caller's goroutines. Safe to call twice.
func (t *ToolCaller) Close() error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	t.cur = nil
	sessions := make([]*session, 0, len(t.live))
	for s := range t.live {
		s.retired = true
		sessions = append(sessions, s)
	}
	t.mu.Unlock()
	t.cancel()
	for _, s := range sessions {
		s.end()
		<-s.ready
		s.close()
	}
	t.wg.Wait()
	t.http.CloseIdleConnections()
	t.fresh.CloseIdleConnections()
	return nil
}

// Release ends a stdio server's quarantine now: the next call starts it
// again with a fresh restart budget.
func (t *ToolCaller) Release() {
	t.mu.Lock()
	t.budget.reset()
	t.mu.Unlock()
	t.ss.SetQuarantined(false)
}
