package mcp_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/agentproto/mcp"
)

const cutTrials = 1000

func fastPolicy() *agentproto.Policy {
	return &agentproto.Policy{MaxAttempts: 4, BaseDelay: time.Millisecond, MaxDelay: 2 * time.Millisecond}
}

// The duplicate-side-effect test: the connection is cut right
// after a tools/call request was written to the server, cutTrials times
// for a tool that is not idempotent and cutTrials times for one the
// server annotates idempotentHint, at each protocol version. The first
// is never retried: every call fails with OutcomeUnknown naming the tool
// and attempt 1, and the proxy saw exactly one request per call (0
// duplicate executions). The second is retried: every call succeeds, the
// server having seen exactly two requests, the second re-issued with a new
// JSON-RPC id (2026-07-28 has no resumption: a broken stream loses the
// request).
func TestCutAfterRequestWritten(t *testing.T) {
	for _, v := range versions {
		t.Run(v, func(t *testing.T) {
			start := time.Now()
			srv := startHTTPServer(t, "pay", []string{v}, false)
			cutTrialsAgainst(t, srv, newCutProxy(t, srv.URL()[len("http://"):len(srv.URL())-len("/mcp")], false), cutTrials/len(versions))
			t.Logf("%s: %d trials per tool in %v", v, cutTrials/len(versions), time.Since(start))
		})
	}
}

// The same with the cut when the server starts answering: the tool has
// run (JSON responses are written once it has), so the count shows the
// non-idempotent tool ran exactly once per call, and the idempotent one
// twice.
func TestCutAfterToolRan(t *testing.T) {
	const trials = 200
	srv := startHTTPServer(t, "pay", []string{v20251125}, true)
	proxy := newCutProxy(t, srv.URL()[len("http://"):len(srv.URL())-len("/mcp")], true)
	cutTrialsAgainst(t, srv, proxy, trials)
	for i := range trials {
		if n := srv.execs.get(fmt.Sprintf("charge:c%d", i)); n != 1 {
			t.Fatalf("charge c%d ran %d times, want exactly once", i, n)
		}
		if n := srv.execs.get(fmt.Sprintf("set:s%d", i)); n != 2 {
			t.Fatalf("set s%d ran %d times, want twice (cut, then retried)", i, n)
		}
	}
}

func cutTrialsAgainst(t *testing.T, srv *httpServer, proxy *cutProxy, trials int) {
	t.Helper()
	var servers agentproto.ServerRegistry
	c, err := mcp.NewToolCaller(httpResolved("pay", proxy.URL(), 1), mcp.Options{Policy: fastPolicy(),
		ServerStats: servers.Get("pay"), Logger: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.FatalLevel)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := c.Call(ctx, "get", map[string]any{"id": "warmup"}); err != nil {
		t.Fatal(err)
	}
	for i := range trials {
		id := fmt.Sprintf("c%d", i)
		proxy.arm(1)
		_, err := c.Call(ctx, "charge", map[string]any{"id": id})
		var ou *mcp.OutcomeUnknownError
		if !errors.As(err, &ou) || !errors.Is(err, mcp.ErrOutcomeUnknown) || ou.Tool != "charge" || ou.Attempt != 1 || ou.Server != "pay" {
			t.Fatalf("trial %d: charge after a cut: %v, want an OutcomeUnknownError for charge, attempt 1 (requests %d, cuts %d, armed %d)", i, err, proxy.requests.get(id), proxy.cuts.Load(), proxy.armed.Load())
		}
		if n := proxy.requests.get(id); n != 1 {
			t.Fatalf("trial %d: charge %s reached the server %d times, want once", i, id, n)
		}
	}
	for i := range trials {
		id := fmt.Sprintf("s%d", i)
		proxy.arm(1)
		if _, err := c.Call(ctx, "set", map[string]any{"id": id}); err != nil {
			t.Fatalf("trial %d: set after a cut: %v, want a success after a retry", i, err)
		}
		if n := proxy.requests.get(id); n != 2 {
			t.Fatalf("trial %d: set %s reached the server %d times, want twice", i, id, n)
		}
		if ids := proxy.rpcIDsOf(id); len(ids) != 2 || ids[0] == ids[1] {
			t.Fatalf("trial %d: set %s re-issued with JSON-RPC ids %v, want a new id", i, id, ids)
		}
	}
	if d := srv.execs.dupes(); len(dupesOf(d, "charge:")) != 0 {
		t.Fatalf("duplicate executions of charge: %v", dupesOf(d, "charge:"))
	}
	if got := proxy.cuts.Load(); got != int64(2*trials) {
		t.Fatalf("%d cuts, want %d", got, 2*trials)
	}
	got := servers.Snapshot()["pay"]
	if got.OutcomeUnknown != uint64(trials) || got.Failed != uint64(trials) || got.OK != uint64(trials+1) || got.Retried != uint64(trials) {
		t.Fatalf("server stats %+v, want %d outcome_unknown/failed, %d ok, %d retried", got, trials, trials+1, trials)
	}
}

func dupesOf(ids []string, prefix string) []string {
	var out []string
	for _, id := range ids {
		if len(id) >= len(prefix) && id[:len(prefix)] == prefix {
			out = append(out, id)
		}
	}
	return out
}

// A call to a tool not known to be idempotent goes on a new connection
// (never on a kept-alive one the server may have just closed, whose EOF
// would look like a crash mid-call); idempotent ones reuse connections.
func TestUnsafeCallsUseFreshConnections(t *testing.T) {
	srv := startHTTPServer(t, "pay", []string{v20251125}, false)
	proxy := newCutProxy(t, srv.URL()[len("http://"):len(srv.URL())-len("/mcp")], false)
	c, err := mcp.NewToolCaller(httpResolved("pay", proxy.URL(), 1), mcp.Options{Policy: fastPolicy(), Logger: zerolog.New(zerolog.NewTestWriter(t))})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Call(ctx, "set", map[string]any{"id": "warm"}); err != nil {
		t.Fatal(err)
	}
	base := proxy.links.Load()
	for i := range 20 {
		if _, err := c.Call(ctx, "set", map[string]any{"id": fmt.Sprint("s", i)}); err != nil {
			t.Fatal(err)
		}
	}
	// The SDK may still be closing the previous response stream when the
	// next call starts: the pool may grow by one or two, not by one a call.
	if n := proxy.links.Load() - base; n > 2 {
		t.Fatalf("20 idempotent calls opened %d connections, want them kept alive", n)
	}
	base = proxy.links.Load()
	for i := range 5 {
		if _, err := c.Call(ctx, "charge", map[string]any{"id": fmt.Sprint("c", i)}); err != nil {
			t.Fatal(err)
		}
	}
	if n := proxy.links.Load() - base; n != 5 {
		t.Fatalf("5 calls to a tool that is not idempotent opened %d connections, want 5", n)
	}
}
