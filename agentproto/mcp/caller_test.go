package mcp_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	sdk "github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/agentproto/mcp"
	"github.com/tether-dev/tether/internal/demoagent"
	"github.com/tether-dev/tether/internal/natstest"
	"github.com/tether-dev/tether/kvconfig"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if os.Getenv(stdioServerEnv) != "" {
		runStdioServer() // this binary started as a stdio MCP server by a test
	}
	goleak.VerifyTestMain(m)
}

func resolved(url string) agentproto.Resolved {
	return agentproto.Resolved{Server: "echo", Key: "global.echo", Revision: 1,
		Config: &kvconfig.ServerConfig{Transport: kvconfig.TransportHTTP, URL: url}}
}

// A call through a real MCP server from the official SDK, across a server
// restart: the caller drops the dead session and the retry reconnects.
func TestToolCallerAcrossServerRestart(t *testing.T) {
	srv, err := demoagent.NewEchoServer("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	p := agentproto.Policy{MaxAttempts: 50, BaseDelay: 5 * time.Millisecond, MaxDelay: 20 * time.Millisecond}
	stats := &agentproto.CallStats{}
	var servers agentproto.ServerRegistry
	c, err := mcp.NewToolCaller(resolved(srv.URL()), mcp.Options{Policy: &p, Stats: stats, ServerStats: servers.Get("echo"), Logger: zerolog.New(zerolog.NewTestWriter(t))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	call := func(text string) {
		t.Helper()
		res, err := c.Call(ctx, "echo", map[string]any{"text": text})
		if err != nil {
			t.Fatalf("call %q: %v", text, err)
		}
		if res.IsError || !strings.Contains(fmt.Sprint(res.StructuredContent), text) {
			t.Fatalf("call %q: %+v", text, res)
		}
	}
	call("one")
	srv.Stop()
	restarted := make(chan error, 1)
	go func() {
		time.Sleep(50 * time.Millisecond) // down for a moment, as in a deploy
		restarted <- srv.Start()
	}()
	call("two")
	if err := <-restarted; err != nil {
		t.Fatal(err)
	}
	if got := stats.Snapshot(); got.OK != 2 || got.Retried == 0 {
		t.Fatalf("stats %+v, want 2 ok and some retries", got)
	}
	if got := servers.Snapshot()["echo"]; got.OK != 2 || got.Retried == 0 || got.State != agentproto.ServerOK ||
		got.LastFailure != agentproto.FailureRefused || got.LastErrorClass != "transient" {
		t.Fatalf("server stats %+v, want 2 ok, retries after refused connects, state ok", got)
	}
	// A swapped config takes effect at the next call: the old session is
	// closed and a call now goes to a port where nothing listens.
	if err := c.Swap(resolved("http://127.0.0.1:1/mcp")); err != nil {
		t.Fatal(err)
	}
	sctx, scancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer scancel()
	if _, err := c.Call(sctx, "echo", map[string]any{"text": "three"}); err == nil {
		t.Fatal("a call after swapping to a closed port succeeded")
	}
	if got := servers.Snapshot()["echo"]; got.Failed != 1 || got.State != agentproto.ServerFailing {
		t.Fatalf("server stats %+v, want 1 failed, state failing", got)
	}
}

// The SDK's "connection closed" and "session missing" classify as the
// table's transient MCP row through agentproto.ErrMCPSessionLost.
func TestSessionErrorsAreTransient(t *testing.T) {
	for _, e := range []error{sdk.ErrConnectionClosed, sdk.ErrSessionMissing} {
		err := mcp.SessionError(fmt.Errorf("calling tools/call: %w", e))
		if !errors.Is(err, agentproto.ErrMCPSessionLost) || !errors.Is(err, e) {
			t.Errorf("%v: not wrapped: %v", e, err)
		}
		if r := agentproto.ClassifyRule(err); r.Class != agentproto.ClassTransient || r.Name != "MCP connection closed, session missing, process exited" {
			t.Errorf("%v classified by %v", e, r)
		}
	}
	if other := errors.New("x"); mcp.SessionError(other) != other {
		t.Error("an unrelated error was wrapped")
	}
}

// An agent that never calls an MCP server does not link the SDK's session
// code: agentproto itself must not depend on the SDK's mcp package.
func TestAgentprotoDoesNotLinkMCPSessions(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "github.com/tether-dev/tether/agentproto").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, dep := range strings.Fields(string(out)) {
		if dep == "github.com/modelcontextprotocol/go-sdk/mcp" {
			t.Fatal("agentproto depends on github.com/modelcontextprotocol/go-sdk/mcp; keep MCP sessions in agentproto/mcp")
		}
	}
}

func stdioResolved(command string, args []string, env map[string]string) agentproto.Resolved {
	return agentproto.Resolved{Server: "local", Key: "agent.a1.local", Revision: 7,
		Config: &kvconfig.ServerConfig{Transport: kvconfig.TransportStdio, Command: command, Args: args, Env: env}}
}

// A stdio command outside the allow-list never runs: the planted command
// would create a file, which never appears.
func TestStdioCommandNotAllowedNeverRuns(t *testing.T) {
	planted := filepath.Join(t.TempDir(), "pwned")
	res := stdioResolved("/bin/sh", []string{"-c", "touch " + planted}, nil)
	if _, err := mcp.NewToolCaller(res, mcp.Options{AllowCommands: []string{"/usr/bin/other"}}); !errors.Is(err, agentproto.ErrCommandNotAllowed) {
		t.Fatalf("NewToolCaller: %v, want ErrCommandNotAllowed", err)
	}
	ok, err := mcp.NewToolCaller(stdioResolved("/usr/bin/other", nil, nil), mcp.Options{AllowCommands: []string{"/usr/bin/other"}})
	if err != nil {
		t.Fatal(err)
	}
	defer ok.Close()
	if err := ok.Swap(res); !errors.Is(err, agentproto.ErrCommandNotAllowed) {
		t.Fatalf("Swap to a command not allowed: %v", err)
	}
	if _, err := os.Stat(planted); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the planted command ran: %v", err)
	}
}

// An allowed stdio server gets exactly the config's env, not the agent's.
func TestStdioServerGetsOnlyTheConfigEnv(t *testing.T) {
	t.Setenv("TETHER_AGENT_SECRET", "agent-only")
	out := filepath.Join(t.TempDir(), "env")
	res := stdioResolved("/bin/sh", []string{"-c", `env > "$OUT"`}, map[string]string{"OUT": out, "GITHUB_TOKEN": "cfg-token"})
	p := agentproto.Policy{MaxAttempts: 1}
	c, err := mcp.NewToolCaller(res, mcp.Options{Policy: &p, AllowCommands: []string{"/bin/sh"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, _ = c.Call(ctx, "x", nil) // sh is no MCP server: the call fails, the env is written
	var env []byte
	natstest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if env, err = os.ReadFile(out); err != nil || len(env) == 0 {
			return fmt.Errorf("env not written yet: %v", err)
		}
		return nil
	})
	if !strings.Contains(string(env), "GITHUB_TOKEN=cfg-token") || strings.Contains(string(env), "TETHER_AGENT_SECRET") {
		t.Fatalf("stdio server environment:\n%s\nwant the config's GITHUB_TOKEN and none of the agent's", env)
	}
}
