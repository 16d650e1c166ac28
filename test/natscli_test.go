package test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tether-dev/tether/internal/natstest"
	"github.com/tether-dev/tether/internal/suptest"
)

// walkthroughStep is one command of the README walkthrough and the
// substrings its output must contain.
type walkthroughStep struct {
	line   int
	cmd    string
	expect []string
}

// readmeLine says what a line of a README block is to its test.
type readmeLine int

const (
	readmeSkip    readmeLine = iota // prose, fences, comments
	readmeCommand                   // a command to run
	readmeBad                       // a line the test cannot run: fails the test
)

// readmeSteps extracts the commands of README.md between <!-- name:start -->
// and <!-- name:end -->, as classify says, each with the substrings its
// output must show (the "#=> " lines after it); fewer than 10 commands
// means the markers are missing.
func readmeSteps(t *testing.T, name string, classify func(line string) readmeLine) []walkthroughStep {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	var steps []walkthroughStep
	in := false
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		l := strings.TrimSpace(sc.Text())
		switch {
		case l == "<!-- "+name+":start -->":
			in = true
		case l == "<!-- "+name+":end -->":
			in = false
		case !in:
		case strings.HasPrefix(l, "#=> "):
			if len(steps) == 0 {
				t.Fatalf("README.md:%d: expectation before any command", n)
			}
			s := &steps[len(steps)-1]
			s.expect = append(s.expect, strings.TrimPrefix(l, "#=> "))
		default:
			switch classify(l) {
			case readmeCommand:
				steps = append(steps, walkthroughStep{line: n, cmd: l})
			case readmeBad:
				t.Fatalf("README.md:%d: a %s line the test cannot run: %s", n, name, l)
			}
		}
	}
	if len(steps) < 10 {
		t.Fatalf("README %s block has %d commands; markers missing?", name, len(steps))
	}
	return steps
}

// readWalkthrough extracts the commands between the walkthrough markers of
// README.md, so the README cannot drift from what is tested.
func readWalkthrough(t *testing.T) []walkthroughStep {
	t.Helper()
	steps := readmeSteps(t, "walkthrough", func(l string) readmeLine {
		if strings.HasPrefix(l, "nats ") || strings.HasPrefix(l, "go run ./cmd/tetherctl ") {
			return readmeCommand
		}
		return readmeSkip
	})
	shown := false
	for _, st := range steps {
		for _, e := range st.expect {
			shown = shown || strings.HasPrefix(e, "Nats-Service-Error-Code: ")
		}
	}
	if !shown {
		t.Fatal("README walkthrough never shows how to see an error reply's status (nats req exits 0 for a 4xx): expect a Nats-Service-Error-Code header")
	}
	return steps
}

// statusHeader is the status nats req prints from an error reply's headers.
var statusHeader = regexp.MustCompile(`Nats-Service-Error-Code: (\d+)`)

// checkStatus: when nats req shows an error reply's status header, the
// body's JSON status says the same, and the message header is there too.
func checkStatus(out string) error {
	m := statusHeader.FindStringSubmatch(out)
	if m == nil || !strings.Contains(out, `"error":`) { // no status, or only the header (grep)
		return nil
	}
	if !strings.Contains(out, "Nats-Service-Error: ") {
		return fmt.Errorf("status %s without a Nats-Service-Error message header", m[1])
	}
	if !strings.Contains(out, `"status":`+m[1]) {
		return fmt.Errorf("header status %s but the body says otherwise", m[1])
	}
	return nil
}

// natsEnv runs the CLI against url with a clean HOME (no saved contexts).
func natsEnv(t *testing.T, cli, url string) []string {
	home := t.TempDir()
	// XDG_CONFIG_HOME too: the nats CLI keeps contexts there (or under
	// the user's home from the password database), never in the real one.
	return append(os.Environ(), "HOME="+home, "XDG_CONFIG_HOME="+filepath.Join(home, ".config"), "NATS_URL="+url, "NATS_CONTEXT=",
		"PATH="+filepath.Dir(cli)+":"+os.Getenv("PATH"))
}

func runNATS(t *testing.T, env []string, cmdline string) (string, error) {
	return runNATSIn(t, env, "", cmdline)
}

