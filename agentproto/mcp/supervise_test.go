package mcp_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/agentproto/mcp"
	"go.uber.org/goleak"
)

// superviseCase is a stdio server whose processes record their starts in
// dir (name.started.<pid>), with its caller and the server's stats.
type superviseCase struct {
	dir     string
	res     agentproto.Resolved
	servers agentproto.ServerRegistry
	log     syncLog
	c       *mcp.ToolCaller
}

func newSuperviseCase(t *testing.T, mode string, rp mcp.RestartPolicy, p *agentproto.Policy) *superviseCase {
	t.Helper()
	sc := &superviseCase{dir: t.TempDir()}
	res := stdioServer("local", mode)
	res.Config.Env["TETHER_MCP_TEST_NAME"], res.Config.Env["TETHER_MCP_TEST_DIR"] = "local", sc.dir
	c, err := mcp.NewToolCaller(res, mcp.Options{Policy: p, AllowCommands: self, Restart: rp,
		ServerStats: sc.servers.Get("local"), Logger: zerolog.New(zerolog.MultiLevelWriter(&sc.log, zerolog.NewTestWriter(t)))})
	if err != nil {
		t.Fatal(err)
	}
	sc.c, sc.res = c, res
	return sc
}

// pids returns the processes started so far, in no particular order.
func (sc *superviseCase) pids(t *testing.T) []int {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(sc.dir, "local.started.*"))
	if err != nil {
		t.Fatal(err)
	}
	out := make([]int, 0, len(files))
	for _, f := range files {
		pid, err := strconv.Atoi(f[strings.LastIndexByte(f, '.')+1:])
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, pid)
	}
	return out
}

func (sc *superviseCase) stats() agentproto.ServerCalls { return sc.servers.Snapshot()["local"] }

