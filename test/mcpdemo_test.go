package test

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/internal/natstest"
	"github.com/tether-dev/tether/internal/suptest"
)

// readMCPDemo extracts the commands (and their #=> expectations) between
// the README's mcpdemo markers; other comment lines are prose.
func readMCPDemo(t *testing.T) []walkthroughStep {
	t.Helper()
	return readmeSteps(t, "mcpdemo", func(l string) readmeLine {
		if l == "" || strings.HasPrefix(l, "```") || strings.HasPrefix(l, "#") {
			return readmeSkip
		}
		return readmeCommand
	})
}

// shell is one long-lived bash reading commands from a pipe, as a user's
// terminal: background jobs (&) and job specs (kill %1) carry over.
type shell struct {
	t     *testing.T
	cmd   *exec.Cmd
	stdin io.WriteCloser
	mu    sync.Mutex
	out   strings.Builder
	n     int
}

func startShell(t *testing.T, dir string, env []string) *shell {
	t.Helper()
	sh := &shell{t: t, cmd: exec.Command("bash")}
	sh.cmd.Dir, sh.cmd.Env = dir, env
	sh.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // its jobs are killed with it
	w := lockedWriter{&sh.mu, &sh.out}
	sh.cmd.Stdout, sh.cmd.Stderr = w, w
	var err error
	if sh.stdin, err = sh.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := sh.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = io.WriteString(sh.stdin, "kill $(jobs -p) 2>/dev/null; wait\n")
		_ = sh.stdin.Close()
		done := make(chan struct{})
		go func() { _ = sh.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = syscall.Kill(-sh.cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
	})
	return sh
}

// run runs one command line in the shell and returns its output and exit
// status, waiting at most timeout.
func (sh *shell) run(line string, timeout time.Duration) (string, string) {
	sh.t.Helper()
	sh.n++
	mark := fmt.Sprintf("__step_%d_rc=", sh.n)
	sh.mu.Lock()
	start := sh.out.Len()
	sh.mu.Unlock()
	if _, err := fmt.Fprintf(sh.stdin, "%s\necho \"%s$?\"\n", line, mark); err != nil {
		sh.t.Fatal(err)
	}
	deadline := time.Now().Add(timeout)
	for {
		sh.mu.Lock()
		all := sh.out.String()[start:]
		sh.mu.Unlock()
		if i := strings.Index(all, mark); i >= 0 {
			rc, _, _ := strings.Cut(all[i+len(mark):], "\n")
			return all[:i], rc
		}
		if time.Now().After(deadline) {
			sh.t.Fatalf("%s: no end within %v; output so far:\n%s", line, timeout, all)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestREADMEMCPServerDownDemo runs the README's MCP server health demo
// verbatim in one shell against a real supervisor (embedded server, auth
// on), real demo agents and the real echo MCP server: killed, it is shown
// down for 2/2 agents within two heartbeat intervals, by tetherctl, the
// dashboard and one supervisor log line; restarted, the agents' calls
// succeed again with no human action.
func TestREADMEMCPServerDownDemo(t *testing.T) {
	cli := natstest.NATSCLI(t)
	steps := readMCPDemo(t)
	work := t.TempDir()
	logs := &syncLog{}
	cfg := suptest.Embedded(t, filepath.Join(work, "data"))
	cfg.HTTPAddr = "127.0.0.1:0"
	cfg.Logger = zerolog.New(io.MultiWriter(logs, zerolog.NewTestWriter(t))).Level(zerolog.WarnLevel)
	sup := suptest.Start(t, cfg)
	echoAddr := freeAddr(t)
	env := natsEnv(t, cli, "")
	env = append(env, "TETHER_NATS_URL="+sup.ClientURL())
	repo, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	sh := startShell(t, work, env)
	interval := agentproto.DefaultHeartbeatInterval // the demo agents' (no flag changes it)
	var killedAt time.Time
	for _, st := range steps {
		line := strings.ReplaceAll(st.cmd, "nats://127.0.0.1:4222", sup.ClientURL())
		line = strings.ReplaceAll(line, "127.0.0.1:9000", echoAddr)
		if rest, ok := strings.CutPrefix(line, "go build -o bin/ "); ok { // from the repository, into the work dir
			line = "(cd " + repo + " && go build -o " + filepath.Join(work, "bin") + "/ " + rest + ")"
		}
		timeout := 20 * time.Second
		if strings.HasPrefix(line, "(cd ") {
			timeout = 5 * time.Minute
		}
		var out, rc string
		var missing error
		// Output that needs agents to act is polled: up to 30 s.
		deadline := time.Now().Add(30 * time.Second)
		for {
			out, rc = sh.run(line, timeout)
			missing = nil
			for _, e := range st.expect {
				if !strings.Contains(out, e) {
					missing = fmt.Errorf("output lacks %q", e)
				}
			}
			if missing == nil && rc == "0" || len(st.expect) == 0 || time.Now().After(deadline) {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		if rc != "0" && !strings.HasPrefix(line, "kill ") || missing != nil {
			t.Fatalf("README.md:%d %s: exit %s, %v:\n%s", st.line, st.cmd, rc, missing, out)
		}
		switch {
		case line == "kill %1":
			killedAt = time.Now()
		case mentions(st.expect, "down for 2/2 agents"):
			took := time.Since(killedAt)
			t.Logf("echo shown down for 2/2 agents %v after the kill (%.2f heartbeat intervals)", took, float64(took)/float64(interval))
			if took > 2*interval {
				t.Errorf("down shown %v after the kill, over two heartbeat intervals (%v)", took, 2*interval)
			}
			checkDashboardDown(t, "http://"+sup.HTTPAddr())
			downs := logs.lines("MCP server down")
			if len(downs) != 1 || downs[0]["server"] != "echo" || downs[0]["summary"] != "echo down for 2/2 agents" || downs[0]["last_failure"] == "" {
				t.Errorf("supervisor log: %v, want one MCP server down line for echo 2/2", downs)
			}
		}
		t.Logf("README.md:%d ok: %s", st.line, st.cmd)
	}
	if ups := logs.lines("MCP server back up"); len(ups) != 1 || ups[0]["server"] != "echo" {
		t.Errorf("supervisor log: %v, want one MCP server back up line for echo", ups)
	}
}

func mentions(expect []string, sub string) bool {
	for _, e := range expect {
		if strings.Contains(e, sub) {
			return true
		}
	}
	return false
}

// checkDashboardDown: the dashboard's fleet notices list echo down.
func checkDashboardDown(t *testing.T, base string) {
	t.Helper()
	natstest.CheckFor(t, 5*time.Second, 50*time.Millisecond, func() error {
		resp, err := http.Get(base + "/api/fleet")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var body struct {
			Notices struct {
				ServersDown []struct{ Server, Summary string } `json:"servers_down"`
			} `json:"notices"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
			return err
		}
		if d := body.Notices.ServersDown; len(d) != 1 || d[0].Summary != "echo down for 2/2 agents" {
			return fmt.Errorf("dashboard servers_down %+v", d)
		}
		return nil
	})
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// syncLog collects the supervisor's JSON log lines.
type syncLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *syncLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// lines are the logged lines whose message starts with msg.
func (l *syncLog) lines(msg string) []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, s := range strings.Split(l.b.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(s), &m) == nil && strings.HasPrefix(fmt.Sprint(m["message"]), msg) {
			out = append(out, m)
		}
	}
	return out
}
