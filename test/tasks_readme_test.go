package test

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tether-dev/tether/internal/natstest"
	"github.com/tether-dev/tether/internal/suptest"
)

// readTasksBlock extracts the commands of the README's tasks walkthrough
// (between its markers) with the output each must show.
func readTasksBlock(t *testing.T) []walkthroughStep {
	t.Helper()
	return readmeSteps(t, "tasks", func(l string) readmeLine {
		switch {
		case l == "" || strings.HasPrefix(l, "```") || strings.HasPrefix(l, "# "):
			return readmeSkip
		case strings.HasPrefix(l, "nats "), strings.HasPrefix(l, "go run ./cmd/"):
			return readmeCommand
		}
		return readmeBad
	})
}

// TestREADMETasksWalkthrough runs the README's tasks block as written: the
// nats CLI makes the stream and durable, tetherctl grants them, the real
// demo-agent binary consumes them through its MCP echo server, tasks
// published with nats pub drain, through a supervisor restart (its
// embedded NATS server with it) and an ordered rebuild of the agent.
func TestREADMETasksWalkthrough(t *testing.T) {
	cli := natstest.NATSCLI(t)
	work := t.TempDir()
	cfg := suptest.Embedded(t, filepath.Join(work, "data"))
	sup := suptest.Start(t, cfg)
	env := natsEnv(t, cli, "")
	env = append(env, "TETHER_NATS_URL="+sup.ClientURL())
	bin := t.TempDir()
	for _, c := range []string{"tetherctl", "demo-agent"} {
		if out, err := exec.Command("go", "build", "-o", filepath.Join(bin, c), "../cmd/"+c).CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", c, err, out)
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mcpAddr := ln.Addr().String()
	ln.Close()
	var agentLog syncBuffer
	for _, st := range readTasksBlock(t) {
		cmdline := strings.ReplaceAll(st.cmd, "nats://127.0.0.1:4222", sup.ClientURL())
		cmdline = strings.ReplaceAll(cmdline, "127.0.0.1:9000", mcpAddr)
		cmdline = strings.ReplaceAll(cmdline, "go run ./cmd/tetherctl", filepath.Join(bin, "tetherctl"))
		switch {
		case cmdline == "go run ./cmd/supervisor":
			sup.Close()
			sup = suptest.Start(t, cfg) // same port and data directory
			t.Logf("README.md:%d ok: supervisor restarted", st.line)
			continue
		case strings.HasPrefix(cmdline, "go run ./cmd/demo-agent "):
			startDemoAgent(t, env, work, filepath.Join(bin, "demo-agent")+strings.TrimPrefix(cmdline, "go run ./cmd/demo-agent"), &agentLog)
			natstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
				for _, e := range st.expect {
					if !strings.Contains(agentLog.String(), e) {
						return fmt.Errorf("demo-agent log lacks %q:\n%s", e, agentLog.String())
					}
				}
				return nil
			})
			t.Logf("README.md:%d ok: %s", st.line, st.cmd)
			continue
		}
		var out string
		natstest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
			var err error
			if out, err = runNATSIn(t, env, work, cmdline); err != nil {
				return fmt.Errorf("exit: %v: %s", err, out)
			}
			for _, e := range st.expect {
				if !strings.Contains(out, e) {
					return fmt.Errorf("output lacks %q:\n%s", e, out)
				}
			}
			return nil
		})
		t.Logf("README.md:%d ok: %s", st.line, st.cmd)
	}
	log := agentLog.String()
	for _, want := range []string{"reconnected", "connection rebuilt", "bound to the durable consumer"} {
		if !strings.Contains(log, want) {
			t.Errorf("the demo agent's log lacks %q", want)
		}
	}
	if n := strings.Count(log, `"message":"task done"`); n < 20 {
		t.Errorf("the demo agent logged %d task done lines, want 20:\n%s", n, log)
	}
}

// startDemoAgent runs the demo agent binary (cmdline: path and flags) in
// dir until the test ends, its output in log.
func startDemoAgent(t *testing.T, env []string, dir, cmdline string, log *syncBuffer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, "sh", "-c", "exec "+cmdline+" --log-format json")
	cmd.Env, cmd.Dir, cmd.Stdout, cmd.Stderr = env, dir, log, log
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel() // kills the process this test started
		_ = cmd.Wait()
	})
}
