package tetherctl

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tether-dev/tether/internal/natstest"
	"github.com/tether-dev/tether/internal/suptest"
	"github.com/tether-dev/tether/supervisor"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// result is one in-process run of tetherctl.
type result struct {
	code           int
	stdout, stderr string
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

// harness is a real embedded nats-server, optionally with a real supervisor.
type harness struct {
	t   *testing.T
	srv *natstest.Server
	sup *supervisor.Supervisor
}

// newHarness starts a server and a supervisor (which creates the buckets).
func newHarness(t *testing.T) *harness {
	t.Helper()
	h := &harness{t: t, srv: natstest.RunServer(t)}
	h.sup = suptest.Start(t, suptest.Config(t, h.srv.URL()))
	return h
}

// runCLI runs tetherctl in-process with no environment and the given stdin.
func runCLI(stdin string, args ...string) result {
	var out, errb bytes.Buffer
	c := &CLI{Stdin: strings.NewReader(stdin), Stdout: &out, Stderr: &errb,
		LookupEnv: func(string) (string, bool) { return "", false }}
	code := c.Run(context.Background(), args)
	return result{code, out.String(), errb.String()}
}

// run runs tetherctl against the harness's server.
func (h *harness) run(args ...string) result {
	h.t.Helper()
	return runCLI("", append([]string{"--nats-url", h.srv.URL(), "--timeout", "5s"}, args...)...)
}

// must runs and fails the test unless the exit code is want.
func (h *harness) must(want int, args ...string) result {
	h.t.Helper()
	r := h.run(args...)
	if r.code != want {
		h.t.Fatalf("tetherctl %s: want exit %d, got\n%s", strings.Join(args, " "), want, r)
	}
	return r
}

// kvPut writes a raw value and waits until the supervisor applied it.
func (h *harness) kvPut(key, value string) uint64 {
	h.t.Helper()
	rev, err := h.sup.Buckets().Configs.Put(context.Background(), key, []byte(value))
	if err != nil {
		h.t.Fatal(err)
	}
	h.waitApplied(rev)
	return rev
}

func (h *harness) waitApplied(rev uint64) {
	h.t.Helper()
	natstest.CheckFor(h.t, 5*time.Second, 2*time.Millisecond, func() error {
		if h.sup.Index().AsOf().Configs < rev {
			return errors.New("supervisor has not applied the write yet")
		}
		return nil
	})
}

// revision returns the current revision of key, 0 when absent.
func (h *harness) revision(key string) uint64 {
	h.t.Helper()
	e, err := h.sup.Buckets().Configs.Get(context.Background(), key)
	if err != nil {
		return 0
	}
	return e.Revision()
}

func (h *harness) value(key string) string {
	h.t.Helper()
	e, err := h.sup.Buckets().Configs.Get(context.Background(), key)
	if err != nil {
		h.t.Fatalf("get %s: %v", key, err)
	}
	return string(e.Value())
}

// writeFile writes content to a file in a temp dir and returns its path.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func contains(t *testing.T, what, s string, subs ...string) {
	t.Helper()
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			t.Errorf("%s does not contain %q:\n%s", what, sub, s)
		}
	}
}

func lacks(t *testing.T, what, s string, subs ...string) {
	t.Helper()
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			t.Errorf("%s contains %q:\n%s", what, sub, s)
		}
	}
}
