package mcp

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os/exec"
	"sync"
	"time"

	sdk "github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/kvconfig"
)

// Options configures a ToolCaller.
type Options struct {
	// Client names this agent to MCP servers. Default "tether-agent".
	Client *sdk.Implementation
	// Policy is used when the server's config has no retry block. Default
	// DefaultPolicy.
	Policy *agentproto.Policy
	// Stats counts calls for heartbeats. Optional.
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
	// Logger receives one line per retry and per session (re)connect.
	Logger zerolog.Logger
}

// ToolCaller calls tools on one MCP server, as its resolved config says,
// with every call wrapped in Retry. A transient failure drops the MCP
// session, so the next attempt reconnects: a server restarted by a rolling
// deploy is picked up again without the caller noticing more than the
// retries. Swap replaces the config in place.
type ToolCaller struct {
	opts Options
	log  zerolog.Logger

	mu      sync.Mutex
	res     agentproto.Resolved
	policy  agentproto.Policy
	session *sdk.ClientSession
}

// NewToolCaller returns a caller for res's server. It connects lazily, on
// the first call.
func NewToolCaller(res agentproto.Resolved, opts Options) (*ToolCaller, error) {
	if opts.Client == nil {
		opts.Client = &sdk.Implementation{Name: "tether-agent", Version: "0.1.0"}
	}
	t := &ToolCaller{opts: opts, log: opts.Logger.With().Str("server", res.Server).Logger()}
	if err := t.Swap(res); err != nil {
		return nil, err
	}
	return t, nil
}

// Swap installs a new config (e.g. after a reresolve). The current session
// is closed; the next call connects with the new config.
func (t *ToolCaller) Swap(res agentproto.Resolved) error {
	if res.Config == nil {
		return fmt.Errorf("mcp: tool caller for %s: no config", res.Server)
	}
	base := agentproto.DefaultPolicy()
	if t.opts.Policy != nil {
		base = *t.opts.Policy
	}
	base.Logger, base.Stats = t.opts.Logger, t.opts.Stats
	if err := agentproto.CheckCommand(res.Config, t.opts.AllowCommands, res.Server, res.Key, res.Revision); err != nil {
		return err
	}
	p, err := agentproto.PolicyFor(res.Config, base)
	if err != nil {
		return fmt.Errorf("mcp: tool caller for %s (%s revision %d): %w", res.Server, res.Key, res.Revision, err)
	}
	t.mu.Lock()
	old := t.session
	t.res, t.policy, t.session = res, p, nil
	t.mu.Unlock()
	if old != nil {
		_ = old.Close()
	}
	return nil
}

// Call calls tool with args, retrying transient failures per the policy.
// A tool that reports an error in its result (IsError) is a successful
// call: the result says what went wrong.
func (t *ToolCaller) Call(ctx context.Context, tool string, args any) (*sdk.CallToolResult, error) {
	t.mu.Lock()
	p := t.policy
	t.mu.Unlock()
	p.Op = "tool " + tool
	ss := t.opts.ServerStats
	attempts := 0
	res, err := agentproto.RetryValue(ctx, p, func(ctx context.Context) (*sdk.CallToolResult, error) {
		if attempts++; attempts > 1 {
			ss.AddRetried()
		}
		res, err := t.attempt(ctx, tool, args)
		if err != nil {
			ss.AttemptFailed(agentproto.Classify(err), FailureKind(err))
		}
		return res, err
	})
	if err != nil {
		ss.AddFailed(errors.Is(err, agentproto.ErrOutcomeUnknown))
		return res, err
	}
	ss.AddOK()
	return res, nil
}

func (t *ToolCaller) attempt(ctx context.Context, tool string, args any) (*sdk.CallToolResult, error) {
	s, err := t.connect(ctx)
	if err != nil {
		return nil, err
	}
	res, err := s.CallTool(ctx, &sdk.CallToolParams{Name: tool, Arguments: args})
	err = SessionError(err)
	if err != nil && agentproto.Classify(err) != agentproto.ClassPermanent {
		t.drop(s)
	}
	return res, err
}

