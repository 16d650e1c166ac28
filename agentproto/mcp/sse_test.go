package mcp_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	sdk "github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/agentproto/mcp"
	"github.com/tether-dev/tether/kvconfig"
)

// The legacy SSE transport goes through the same transport wrapping
// (delivery tracking, requests ended with the session): calls run exactly
// once, health is recorded, and Close does not wait on the open stream.
func TestSSETransport(t *testing.T) {
	var execs execCounter
	s := newMCPServer("sse", nil, &execs)
	srv := httptest.NewServer(sdk.NewSSEHandler(func(*http.Request) *sdk.Server { return s }, nil))
	defer srv.Close()
	res := agentproto.Resolved{Server: "legacy", Key: "global.legacy", Revision: 1,
		Config: &kvconfig.ServerConfig{Transport: kvconfig.TransportSSE, URL: srv.URL}}
	var servers agentproto.ServerRegistry
	c, err := mcp.NewToolCaller(res, mcp.Options{Policy: fastPolicy(), ServerStats: servers.Get("legacy"), Logger: zerolog.New(zerolog.NewTestWriter(t))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, tool := range []string{"get", "set", "charge"} {
		if _, err := c.Call(ctx, tool, map[string]any{"id": "a"}); err != nil {
			t.Fatalf("%s over SSE: %v", tool, err)
		}
	}
	if execs.get("charge:a") != 1 || execs.get("set:a") != 1 {
		t.Fatal("calls over SSE did not run exactly once")
	}
	if got := servers.Snapshot()["legacy"]; got.OK != 3 || got.State != agentproto.ServerOK {
		t.Fatalf("server stats %+v", got)
	}
	start := time.Now()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("Close took %v with an SSE stream open", took)
	}
	if _, err := c.Call(ctx, "get", nil); !errors.Is(err, mcp.ErrClosed) {
		t.Fatalf("a call after Close: %v", err)
	}
}

// A session outlives its connect's bound on every transport: nothing of
// it is tied to the connect's context (the SSE transport keeps its event
// stream on the context it was connected with).
func TestSessionOutlivesConnectTimeout(t *testing.T) {
	var execs execCounter
	s := newMCPServer("sse", nil, &execs)
	sse := httptest.NewServer(sdk.NewSSEHandler(func(*http.Request) *sdk.Server { return s }, nil))
	defer sse.Close()
	h25 := startHTTPServer(t, "h25", []string{v20251125}, false)
	h26 := startHTTPServer(t, "h26", []string{v20260728}, false)
	for name, res := range map[string]agentproto.Resolved{
		"sse":   {Server: "x", Key: "global.x", Revision: 1, Config: &kvconfig.ServerConfig{Transport: kvconfig.TransportSSE, URL: sse.URL}},
		"http1": httpResolved("x", h25.URL(), 1),
		"http2": httpResolved("x", h26.URL(), 1),
		"stdio": stdioServer("x", "serve"),
	} {
		t.Run(name, func(t *testing.T) {
			var logs syncLog
			c, err := mcp.NewToolCaller(res, mcp.Options{Policy: fastPolicy(), AllowCommands: self, ConnectTimeout: 100 * time.Millisecond, Logger: zerolog.New(&logs)})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if _, err := c.Call(ctx, "get", map[string]any{"id": "a"}); err != nil {
				t.Fatal(err)
			}
			time.Sleep(300 * time.Millisecond) // the connect's 100 ms bound passes; the session must not care
			if _, err := c.Call(ctx, "charge", map[string]any{"id": "b"}); err != nil {
				t.Fatalf("a call after the connect bound passed: %v\n%s", err, logs.String())
			}
			if n := strings.Count(logs.String(), "mcp session connected"); n != 1 {
				t.Fatalf("%d connects, want the first session kept:\n%s", n, logs.String())
			}
		})
	}
}
