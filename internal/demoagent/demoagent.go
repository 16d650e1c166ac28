// Package demoagent is the example agent behind cmd/demo-agent: it resolves
// its MCP server's config from the supervisor and calls a tool on that
// server over and over, every call wrapped in agentproto's retry, swapping
// the config in place when the supervisor pushes a new one; with Tasks it
// also works through a JetStream task queue (Consume). It also serves a
// tiny MCP server with an "echo" tool so a demo needs nothing else.
package demoagent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/agentproto"
	agentmcp "github.com/tether-dev/tether/agentproto/mcp"
	"github.com/tether-dev/tether/kvconfig"
)

// Config configures the demo agent.
type Config struct {
	NATSURL string // required
	Agent   string // required
	// CredsFile is the agent's NATS credentials (tetherctl agent add);
	// required by the supervisor's embedded server, which has auth on.
	CredsFile string
	// AllowCommands are the stdio commands it may start (none by default).
	AllowCommands []string
	Server        string // MCP server name to resolve; default "echo"
	Tool          string // tool to call; default "echo"
	// Interval between calls; default 1s.
	Interval time.Duration
	// Calls stops after this many calls; 0 runs until ctx is done.
	Calls int
	// Tasks, STREAM:DURABLE, also consumes that existing durable pull
	// consumer: each task's text is echoed through the tool (see
	// tasks.go). Empty: no tasks.
	Tasks string
	// Policy overrides the default retry policy (the server's retry block
	// still wins).
	Policy *agentproto.Policy
	// Client, if set, adjusts the agentproto.Client config (tests shorten
	// intervals).
	Client func(*agentproto.Config)
	Logger zerolog.Logger
}

// Result counts what Run did.
type Result struct {
	OK, Failed int
	Stats      agentproto.CallCounts
}

// Run resolves the server's config and calls the tool until ctx is done or
// Calls calls were made.
func Run(ctx context.Context, cfg Config) (Result, error) {
	if cfg.Server == "" {
		cfg.Server = "echo"
	}
	if cfg.Tool == "" {
		cfg.Tool = "echo"
	}
	if cfg.Interval == 0 {
		cfg.Interval = time.Second
	}
	log := cfg.Logger.With().Str("agent", cfg.Agent).Logger()
	ccfg := agentproto.DefaultConfig(cfg.Agent)
	ccfg.URLs, ccfg.Name, ccfg.Logger = cfg.NATSURL, "tether-demo-agent "+cfg.Agent, cfg.Logger
	ccfg.CredsFile, ccfg.AllowCommands = cfg.CredsFile, cfg.AllowCommands // the client adds the agent id itself
	if cfg.Client != nil {
		cfg.Client(&ccfg)
	}
	client, err := agentproto.Connect(ctx, ccfg)
	if err != nil {
		return Result{}, fmt.Errorf("demoagent: connect %s: %w", kvconfig.MaskURLs(cfg.NATSURL), err)
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = client.Drain(dctx) // says goodbye to the supervisor
	}()
	stats := client.CallStats()
	res, err := client.Resolve(ctx, cfg.Server)
	if err != nil {
		return Result{}, fmt.Errorf("demoagent: resolve %s: %w", cfg.Server, err)
	}
	caller, err := agentmcp.NewToolCaller(res, agentmcp.Options{AllowCommands: client.AllowCommands(), Policy: cfg.Policy, Stats: stats, ServerStats: client.ServerStats(cfg.Server), Logger: log})
	if err != nil {
		return Result{}, err
	}
	defer caller.Close()
	client.OnConfigChange(func(res agentproto.Resolved) error {
		if res.Server != cfg.Server {
			return nil
		}
		return caller.Swap(res)
	})
	if cfg.Tasks != "" {
		k, err := consumeTasks(client, caller, cfg.Tasks, cfg.Tool, log)
		if err != nil {
			return Result{}, err
		}
		defer k.Stop()
	}

	var out Result
	tick := time.NewTicker(cfg.Interval)
	defer tick.Stop()
	failing := 0 // calls failed in a row
	summary := time.Now()
	var okSince, failedSince int
	for i := 0; cfg.Calls == 0 || i < cfg.Calls; i++ {
		start := time.Now()
		result, err := caller.Call(ctx, cfg.Tool, map[string]any{"text": fmt.Sprintf("call %d", i)})
		took := time.Since(start).Milliseconds()
		switch {
		case err != nil:
			out.Failed++
			failing++
			failedSince++
			log.Error().Err(err).Int("call", i).Int64("took_ms", took).Msg("tool call failed")
		case result.IsError:
			out.Failed++
			failing++
			failedSince++
			log.Error().Int("call", i).Int64("took_ms", took).Msg("tool reported an error")
		default:
			out.OK++
			okSince++
			// Info for the first success and the first after failures; the
			// rest at debug, with a summary a minute.
			ev := log.Debug()
			if i == 0 || failing > 0 {
				ev = log.Info().Int("after_failures", failing)
			}
			ev.Int("call", i).Str("tool", cfg.Tool).Int64("took_ms", took).Msg("tool call ok")
			failing = 0
		}
		if time.Since(summary) >= time.Minute {
			log.Info().Int("ok", okSince).Int("failed", failedSince).Int64("over_ms", time.Since(summary).Milliseconds()).Msg("tool calls in the last minute")
			summary, okSince, failedSince = time.Now(), 0, 0
		}
		if cfg.Calls != 0 && i == cfg.Calls-1 {
			break
		}
		select {
		case <-ctx.Done():
			out.Stats = stats.Snapshot()
			return out, nil
		case <-tick.C:
		}
	}
	out.Stats = stats.Snapshot()
	return out, nil
}

