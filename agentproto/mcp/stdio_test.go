package mcp_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/agentproto/mcp"
	"github.com/tether-dev/tether/internal/natstest"
)

var self = []string{os.Args[0]} // the stdio server is this test binary

// A stdio server that exits mid-call: the call (to a tool that is not
// idempotent) fails OutcomeUnknown, labelled; the process is restarted
// after the restart backoff and the next call succeeds on it.
func TestStdioServerRestartedAfterExit(t *testing.T) {
	var servers agentproto.ServerRegistry
	rp := mcp.RestartPolicy{BaseDelay: 20 * time.Millisecond, MaxDelay: 100 * time.Millisecond}
	c, err := mcp.NewToolCaller(stdioServer("local", "serve"), mcp.Options{Policy: fastPolicy(), AllowCommands: self, Restart: rp,
		ServerStats: servers.Get("local"), Logger: zerolog.New(zerolog.NewTestWriter(t))})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := c.Call(ctx, "set", map[string]any{"id": "a"}); err != nil {
		t.Fatal(err)
	}
	start := time.Now() // the process exits during the next call
	_, err = c.Call(ctx, "die", map[string]any{"id": "b"})
	var ou *mcp.OutcomeUnknownError
	if !errors.As(err, &ou) || !errors.Is(err, agentproto.ErrMCPProcessExited) {
		t.Fatalf("a call whose process exited: %v, want OutcomeUnknown over process exited", err)
	}
	if _, err := c.Call(ctx, "set", map[string]any{"id": "c"}); err != nil {
		t.Fatalf("the call after the exit: %v", err)
	}
	if took := time.Since(start); took < rp.BaseDelay {
		t.Fatalf("restarted after %v, before the %v backoff", took, rp.BaseDelay)
	}
	got := servers.Snapshot()["local"]
	if got.Restarts != 1 || got.State != agentproto.ServerOK || got.OutcomeUnknown != 1 || got.OK != 2 {
		t.Fatalf("server stats %+v, want 1 restart, 2 ok, 1 outcome unknown", got)
	}
}

// A crash-looping stdio server is quarantined after MaxRestarts restarts
// (waiting the doubling backoff between them), after which calls fail
// fast; a healthy server's calls, made all along on their own caller,
// are not slowed (their latency is compared with a run before the loop).
func TestStdioCrashLoopQuarantined(t *testing.T) {
	healthy := startHTTPServer(t, "echo", nil, false)
	hc, err := mcp.NewToolCaller(httpResolved("echo", healthy.URL(), 1), mcp.Options{Policy: fastPolicy()})
	if err != nil {
		t.Fatal(err)
	}
	defer hc.Close()
	var servers agentproto.ServerRegistry
	rp := mcp.RestartPolicy{BaseDelay: 10 * time.Millisecond, MaxDelay: 40 * time.Millisecond, MaxRestarts: 3, Window: time.Minute, StableAfter: time.Minute, QuarantineFor: time.Hour}
	p := agentproto.Policy{MaxAttempts: 1}
	c, err := mcp.NewToolCaller(stdioServer("flaky", "crash"), mcp.Options{Policy: &p, AllowCommands: self, Restart: rp,
		ServerStats: servers.Get("flaky"), Logger: zerolog.New(zerolog.NewTestWriter(t))})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	measure := func(n int) []time.Duration {
		ds := make([]time.Duration, 0, n)
		for i := range n {
			start := time.Now()
			if _, err := hc.Call(ctx, "get", map[string]any{"id": fmt.Sprint(i)}); err != nil {
				t.Errorf("healthy call: %v", err)
				return ds
			}
			ds = append(ds, time.Since(start))
		}
		return ds
	}
	before := measure(200)
	var during []time.Duration
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			during = append(during, measure(10)...)
		}
	}()
	start := time.Now()
	var last error
	calls := 0
	for ; calls < 50 && !errors.Is(last, mcp.ErrQuarantined); calls++ {
		_, last = c.Call(ctx, "get", map[string]any{"id": "x"})
	}
	looped := time.Since(start)
	close(stop)
	wg.Wait()
	if !errors.Is(last, mcp.ErrQuarantined) {
		t.Fatalf("after %d calls: %v, want ErrQuarantined", calls, last)
	}
	got := servers.Snapshot()["flaky"]
	if got.State != agentproto.ServerQuarantined || got.Restarts != 3 || got.LastFailure != agentproto.FailureQuarantined {
		t.Fatalf("server stats %+v, want quarantined after 3 restarts", got)
	}
	if min := 10*time.Millisecond + 20*time.Millisecond + 40*time.Millisecond; looped < min {
		t.Fatalf("quarantined after %v: the restarts did not wait their backoff (%v in all)", looped, min)
	}
	fast := time.Now()
	if _, err := c.Call(ctx, "get", map[string]any{"id": "y"}); !errors.Is(err, mcp.ErrQuarantined) || time.Since(fast) > 50*time.Millisecond {
		t.Fatalf("a call while quarantined: %v after %v, want ErrQuarantined at once", err, time.Since(fast))
	}
	if again := servers.Snapshot()["flaky"]; again.Restarts != 3 {
		t.Fatalf("a quarantined server was started again: %+v", again)
	}
	b50, b99 := percentile(before, 0.5), percentile(before, 0.99)
	d50, d99 := percentile(during, 0.5), percentile(during, 0.99)
	t.Logf("crash loop: %d calls, quarantined after %v; healthy server calls before p50 %v p99 %v, during the loop (%d calls) p50 %v p99 %v",
		calls, looped.Round(time.Millisecond), b50, b99, len(during), d50, d99)
	if len(during) == 0 || d99 > 10*b99+50*time.Millisecond {
		t.Fatalf("healthy calls slowed by the crash loop: p99 %v vs %v before", d99, b99)
	}
}