// killOnly kills the one process started so far, as an OOM killer would.
func (sc *superviseCase) killOnly(t *testing.T) int {
	t.Helper()
	pids := sc.pids(t)
	if len(pids) != 1 {
		t.Fatalf("%d processes started, want 1", len(pids))
	}
	if err := syscall.Kill(pids[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	return pids[0]
}

// A stdio server killed between calls is restarted by itself after the
// backoff, with no call made; the next call runs on that process (no
// further start) and the heartbeat entry counts the restart.
func TestStdioServerRestartedWithoutCall(t *testing.T) {
	rp := mcp.RestartPolicy{BaseDelay: 50 * time.Millisecond, MaxDelay: 200 * time.Millisecond}
	sc := newSuperviseCase(t, "serve", rp, fastPolicy())
	defer sc.c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	first := time.Now()
	if _, err := sc.c.Call(ctx, "get", map[string]any{"id": "warm"}); err != nil {
		t.Fatal(err)
	}
	cold := time.Since(first)
	killed := time.Now()
	old := sc.killOnly(t)
	var restarted time.Duration
	natstestCheck(t, func() error {
		if n := strings.Count(sc.log.String(), `"message":"mcp session connected"`); n != 2 {
			return fmt.Errorf("%d sessions connected, want 2 (the restarted process): stats %+v", n, sc.stats())
		}
		restarted = time.Since(killed)
		return nil
	})
	if restarted < rp.BaseDelay {
		t.Fatalf("restarted %v after the kill, before the %v backoff", restarted, rp.BaseDelay)
	}
	if got := sc.stats(); got.Restarts != 1 || got.State != agentproto.ServerOK || got.OK != 1 {
		t.Fatalf("server stats after the restart %+v, want 1 restart, state ok, 1 call", got)
	}
	began := time.Now()
	if _, err := sc.c.Call(ctx, "charge", map[string]any{"id": "after"}); err != nil {
		t.Fatalf("the call after the restart: %v", err)
	}
	warm := time.Since(began)
	pids := sc.pids(t)
	if len(pids) != 2 || sc.stats().Restarts != 1 {
		t.Fatalf("processes %v (killed %d), stats %+v: want exactly one restart, made before the call", pids, old, sc.stats())
	}
	t.Logf("restarted %v after the kill (backoff %v); first call with the start-up %v, the call after the restart %v", restarted, rp.BaseDelay, cold, warm)
}

// A crash-looping stdio server reaches its quarantine with no call made
// after the first one: each restart waits its doubling backoff, then the
// heartbeat entry says quarantined, and no process is started after that.
func TestStdioCrashLoopQuarantinedWithoutCalls(t *testing.T) {
	rp := mcp.RestartPolicy{BaseDelay: 10 * time.Millisecond, MaxDelay: 40 * time.Millisecond, MaxRestarts: 3,
		Window: time.Minute, StableAfter: time.Minute, QuarantineFor: time.Hour}
	sc := newSuperviseCase(t, "crash", rp, &agentproto.Policy{MaxAttempts: 1})
	defer sc.c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	began := time.Now()
	if _, err := sc.c.Call(ctx, "get", map[string]any{"id": "x"}); !errors.Is(err, agentproto.ErrMCPProcessExited) {
		t.Fatalf("the first call: %v, want process exited", err)
	}
	var looped time.Duration
	natstestCheck(t, func() error {
		if got := sc.stats(); got.State != agentproto.ServerQuarantined {
			return fmt.Errorf("stats %+v, want quarantined", got)
		}
		looped = time.Since(began)
		return nil
	})
	got := sc.stats()
	if got.Restarts != 3 || got.LastFailure != agentproto.FailureQuarantined || got.Failed != 1 {
		t.Fatalf("server stats %+v, want 3 restarts, quarantined, the one call failed", got)
	}
	if n := len(sc.pids(t)); n != 4 {
		t.Fatalf("%d processes started, want 4 (the first and 3 restarts)", n)
	}
	if min := 10*time.Millisecond + 20*time.Millisecond + 40*time.Millisecond; looped < min {
		t.Fatalf("quarantined after %v: the restarts did not wait their backoff (%v in all)", looped, min)
	}
	if _, err := sc.c.Call(ctx, "get", map[string]any{"id": "y"}); !errors.Is(err, mcp.ErrQuarantined) {
		t.Fatalf("a call while quarantined: %v, want ErrQuarantined", err)
	}
	if n := len(sc.pids(t)); n != 4 {
		t.Fatalf("%d processes started, want 4: a quarantined server was started again", n)
	}
	if !sc.log.contains(`"message":"mcp stdio server quarantined`) {
		t.Fatal("no quarantine log line")
	}
	t.Logf("crash loop quarantined %v after the only call", looped.Round(time.Millisecond))
}

// Close while a restart waits its backoff returns at once, starts no
// process and leaves no goroutine behind.
func TestStdioCloseDuringRestartBackoff(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	rp := mcp.RestartPolicy{BaseDelay: 10 * time.Second, MaxDelay: 10 * time.Second}
	sc := newSuperviseCase(t, "serve", rp, fastPolicy())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := sc.c.Call(ctx, "get", map[string]any{"id": "warm"}); err != nil {
		t.Fatal(err)
	}
	sc.killOnly(t)
	natstestCheck(t, func() error {
		if !sc.log.contains(`"message":"mcp stdio server restarting"`) {
			return fmt.Errorf("no restart scheduled yet: stats %+v", sc.stats())
		}
		return nil
	})
	began := time.Now()
	if err := sc.c.Close(); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(began); took > time.Second {
		t.Fatalf("Close took %v during a %v restart backoff", took, rp.BaseDelay)
	}
	if n := len(sc.pids(t)); n != 1 {
		t.Fatalf("%d processes started, want 1: the restart ran after Close", n)
	}
	if _, err := sc.c.Call(ctx, "get", map[string]any{"id": "late"}); !errors.Is(err, mcp.ErrClosed) {
		t.Fatalf("a call after Close: %v, want ErrClosed", err)
	}
}

// A quarantined stdio server is started again by itself when its
// quarantine ends, with no call, also after a config change that keeps its
// connection (a new revision): the heartbeat entry leaves "quarantined",
// and the next call runs on that process.
func TestStdioQuarantineEndsWithoutCall(t *testing.T) {
	rp := mcp.RestartPolicy{BaseDelay: 10 * time.Millisecond, MaxDelay: 20 * time.Millisecond, MaxRestarts: 2,
		Window: time.Minute, StableAfter: time.Minute, QuarantineFor: 300 * time.Millisecond}
	sc := newSuperviseCase(t, "crash-until-healed", rp, &agentproto.Policy{MaxAttempts: 1})
	defer sc.c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := sc.c.Call(ctx, "get", map[string]any{"id": "x"}); !errors.Is(err, agentproto.ErrMCPProcessExited) {
		t.Fatalf("the first call: %v, want process exited", err)
	}
	natstestCheck(t, func() error {
		if got := sc.stats(); got.State != agentproto.ServerQuarantined {
			return fmt.Errorf("stats %+v, want quarantined", got)
		}
		return nil
	})
	quarantined := time.Now()
	same := sc.res
	same.Revision++
	if err := sc.c.Swap(same); err != nil {
		t.Fatal(err)
	}
	if got := sc.stats(); got.State != agentproto.ServerQuarantined {
		t.Fatalf("stats %+v after a same-connection Swap, want still quarantined", got)
	}
	if err := os.WriteFile(filepath.Join(sc.dir, "healed"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	var released time.Duration
	natstestCheck(t, func() error {
		if n := strings.Count(sc.log.String(), `"message":"mcp session connected"`); n != 1 {
			return fmt.Errorf("%d sessions connected, want 1 (started after the quarantine): stats %+v", n, sc.stats())
		}
		released = time.Since(quarantined)
		return nil
	})
	if released < rp.QuarantineFor/2 { // the quarantine began before it was observed
		t.Fatalf("started %v after the quarantine was seen, before its %v were over", released, rp.QuarantineFor)
	}
	if got := sc.stats(); got.State == agentproto.ServerQuarantined {
		t.Fatalf("stats %+v: still quarantined once the process is up", got)
	}
	started := len(sc.pids(t))
	if _, err := sc.c.Call(ctx, "get", map[string]any{"id": "after"}); err != nil {
		t.Fatalf("the call after the quarantine: %v", err)
	}
	if n := len(sc.pids(t)); n != started {
		t.Fatalf("%d processes after the call, %d before it: the call started another", n, started)
	}
	t.Logf("started again %v after the quarantine was seen (quarantine %v); %d processes in all", released.Round(time.Millisecond), rp.QuarantineFor, started)
}
