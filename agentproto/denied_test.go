package agentproto_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/internal/suptest"
	"github.com/tether-dev/tether/supervisor/auth"
)

// An agent run with another agent's credentials (a misconfiguration) gets
// a permanent error naming the refused subject at once — not five retries
// each waiting out its timeout.
func TestPermissionViolationIsPermanentAndFast(t *testing.T) {
	dir := t.TempDir()
	s := suptest.Start(t, suptest.Embedded(t, dir))
	m, err := auth.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	creds, _, err := m.AgentCreds("a1", "")
	if err != nil {
		t.Fatal(err)
	}
	cf := filepath.Join(t.TempDir(), "a1.creds")
	if err := os.WriteFile(cf, creds, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := agentproto.DefaultConfig("a1")
	cfg.URLs, cfg.CredsFile, cfg.SkipInitialResolve = s.ClientURL(), cf, true
	cfg.Logger = zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := agentproto.Connect(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// a1 may resolve only its own subjects; a Resolver for b2 on a1's
	// connection publishes where a1 may not.
	r, err := agentproto.NewResolver(agentproto.ResolverConfig{Agent: "b2", Conn: c.Conn, Guard: c.PermissionGuard(),
		Policy: agentproto.Policy{MaxAttempts: 5}, Logger: zerolog.New(zerolog.NewTestWriter(t))})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = r.Resolve(ctx, "github")
	took := time.Since(start)
	var pe *agentproto.PermissionError
	if !errors.As(err, &pe) || pe.Subject != "mcp.v1.resolve.b2.github" || !errors.Is(err, nats.ErrPermissionViolation) ||
		agentproto.Classify(err) != agentproto.ClassPermanent {
		t.Fatalf("resolve: %v, want a permanent PermissionError naming mcp.v1.resolve.b2.github", err)
	}
	if took > time.Second {
		t.Fatalf("the refused resolve took %v: it waited for timeouts or retried", took)
	}
	t.Logf("refused in %v: %v", took.Round(time.Millisecond), err)
}