// EchoServer is a real MCP server (official Go SDK, streamable HTTP) with
// one tool, "echo", that returns its "text" argument. It can be stopped
// and started again on the same address, as a rolling deploy does.
type EchoServer struct {
	mu   sync.Mutex
	addr string
	srv  *http.Server
	mcp  *mcp.Server
	wg   sync.WaitGroup
}

type echoIn struct {
	Text string `json:"text" jsonschema:"the text to echo"`
}

type echoOut struct {
	Text string `json:"text"`
}

// NewEchoServer listens on addr ("127.0.0.1:0" picks a port) and serves.
func NewEchoServer(addr string) (*EchoServer, error) {
	e := &EchoServer{addr: addr}
	if err := e.Start(); err != nil {
		return nil, err
	}
	return e, nil
}

// URL is the MCP endpoint.
func (e *EchoServer) URL() string { return "http://" + e.addr + "/mcp" }

// Start serves again on the same address after Stop.
func (e *EchoServer) Start() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.srv != nil {
		return nil
	}
	ln, err := net.Listen("tcp", e.addr)
	if err != nil {
		return fmt.Errorf("demoagent: echo MCP server listen %s: %w", e.addr, err)
	}
	e.addr = ln.Addr().String()
	s := mcp.NewServer(&mcp.Implementation{Name: "tether-echo", Version: "0.1.0"}, nil)
	// echo has no side effects: annotated read-only, an agent may retry it
	// even after its request may have reached the server.
	mcp.AddTool(s, &mcp.Tool{Name: "echo", Description: "returns its text argument", Annotations: &mcp.ToolAnnotations{ReadOnlyHint: true}},
		func(_ context.Context, _ *mcp.CallToolRequest, in echoIn) (*mcp.CallToolResult, echoOut, error) {
			return nil, echoOut{Text: in.Text}, nil
		})
	h := mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return s }, nil)
	mux := http.NewServeMux()
	mux.Handle("/mcp", h)
	e.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	e.mcp = s
	e.wg.Add(1)
	go func(srv *http.Server) {
		defer e.wg.Done()
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			_ = err // the listener failed; Stop/Start recovers
		}
	}(e.srv)
	return nil
}

// Stop closes the server and every connection at once, as a killed pod does.
func (e *EchoServer) Stop() {
	e.mu.Lock()
	srv, ms := e.srv, e.mcp
	e.srv, e.mcp = nil, nil
	e.mu.Unlock()
	if srv == nil {
		return
	}
	_ = srv.Close()
	e.wg.Wait()
	// A killed pod forgets its sessions: close them so their goroutines end.
	for ss := range ms.Sessions() {
		_ = ss.Close()
	}
}