// runNATSIn runs a shell command line in dir ("" for the test's own).
func runNATSIn(t *testing.T, env []string, dir, cmdline string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", "-c", cmdline)
	cmd.Env, cmd.Dir = env, dir
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestREADMEWalkthroughWithNATSCLI runs every command of the README's
// walkthrough with the real nats CLI against a running supervisor and
// checks the output of each (nats req exits 0 even for an error reply or on
// no responders, so output is what is asserted, the status header included).
func TestREADMEWalkthroughWithNATSCLI(t *testing.T) {
	cli := natstest.NATSCLI(t)
	// As a new user runs it: the embedded server with auth on, data in
	// ./data of the working directory; only the port differs.
	work := t.TempDir()
	sup := suptest.Start(t, suptest.Embedded(t, filepath.Join(work, "data")))
	env := natsEnv(t, cli, "") // NATS_URL empty: the context the walkthrough saves is used
	env = append(env, "TETHER_NATS_URL="+sup.ClientURL())
	tetherctl := filepath.Join(t.TempDir(), "tetherctl")
	if out, err := exec.Command("go", "build", "-o", tetherctl, "../cmd/tetherctl").CombinedOutput(); err != nil {
		t.Fatalf("build tetherctl: %v\n%s", err, out)
	}
	for _, st := range readWalkthrough(t) {
		var out string
		var err error
		cmdline := strings.ReplaceAll(st.cmd, "nats://127.0.0.1:4222", sup.ClientURL())
		cmdline = strings.ReplaceAll(cmdline, "go run ./cmd/tetherctl", tetherctl)
		// A resolve right after a put may race the KV watch by a few ms.
		natstest.CheckFor(t, 3*time.Second, 20*time.Millisecond, func() error {
			out, err = runNATSIn(t, env, work, cmdline)
			if err != nil {
				return fmt.Errorf("exit: %v", err)
			}
			for _, e := range st.expect {
				if !strings.Contains(out, e) {
					return fmt.Errorf("output lacks %q", e)
				}
			}
			return checkStatus(out)
		})
		if strings.Contains(out, "No responders") || strings.Contains(out, "no responders") {
			t.Fatalf("README.md:%d %s: no responders:\n%s", st.line, st.cmd, out)
		}
		t.Logf("README.md:%d ok: %s", st.line, st.cmd)
	}
}

// TestNATSCLIKVWatch: an operator watching mcp_configs with `nats kv watch`
// sees a put made with `nats kv put`, and `nats kv get/del` work on
// mcp_agents.
func TestNATSCLIKVWatch(t *testing.T) {
	cli := natstest.NATSCLI(t)
	srv := natstest.RunServer(t)
	sup := startSupervisor(t, srv)
	env := natsEnv(t, cli, srv.URL())

	ctx, cancel := context.WithCancel(context.Background())
	watch := exec.CommandContext(ctx, cli, "kv", "watch", "mcp_configs")
	watch.Env = env
	var mu sync.Mutex
	var buf strings.Builder
	watch.Stdout = lockedWriter{&mu, &buf}
	watch.Stderr = lockedWriter{&mu, &buf}
	if err := watch.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); _ = watch.Wait() }()

	out, err := runNATS(t, env, `nats kv put mcp_configs global.slack '{"url":"https://slack.example/mcp"}'`)
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	natstest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		mu.Lock()
		defer mu.Unlock()
		if !strings.Contains(buf.String(), "global.slack") {
			return fmt.Errorf("watch output so far: %q", buf.String())
		}
		return nil
	})
	natstest.CheckFor(t, 2*time.Second, 5*time.Millisecond, func() error {
		if _, err := sup.Index().Resolve("x", "slack"); err != nil {
			return err
		}
		return nil
	})
	for _, c := range []struct{ cmd, want string }{
		{`nats kv put mcp_agents a7 '{"role":"ops"}'`, "ops"},
		{`nats kv get mcp_agents a7 --raw`, `{"role":"ops"}`},
		{`nats kv del mcp_agents a7 -f`, ""},
		{`nats kv get mcp_agents a7`, "not found"},
	} {
		out, _ := runNATS(t, env, c.cmd)
		if !strings.Contains(out, c.want) {
			t.Errorf("%s: output %q lacks %q", c.cmd, out, c.want)
		}
	}
	natstest.CheckFor(t, 2*time.Second, 5*time.Millisecond, func() error {
		if role, _ := sup.Index().Role("a7"); role != "" {
			return fmt.Errorf("role still %q", role)
		}
		return nil
	})
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *strings.Builder
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}
