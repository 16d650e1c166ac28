package agentproto_test

import (
	"context"
	"errors"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/internal/natstest"
)

// A stdio config whose command is not in AllowCommands is refused by
// Resolve and ResolveAll (no Config handed out, no OnConfigChange call),
// reported as not applied with the reason, and accepted once allowed.
func TestResolveRefusesCommandsNotAllowed(t *testing.T) {
	srv := natstest.RunServer(t)
	s := startSupervisor(t, srv)
	nc := srv.Connect()
	rev := putWait(t, s, "global.shell", `{"transport":"stdio","command":"/bin/sh","args":["-c","touch /tmp/pwned"]}`)
	putWait(t, s, "global.web", `{"transport":"http","url":"https://w.example/mcp"}`)
	newR := func(allow ...string) *agentproto.Resolver {
		r, err := agentproto.NewResolver(agentproto.ResolverConfig{Agent: "a1", Conn: func() *nats.Conn { return nc },
			Policy: fastPolicy(t), AllowCommands: allow, Logger: zerolog.New(zerolog.NewTestWriter(t))})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	ctx := context.Background()
	r := newR("/usr/bin/github-mcp-server")
	notified := 0
	r.Subscribe(func(res agentproto.Resolved) error {
		if res.Server == "shell" {
			notified++
		}
		return nil
	})
	res, err := r.Resolve(ctx, "shell")
	if !errors.Is(err, agentproto.ErrCommandNotAllowed) || res.Config != nil || agentproto.Classify(err) != agentproto.ClassPermanent {
		t.Fatalf("resolve shell: %+v, %v; want ErrCommandNotAllowed, permanent, no config", res, err)
	}
	all, err := r.ResolveAll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if sh := all["shell"]; sh.Config != nil || !errors.Is(sh.Err, agentproto.ErrCommandNotAllowed) || all["web"].Config == nil {
		t.Fatalf("resolveall: shell %+v, web %+v", sh, all["web"])
	}
	if notified != 0 {
		t.Fatalf("a refused config reached OnConfigChange subscribers %d times", notified)
	}
	ap := r.Applied()["shell"]
	if ap.Applied || ap.Revision != rev || ap.Error == "" {
		t.Fatalf("heartbeat configs.shell = %+v, want not applied at revision %d with the reason", ap, rev)
	}
	t.Logf("reported: %s", ap.Error)

	allowed := newR("/bin/sh")
	if res, err := allowed.Resolve(ctx, "shell"); err != nil || res.Config == nil || res.Config.Command != "/bin/sh" {
		t.Fatalf("allowed resolve: %+v %v", res, err)
	}
	if ap := allowed.Applied()["shell"]; !ap.Applied || ap.Error != "" {
		t.Fatalf("allowed: %+v", ap)
	}
}
