package test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/agentproto"
	agentmcp "github.com/tether-dev/tether/agentproto/mcp"
	"github.com/tether-dev/tether/internal/demoagent"
	"github.com/tether-dev/tether/internal/natstest"
	"github.com/tether-dev/tether/supervisor"
)

// The blocking bug, through the agent's command runner: a tool
// call hangs in an MCP connect (the server accepts and never answers);
// the config is changed and a reresolve command arrives, whose
// OnConfigChange callback swaps the caller; then a reconnect command.
// Before, Swap waited for the caller's lock, held through the handshake,
// so the runner stalled and the reconnect was acknowledged but never
// carried out. Now the reconnect is carried out, the waiting call goes on
// to the new server, and the heartbeat reports the server ok.
func TestHungMCPConnectDoesNotStopCommands(t *testing.T) {
	srv := natstest.RunServer(t)
	sup := startSupervisor(t, srv)
	hung := hangingListener(t)
	echo, err := demoagent.NewEchoServer("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(echo.Stop)
	putConfig(t, sup, "global.echo", fmt.Sprintf(`{"transport":"http","url":"http://%s/mcp","timeout":"30s"}`, hung.Addr()))

	c := startAgent(t, faultConfig(t, srv.URL(), "h1"))
	obs := observer(t, srv.URL())
	hbs := watchHeartbeats(t, obs, "h1")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := c.Resolve(ctx, "echo")
	if err != nil {
		t.Fatal(err)
	}
	caller, err := agentmcp.NewToolCaller(res, agentmcp.Options{ServerStats: c.ServerStats("echo"),
		Logger: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)})
	if err != nil {
		t.Fatal(err)
	}
	defer caller.Close()
	c.OnConfigChange(func(r agentproto.Resolved) error {
		if r.Server != "echo" {
			return nil
		}
		return caller.Swap(r)
	})
	first := make(chan error, 1)
	go func() {
		_, err := caller.Call(ctx, "echo", map[string]any{"text": "first"})
		first <- err
	}()
	natstest.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		if hung.accepted.Load() == 0 {
			return errors.New("the call has not reached the hung server yet")
		}
		return nil
	})

	putConfig(t, sup, "global.echo", fmt.Sprintf(`{"transport":"http","url":%q,"timeout":"30s"}`, echo.URL()))
	start := time.Now()
	sendCommand(t, obs, "h1", agentproto.Command{ID: "r1", Type: agentproto.CmdReresolve, Servers: []string{"echo"}})
	sendCommand(t, obs, "h1", agentproto.Command{ID: "c1", Type: agentproto.CmdReconnect, Reason: "test"})
	natstest.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		if c.Stats().Rebuilds < 1 {
			return errors.New("the reconnect command has not been carried out")
		}
		return nil
	})
	t.Logf("reresolve + reconnect carried out %v after they were sent, a connect still hung", time.Since(start))
	select {
	case err := <-first:
		if err != nil {
			t.Fatalf("the call that waited for the hung connect: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the call that waited for the hung connect never ended")
	}
	if _, err := caller.Call(ctx, "echo", map[string]any{"text": "second"}); err != nil {
		t.Fatalf("a call after the swap: %v", err)
	}
	hbs.wait(t, 0, func(hb agentproto.Heartbeat) bool {
		s, ok := hb.Servers["echo"]
		return ok && s.State == agentproto.ServerOK && s.OK == 2
	})
}

func putConfig(t *testing.T, sup *supervisor.Supervisor, key, value string) {
	t.Helper()
	rev, err := sup.Buckets().Configs.Put(context.Background(), key, []byte(value))
	if err != nil {
		t.Fatal(err)
	}
	natstest.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		if sup.Index().AsOf().Configs < rev {
			return fmt.Errorf("index at %d, want %d", sup.Index().AsOf().Configs, rev)
		}
		return nil
	})
}

// hungMCP accepts TCP connections and never answers.
type hungMCP struct {
	net.Listener
	accepted atomic.Int64
}

func hangingListener(t *testing.T) *hungMCP {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := &hungMCP{Listener: ln}
	var mu sync.Mutex
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			h.accepted.Add(1)
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			_ = c.Close()
		}
	})
	return h
}