func (t *ToolCaller) connect(ctx context.Context) (*sdk.ClientSession, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.session != nil {
		return t.session, nil
	}
	tr, err := transport(t.res, t.opts.AllowCommands)
	if err != nil {
		return nil, agentproto.MarkPermanent(err)
	}
	s, err := sdk.NewClient(t.opts.Client, nil).Connect(ctx, tr, nil)
	if err != nil {
		return nil, fmt.Errorf("mcp: connect to MCP server %s: %w", t.res.Server, SessionError(err))
	}
	t.log.Info().Str("key", t.res.Key).Uint64("revision", t.res.Revision).Msg("mcp session connected")
	t.session = s
	return s, nil
}

func (t *ToolCaller) drop(s *sdk.ClientSession) {
	t.mu.Lock()
	if t.session == s {
		t.session = nil
	}
	t.mu.Unlock()
	_ = s.Close()
}

// Close closes the session. Safe to call twice.
func (t *ToolCaller) Close() error {
	t.mu.Lock()
	s := t.session
	t.session = nil
	t.mu.Unlock()
	if s != nil {
		return s.Close()
	}
	return nil
}

func transport(res agentproto.Resolved, allow []string) (sdk.Transport, error) {
	cfg := res.Config
	hc := &http.Client{Transport: headerTransport{headers: cfg.Headers, next: http.DefaultTransport}}
	switch cfg.Transport {
	case kvconfig.TransportHTTP:
		return &sdk.StreamableClientTransport{Endpoint: cfg.URL, HTTPClient: hc, MaxRetries: -1, DisableStandaloneSSE: true}, nil
	case kvconfig.TransportSSE:
		return &sdk.SSEClientTransport{Endpoint: cfg.URL, HTTPClient: hc}, nil
	case kvconfig.TransportStdio:
		if err := agentproto.CheckCommand(cfg, allow, res.Server, res.Key, res.Revision); err != nil {
			return nil, err // checked in Swap too: never start what is not allowed
		}
		cmd := exec.Command(cfg.Command, cfg.Args...)
		cmd.Env = make([]string, 0, len(cfg.Env)) // only the config's env, never the agent's
		for k, v := range cfg.Env {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
		return &sdk.CommandTransport{Command: cmd, TerminateDuration: 2 * time.Second}, nil
	}
	return nil, errors.New("mcp: unknown transport " + cfg.Transport)
}

// FailureKind is agentproto.FailureKind with the SDK's own errors told
// apart: a session the server no longer knows is "session_lost", a
// connection closed under a call (with no deeper cause) is "reset".
func FailureKind(err error) string {
	k := agentproto.FailureKind(err)
	if k == agentproto.FailureSessionLost && !errors.Is(err, sdk.ErrSessionMissing) && errors.Is(err, sdk.ErrConnectionClosed) {
		return agentproto.FailureReset
	}
	return k
}

// SessionError marks the SDK's "connection closed" and "session missing"
// errors with agentproto.ErrMCPSessionLost, the classification table's
// transient row for them (agentproto does not link the SDK's session code).
func SessionError(err error) error {
	if errors.Is(err, sdk.ErrConnectionClosed) || errors.Is(err, sdk.ErrSessionMissing) {
		return fmt.Errorf("%w: %w", agentproto.ErrMCPSessionLost, err)
	}
	return err
}

// headerTransport adds the config's headers to every request.
type headerTransport struct {
	headers map[string]string
	next    http.RoundTripper
}

func (h headerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if len(h.headers) > 0 {
		r = r.Clone(r.Context())
		for k, v := range h.headers {
			r.Header.Set(k, v)
		}
	}
	return h.next.RoundTrip(r)
}
