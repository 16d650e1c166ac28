package agentproto

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"sync"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/kvconfig"
)

// ToolCallerOptions configures a ToolCaller.
type ToolCallerOptions struct {
	// Client names this agent to MCP servers. Default "tether-agent".
	Client *mcp.Implementation
	// Policy is used when the server's config has no retry block. Default
	// DefaultPolicy.
	Policy *Policy
	// Stats counts calls for heartbeats. Optional.
	Stats *CallStats
	// Logger receives one line per retry and per session (re)connect.
	Logger zerolog.Logger
}

// ToolCaller calls tools on one MCP server, as its resolved config says,
// with every call wrapped in Retry. A transient failure drops the MCP
// session, so the next attempt reconnects: a server restarted by a rolling
// deploy is picked up again without the caller noticing more than the
// retries. Swap replaces the config in place.
type ToolCaller struct {
	opts ToolCallerOptions
	log  zerolog.Logger

	mu      sync.Mutex
	res     Resolved
	policy  Policy
	session *mcp.ClientSession
}

// NewToolCaller returns a caller for res's server. It connects lazily, on
// the first call.
func NewToolCaller(res Resolved, opts ToolCallerOptions) (*ToolCaller, error) {
	if opts.Client == nil {
		opts.Client = &mcp.Implementation{Name: "tether-agent", Version: "0.1.0"}
	}
	t := &ToolCaller{opts: opts, log: opts.Logger.With().Str("server", res.Server).Logger()}
	if err := t.Swap(res); err != nil {
		return nil, err
	}
	return t, nil
}

// PolicyFor maps a config's retry and timeout to a Policy, starting from base.
func PolicyFor(cfg *kvconfig.ServerConfig, base Policy) (Policy, error) {
	p := base
	if r := cfg.Retry; r != nil {
		if r.MaxAttempts != 0 {
			p.MaxAttempts = r.MaxAttempts
		}
		if r.BaseDelay != 0 {
			p.BaseDelay = r.BaseDelay.D()
		}
		if r.MaxDelay != 0 {
			p.MaxDelay = r.MaxDelay.D()
		}
		if r.Jitter != nil {
			p.Jitter = *r.Jitter
		}
	}
	if cfg.Timeout != 0 {
		p.AttemptTimeout = cfg.Timeout.D()
	}
	if err := p.Validate(); err != nil {
		return Policy{}, err
	}
	return p, nil
}

// Swap installs a new config (e.g. after a reresolve). The current session
// is closed; the next call connects with the new config.
func (t *ToolCaller) Swap(res Resolved) error {
	if res.Config == nil {
		return fmt.Errorf("agentproto: tool caller for %s: no config", res.Server)
	}
	base := DefaultPolicy()
	if t.opts.Policy != nil {
		base = *t.opts.Policy
	}
	base.Logger, base.Stats = t.opts.Logger, t.opts.Stats
	p, err := PolicyFor(res.Config, base)
	if err != nil {
		return fmt.Errorf("agentproto: tool caller for %s (%s revision %d): %w", res.Server, res.Key, res.Revision, err)
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
func (t *ToolCaller) Call(ctx context.Context, tool string, args any) (*mcp.CallToolResult, error) {
	t.mu.Lock()
	p := t.policy
	t.mu.Unlock()
	p.Op = "tool " + tool
	return RetryValue(ctx, p, func(ctx context.Context) (*mcp.CallToolResult, error) {
		s, err := t.connect(ctx)
		if err != nil {
			return nil, err
		}
		res, err := s.CallTool(ctx, &mcp.CallToolParams{Name: tool, Arguments: args})
		if err != nil && Classify(err) != ClassPermanent {
			t.drop(s)
		}
		return res, err
	})
}

func (t *ToolCaller) connect(ctx context.Context) (*mcp.ClientSession, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.session != nil {
		return t.session, nil
	}
	tr, err := transport(t.res.Config)
	if err != nil {
		return nil, MarkPermanent(err)
	}
	s, err := mcp.NewClient(t.opts.Client, nil).Connect(ctx, tr, nil)
	if err != nil {
		return nil, fmt.Errorf("agentproto: connect to MCP server %s: %w", t.res.Server, err)
	}
	t.log.Info().Str("key", t.res.Key).Uint64("revision", t.res.Revision).Msg("mcp session connected")
	t.session = s
	return s, nil
}

func (t *ToolCaller) drop(s *mcp.ClientSession) {
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

func transport(cfg *kvconfig.ServerConfig) (mcp.Transport, error) {
	hc := &http.Client{Transport: headerTransport{headers: cfg.Headers, next: http.DefaultTransport}}
	switch cfg.Transport {
	case kvconfig.TransportHTTP:
		return &mcp.StreamableClientTransport{Endpoint: cfg.URL, HTTPClient: hc, MaxRetries: -1, DisableStandaloneSSE: true}, nil
	case kvconfig.TransportSSE:
		return &mcp.SSEClientTransport{Endpoint: cfg.URL, HTTPClient: hc}, nil
	case kvconfig.TransportStdio:
		cmd := exec.Command(cfg.Command, cfg.Args...)
		cmd.Env = os.Environ()
		for k, v := range cfg.Env {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
		return &mcp.CommandTransport{Command: cmd, TerminateDuration: 2 * time.Second}, nil
	}
	return nil, errors.New("agentproto: unknown transport " + cfg.Transport)
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
