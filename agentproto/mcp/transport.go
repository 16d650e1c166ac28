package mcp

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"sync/atomic"
	"time"

	sdk "github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/kvconfig"
)

// stdioTerminate is how long closing a stdio session waits for the
// process to exit after closing its stdin, before SIGTERM.
const stdioTerminate = 2 * time.Second

// transport builds the SDK transport of g's config. Every HTTP request
// goes through a deliveryTransport and ends with life (the session's); a
// stdio server is started with exactly
// the config's env.
func (t *ToolCaller) transport(g *generation, life context.Context) (sdk.Transport, error) {
	res, cfg := g.res, g.res.Config
	hc := &http.Client{Transport: deliveryTransport{headers: cfg.Headers, next: t.http, fresh: t.fresh, done: life}}
	switch cfg.Transport {
	case kvconfig.TransportHTTP:
		return &sdk.StreamableClientTransport{Endpoint: cfg.URL, HTTPClient: hc, MaxRetries: -1, DisableStandaloneSSE: true}, nil
	case kvconfig.TransportSSE:
		return lifeBound{inner: &sdk.SSEClientTransport{Endpoint: cfg.URL, HTTPClient: hc}, life: life}, nil
	case kvconfig.TransportStdio:
		if err := agentproto.CheckCommand(cfg, t.opts.AllowCommands, res.Server, res.Key, res.Revision); err != nil {
			return nil, agentproto.MarkPermanent(err) // checked in Swap too: never start what is not allowed
		}
		cmd := exec.Command(cfg.Command, cfg.Args...)
		cmd.Env = make([]string, 0, len(cfg.Env)) // only the config's env, never the agent's
		for k, v := range cfg.Env {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
		return trackedTransport{&sdk.CommandTransport{Command: cmd, TerminateDuration: stdioTerminate}}, nil
	}
	return nil, agentproto.MarkPermanent(fmt.Errorf("%w: MCP server %s: unknown transport %q", agentproto.ErrMCPConfig, res.Server, kvconfig.Truncate(cfg.Transport, 40)))
}

// httpTransport is the caller's own connection pool (closed by Close),
// with dials bounded by dialTimeout.
// keepAlive false makes the pool of fresh connections, one per request.
func httpTransport(dialTimeout time.Duration, keepAlive bool) *http.Transport {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	d := &net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}
	tr.DialContext = d.DialContext
	tr.DisableKeepAlives = !keepAlive
	return tr
}

// lifeBound connects a transport whose connection keeps the context it
// was connected with (the SSE transport's event stream) with the
// session's life instead of the connect's bounded context, which ends
// once the connect is done; the connect's bound still applies while it
// runs.
type lifeBound struct {
	inner sdk.Transport
	life  context.Context
}

func (l lifeBound) Connect(ctx context.Context) (sdk.Connection, error) {
	cctx, cancel := context.WithCancel(l.life)
	var finished atomic.Bool
	stop := context.AfterFunc(ctx, func() {
		if !finished.Load() {
			cancel() // the connect's bound passed while connecting
		}
	})
	defer stop()
	c, err := l.inner.Connect(cctx)
	finished.Store(true)
	if err != nil {
		cancel()
		return nil, err
	}
	return cancelOnClose{Connection: c, cancel: cancel}, nil
}

// cancelOnClose ends a lifeBound connection's context when it closes.
type cancelOnClose struct {
	sdk.Connection
	cancel context.CancelFunc
}

func (c cancelOnClose) Close() error {
	err := c.Connection.Close()
	c.cancel()
	return err
}
