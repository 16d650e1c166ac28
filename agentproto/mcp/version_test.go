package mcp_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/agentproto/mcp"
)

// A server restarted with another protocol version: the session was
// made at 2026-07-28 with a stateless server, which comes back as a
// stateful 2025-11-25-only server and rejects the old version with
// -32022. The caller renegotiates once (a new session, at 2025-11-25) and
// the call, which did not run, succeeds without a retry.
func TestProtocolVersionRenegotiatedOnce(t *testing.T) {
	srv := startHTTPServer(t, "echo", []string{v20260728}, false)
	var logs syncLog
	var servers agentproto.ServerRegistry
	c, err := mcp.NewToolCaller(httpResolved("echo", srv.URL(), 1), mcp.Options{Policy: fastPolicy(), ServerStats: servers.Get("echo"), Logger: zerolog.New(&logs)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Call(ctx, "charge", map[string]any{"id": "a"}); err != nil {
		t.Fatal(err)
	}
	srv.stop()
	srv.versions = []string{v20251125}
	if err := srv.start(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Call(ctx, "charge", map[string]any{"id": "b"}); err != nil {
		t.Fatalf("call after the server dropped 2026-07-28: %v\n%s", err, logs.String())
	}
	if n := srv.execs.get("charge:b"); n != 1 {
		t.Fatalf("charge b ran %d times", n)
	}
	if got := servers.Snapshot()["echo"]; got.Retried != 0 || got.OK != 2 {
		t.Fatalf("server stats %+v, want 2 ok, no retry", got)
	}
	if !logs.contains("renegotiating once") || !logs.contains(`"protocol":"2025-11-25"`) {
		t.Fatalf("no renegotiation to 2025-11-25 logged:\n%s", logs.String())
	}
}

// -32022 again after the renegotiation is permanent: exactly two
// tools/call requests reach the server, the call fails at once with
// agentproto.ErrMCPProtocolVersion, labelled protocol_version.
func TestProtocolVersionPermanentAfterOneRenegotiation(t *testing.T) {
	srv := startHTTPServer(t, "echo", []string{v20260728}, false)
	var servers agentproto.ServerRegistry
	c, err := mcp.NewToolCaller(httpResolved("echo", srv.URL(), 1), mcp.Options{Policy: fastPolicy(), ServerStats: servers.Get("echo"), Logger: zerolog.New(zerolog.NewTestWriter(t))})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	srv.rejectVersion.Store(true)
	_, err = c.Call(ctx, "set", map[string]any{"id": "a"})
	if !errors.Is(err, agentproto.ErrMCPProtocolVersion) || agentproto.Classify(err) != agentproto.ClassPermanent {
		t.Fatalf("call: %v, want a permanent ErrMCPProtocolVersion", err)
	}
	if n := srv.calls.Load(); n != 2 {
		t.Fatalf("%d tools/call requests, want 2 (the call and one after renegotiating)", n)
	}
	if got := servers.Snapshot()["echo"]; got.LastFailure != agentproto.FailureProtocolVersion || got.Failed != 1 || got.Retried != 0 {
		t.Fatalf("server stats %+v", got)
	}
	if !strings.Contains(err.Error(), "after renegotiating") {
		t.Fatalf("error does not say it renegotiated: %v", err)
	}
}

// A tool the config lists in idempotent_tools is retried after a cut
// like an annotated one; the same tool without the listing is not.
func TestConfigIdempotentTools(t *testing.T) {
	srv := startHTTPServer(t, "pay", nil, false)
	proxy := newCutProxy(t, strings.TrimSuffix(strings.TrimPrefix(srv.URL(), "http://"), "/mcp"), false)
	res := httpResolved("pay", proxy.URL(), 1)
	c, err := mcp.NewToolCaller(res, mcp.Options{Policy: fastPolicy(), Logger: zerolog.New(zerolog.NewTestWriter(t))})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	proxy.arm(1)
	if _, err := c.Call(ctx, "charge", map[string]any{"id": "a"}); !errors.Is(err, mcp.ErrOutcomeUnknown) {
		t.Fatalf("charge not listed: %v, want OutcomeUnknown", err)
	}
	res.Config.IdempotentTools = []string{"charge"}
	res.Revision = 2
	if err := c.Swap(res); err != nil {
		t.Fatal(err)
	}
	proxy.arm(1)
	if _, err := c.Call(ctx, "charge", map[string]any{"id": "b"}); err != nil {
		t.Fatalf("charge listed in idempotent_tools: %v, want a success after a retry", err)
	}
	if n := proxy.requests.get("b"); n != 2 {
		t.Fatalf("charge b reached the server %d times, want 2", n)
	}
}
