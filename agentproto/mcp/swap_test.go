package mcp_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/agentproto/mcp"
	"github.com/tether-dev/tether/internal/natstest"
)

// hungListener accepts TCP connections and never answers (a wedged MCP
// server): a connect to it hangs until its timeout.
type hungListener struct {
	ln       net.Listener
	accepted atomic.Int64
	mu       sync.Mutex
	conns    []net.Conn
	done     chan struct{}
}

func newHungListener(t testing.TB) *hungListener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := &hungListener{ln: ln, done: make(chan struct{})}
	go func() {
		defer close(h.done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			h.mu.Lock()
			h.conns = append(h.conns, c)
			h.mu.Unlock()
			h.accepted.Add(1)
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		<-h.done
		h.mu.Lock()
		for _, c := range h.conns {
			_ = c.Close()
		}
		h.mu.Unlock()
	})
	return h
}

func (h *hungListener) URL() string { return "http://" + h.ln.Addr().String() + "/mcp" }

// The blocking bug: a connect to a server that accepts and never
// answers must not hold anything Swap needs. Swap returns at once while
// the connect hangs, the hung connect is given up on, and the call that
// was waiting for it goes on to the new server and succeeds.
func TestHungConnectDoesNotBlockSwap(t *testing.T) {
	hung := newHungListener(t)
	good := startHTTPServer(t, "echo", nil, false)
	c, err := mcp.NewToolCaller(httpResolved("echo", hung.URL(), 1), mcp.Options{Policy: fastPolicy(),
		ConnectTimeout: time.Minute, Logger: zerolog.New(zerolog.NewTestWriter(t))})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	first := make(chan error, 1)
	go func() {
		_, err := c.Call(ctx, "get", map[string]any{"id": "first"})
		first <- err
	}()
	natstest.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		if hung.accepted.Load() == 0 {
			return errors.New("the connect has not reached the hung server yet")
		}
		return nil
	})
	swapped := make(chan error, 1)
	start := time.Now()
	go func() { swapped <- c.Swap(httpResolved("echo", good.URL(), 2)) }()
	select {
	case err := <-swapped:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Swap blocked behind a hung connect")
	}
	t.Logf("Swap returned in %v while a connect hung", time.Since(start))
	if _, err := c.Call(ctx, "get", map[string]any{"id": "second"}); err != nil {
		t.Fatalf("a call after the swap: %v", err)
	}
	select {
	case err := <-first:
		if err != nil {
			t.Fatalf("the call that waited for the hung connect: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the call that waited for the hung connect never ended")
	}
	if good.execs.get("get:first") != 1 || good.execs.get("get:second") != 1 {
		t.Fatal("calls did not reach the new server")
	}
}

// A hung connect is bounded by the config's timeout: the call that waits
// for it fails in about that time, not with the caller's much longer ctx.
func TestConnectBoundedByConfigTimeout(t *testing.T) {
	hung := newHungListener(t)
	res := httpResolved("echo", hung.URL(), 1)
	res.Config.Timeout = 150 * 1e6 // 150ms
	p := agentproto.Policy{MaxAttempts: 1}
	c, err := mcp.NewToolCaller(res, mcp.Options{Policy: &p, Logger: zerolog.New(zerolog.NewTestWriter(t))})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	_, err = c.Call(ctx, "get", map[string]any{"id": "x"})
	took := time.Since(start)
	if err == nil || took > 2*time.Second {
		t.Fatalf("call to a hung server: %v after %v, want a failure after about 150ms", err, took)
	}
	if k := mcp.FailureKind(err); k != agentproto.FailureTimeout {
		t.Fatalf("failure kind %q, want timeout (%v)", k, err)
	}
	t.Logf("connect gave up after %v: %v", took, err)
}

// Issue 15's config swap: a call is running on the old server when the
// config changes; it completes there, the next call goes to the new
// server, no call fails, and the old session is closed once drained.
func TestConfigChangeMidCall(t *testing.T) {
	oldSrv := startHTTPServer(t, "old", nil, false)
	newSrv := startHTTPServer(t, "new", nil, false)
	var logs syncLog
	c, err := mcp.NewToolCaller(httpResolved("echo", oldSrv.URL(), 1), mcp.Options{Policy: fastPolicy(), Logger: zerolog.New(&logs)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := c.Call(ctx, "get", map[string]any{"id": "warm"}); err != nil {
		t.Fatal(err)
	}
	inflight := make(chan string, 1)
	go func() {
		res, err := c.Call(ctx, "slow", map[string]any{"id": "long", "ms": 300})
		if err != nil {
			inflight <- "error: " + err.Error()
			return
		}
		inflight <- serverOf(t, res.StructuredContent)
	}()
	natstest.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		if !oldSrv.calling("slow") {
			return errors.New("the slow call has not started yet")
		}
		return nil
	})
	if err := c.Swap(httpResolved("echo", newSrv.URL(), 2)); err != nil {
		t.Fatal(err)
	}
	res, err := c.Call(ctx, "charge", map[string]any{"id": "next"})
	if err != nil {
		t.Fatalf("the call after the swap: %v", err)
	}
	if got := serverOf(t, res.StructuredContent); got != "new" {
		t.Fatalf("the call after the swap ran on %q, want new", got)
	}
	if got := <-inflight; got != "old" {
		t.Fatalf("the in-flight call: %s, want it completed on the old server", got)
	}
	natstest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if !logs.contains(`"reason":"config changed"`) {
			return errors.New("old session not closed yet")
		}
		return nil
	})
	if oldSrv.execs.get("charge:next") != 0 || newSrv.execs.get("slow:long") != 0 {
		t.Fatal("a call ran on the wrong server")
	}
}

func serverOf(t *testing.T, v any) string {
	b, _ := json.Marshal(v)
	var out struct {
		Server string `json:"server"`
	}
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	return out.Server
}

// A call its caller cancels says nothing about the server: the
// heartbeat's entry stays "ok" and counts no failure.
func TestCallerCancelLeavesServerHealth(t *testing.T) {
	srv := startHTTPServer(t, "echo", nil, false)
	var servers agentproto.ServerRegistry
	c, err := mcp.NewToolCaller(httpResolved("echo", srv.URL(), 1), mcp.Options{Policy: fastPolicy(), ServerStats: servers.Get("echo"), Logger: zerolog.New(zerolog.NewTestWriter(t))})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Call(context.Background(), "get", map[string]any{"id": "a"}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		natstest.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
			if !srv.calling("slow") {
				return errors.New("not running yet")
			}
			return nil
		})
		cancel()
	}()
	if _, err := c.Call(ctx, "slow", map[string]any{"id": "b", "ms": 5000}); !errors.Is(err, context.Canceled) {
		t.Fatalf("a cancelled call: %v", err)
	}
	if got := servers.Snapshot()["echo"]; got.State != agentproto.ServerOK || got.Failed != 0 || got.LastFailure != "" {
		t.Fatalf("server stats %+v after the caller cancelled: want still ok, no failure", got)
	}
	natstest.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		if srv.cancels.Load() == 0 || srv.calling("slow") {
			return fmt.Errorf("the server got %d cancellations and is still running the call: %v", srv.cancels.Load(), srv.calling("slow"))
		}
		return nil
	})
}
