package test

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/internal/demoagent"
	"github.com/tether-dev/tether/internal/natstest"
	"github.com/tether-dev/tether/internal/suptest"
	"github.com/tether-dev/tether/supervisor"
)

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func startSupervisor(t *testing.T, srv *natstest.Server) *supervisor.Supervisor {
	t.Helper()
	return suptest.Start(t, suptest.Config(t, srv.URL()))
}

// TestMCPServerRestartDuringCalls is the article's rolling-deploy case: the
// agent resolves its MCP server's config from the supervisor and calls a
// tool on a real MCP server (official Go SDK, streamable HTTP); the server
// is stopped mid-run and started again on the same address; every call
// succeeds, and the retries are logged.
func TestMCPServerRestartDuringCalls(t *testing.T) {
	srv := natstest.RunServer(t)
	sup := startSupervisor(t, srv)
	echo, err := demoagent.NewEchoServer("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(echo.Stop)
	cfg := fmt.Sprintf(`{"transport":"http","url":%q,"timeout":"2s","retry":{"max_attempts":12,"base_delay":"20ms","max_delay":"200ms","jitter":0.3}}`, echo.URL())
	rev, err := sup.Buckets().Configs.Put(context.Background(), "global.echo", []byte(cfg))
	if err != nil {
		t.Fatal(err)
	}
	// The agent's first resolve must see the config: wait for the KV watch.
	natstest.CheckFor(t, 2*time.Second, time.Millisecond, func() error {
		if sup.Index().AsOf().Configs < rev {
			return fmt.Errorf("index at %d, want %d", sup.Index().AsOf().Configs, rev)
		}
		return nil
	})
	var logs syncBuffer
	log := zerolog.New(&logs)

	const calls = 40
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	done := make(chan struct{})
	var res demoagent.Result
	var runErr error
	go func() {
		defer close(done)
		res, runErr = demoagent.Run(ctx, demoagent.Config{NATSURL: srv.URL(), Agent: "a7", Calls: calls, Interval: 10 * time.Millisecond, Logger: log})
	}()
	// Wait for some calls to succeed, then restart the MCP server.
	natstest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if n := strings.Count(logs.String(), "mcp session connected"); n < 1 {
			return fmt.Errorf("no session yet")
		}
		return nil
	})
	echo.Stop()
	down := time.Now()
	natstest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if !strings.Contains(logs.String(), `"message":"retrying"`) && !strings.Contains(logs.String(), "retry") {
			return fmt.Errorf("no retry logged yet")
		}
		return nil
	})
	time.Sleep(150 * time.Millisecond) // the outage itself: the server stays down this long
	if err := echo.Start(); err != nil {
		t.Fatal(err)
	}
	t.Logf("MCP server down for %v", time.Since(down))
	select {
	case <-done:
	case <-ctx.Done():
		t.Fatal("agent did not finish")
	}
	if runErr != nil {
		t.Fatal(runErr)
	}
	if res.OK != calls || res.Failed != 0 {
		t.Fatalf("calls ok %d failed %d, want %d ok; logs:\n%s", res.OK, res.Failed, calls, logs.String())
	}
	// The demo agent says so when calls succeed: at info for the first,
	// then at debug (a line a call would drown everything else).
	infoOK := 0
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, `"message":"tool call ok"`) && strings.Contains(line, `"level":"info"`) {
			infoOK++
		}
	}
	if infoOK < 1 || infoOK > calls/4 {
		t.Errorf("%d info-level \"tool call ok\" lines for %d calls: want the first (and the first after a failure) only", infoOK, calls)
	}
	if res.Stats.Retried == 0 {
		t.Fatalf("no retries counted: %+v", res.Stats)
	}
	retryLines := 0
	for _, l := range strings.Split(logs.String(), "\n") {
		if strings.Contains(l, `"level":"warn"`) && strings.Contains(l, `"op":"tool echo"`) {
			retryLines++
		}
	}
	if uint64(retryLines) != res.Stats.Retried {
		t.Errorf("%d retry log lines for %d retries", retryLines, res.Stats.Retried)
	}
	if n := strings.Count(logs.String(), "mcp session connected"); n < 2 {
		t.Errorf("session not re-established (%d connects)", n)
	}
	t.Logf("through the restart: %d calls ok, %d retries, stats %+v", res.OK, res.Stats.Retried, res.Stats)
	_ = agentproto.ClassTransient
}
