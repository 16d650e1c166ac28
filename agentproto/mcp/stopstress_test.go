package mcp_test

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/agentproto/mcp"
)

// slowBind is the SDK server's slog handler; it sleeps on the line
// Server.bind logs after listing a new session in Sessions() and before
// connect stores it for its OnDone callback, widening that window from
// nanoseconds (where a 10-minute restart loop hit it at random) to a
// millisecond.
type slowBind struct{ d time.Duration }

func (h slowBind) Enabled(context.Context, slog.Level) bool { return true }
func (h slowBind) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h slowBind) WithGroup(string) slog.Handler            { return h }
func (h slowBind) Handle(_ context.Context, r slog.Record) error {
	if r.Message == "server session connected" {
		time.Sleep(h.d)
	}
	return nil
}

// The test server is stopped while its handlers are connecting sessions
// (every request connects one at 2026-07-28). stop must not close a
// session the SDK is still binding: that ran Server.disconnect(nil),
// which panics in ServerSession.ID (go-sdk v1.8.0 mcp/transport.go
// connect's OnDone, mcp/server.go disconnect).
func TestHTTPServerStopDuringConnects(t *testing.T) {
	srv := &httpServer{t: t, name: "echo", versions: []string{v20260728}, addr: "127.0.0.1:0",
		logger: slog.New(slowBind{d: time.Millisecond})}
	if err := srv.start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.stop)
	p := agentproto.Policy{MaxAttempts: 1}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var callers []*mcp.ToolCaller
	defer func() {
		for _, c := range callers {
			_ = c.Close()
		}
	}()
	for w := range 4 {
		c, err := mcp.NewToolCaller(httpResolved("echo", srv.URL(), 1), mcp.Options{Policy: &p})
		if err != nil {
			t.Fatal(err)
		}
		callers = append(callers, c)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				_, _ = c.Call(ctx, "get", map[string]any{"id": fmt.Sprintf("w%d-%d", w, i)})
			}
		}()
	}
	began := time.Now()
	stops := 0
	for ; stops < 300 && time.Since(began) < 10*time.Second; stops++ {
		natstestCheck(t, func() error { // a connect is binding, or about to
			if srv.calls.Load() == 0 {
				return fmt.Errorf("no call reached the server yet")
			}
			return nil
		})
		srv.calls.Store(0)
		srv.stop()
		if err := srv.start(); err != nil {
			t.Fatal(err)
		}
	}
	cancel()
	wg.Wait()
	t.Logf("%d stops in %v with connects in progress", stops, time.Since(began).Round(time.Millisecond))
}