// Issue 15's config swap for stdio: a call is running on the old process
// when the config changes; it completes there, the next call goes to a
// new process, and the old process is let go of (its stdin closed) only
// after its call finished: never two sessions on one process.
func TestStdioConfigChangeMidCall(t *testing.T) {
	dir := t.TempDir()
	res := stdioServer("local", "serve")
	res.Config.Env["TETHER_MCP_TEST_NAME"], res.Config.Env["TETHER_MCP_TEST_DIR"] = "old", dir
	c, err := mcp.NewToolCaller(res, mcp.Options{Policy: fastPolicy(), AllowCommands: self, Logger: zerolog.New(zerolog.NewTestWriter(t))})
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
	began := make(chan struct{})
	go func() {
		close(began)
		r, err := c.Call(ctx, "slow", map[string]any{"id": "long", "ms": 400})
		if err != nil {
			inflight <- "error: " + err.Error()
			return
		}
		inflight <- serverOf(t, r.StructuredContent)
	}()
	<-began
	natstestCheck(t, func() error {
		if _, err := os.Stat(dir + "/old.slow"); err != nil {
			return fmt.Errorf("the old process is not running the slow call yet: %v", err)
		}
		return nil
	})
	next := stdioServer("local", "serve")
	next.Config.Env["TETHER_MCP_TEST_NAME"], next.Config.Env["TETHER_MCP_TEST_DIR"], next.Revision = "new", dir, 2
	if err := c.Swap(next); err != nil {
		t.Fatal(err)
	}
	r, err := c.Call(ctx, "charge", map[string]any{"id": "next"})
	if err != nil {
		t.Fatalf("the call after the swap: %v", err)
	}
	if got := serverOf(t, r.StructuredContent); got != "new" {
		t.Fatalf("the call after the swap ran on %q, want the new process", got)
	}
	if _, err := os.Stat(dir + "/old.exited"); err == nil {
		t.Fatal("the old process was let go of while its call was running")
	}
	if got := <-inflight; got != "old" {
		t.Fatalf("the in-flight call: %s, want it completed on the old process", got)
	}
	natstestCheck(t, func() error {
		if _, err := os.Stat(dir + "/old.exited"); err != nil {
			return fmt.Errorf("the old process has not been let go of: %v", err)
		}
		return nil
	})
}

// A timeout after the request was written is "may have run": a tool not
// known to be idempotent fails OutcomeUnknown over the deadline, once.
func TestTimeoutAfterWriteIsOutcomeUnknown(t *testing.T) {
	srv := startHTTPServer(t, "echo", nil, false)
	res := httpResolved("echo", srv.URL(), 1)
	res.Config.Timeout = 100 * 1e6 // 100ms
	c, err := mcp.NewToolCaller(res, mcp.Options{Logger: zerolog.New(zerolog.NewTestWriter(t))})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Call(ctx, "get", map[string]any{"id": "warm"}); err != nil {
		t.Fatal(err)
	}
	_, err = c.Call(ctx, "slow", map[string]any{"id": "s", "ms": 1000})
	var ou *mcp.OutcomeUnknownError
	if !errors.As(err, &ou) || !errors.Is(err, context.DeadlineExceeded) || ou.Attempt != 1 {
		t.Fatalf("a call that timed out after its request was written: %v, want OutcomeUnknown over the deadline", err)
	}
	if n := srv.calls.Load(); n != 2 {
		t.Fatalf("%d tools/call requests, want 2 (warm-up and the one that timed out, not retried)", n)
	}
}

func natstestCheck(t *testing.T, fn func() error) {
	t.Helper()
	natstest.CheckFor(t, 5*time.Second, 5*time.Millisecond, fn)
}
