package agentproto_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/internal/natstest"
	"github.com/tether-dev/tether/internal/suptest"
	"github.com/tether-dev/tether/kvconfig"
	"github.com/tether-dev/tether/supervisor"
)

func startSupervisor(t *testing.T, srv *natstest.Server) *supervisor.Supervisor {
	t.Helper()
	return suptest.Start(t, suptest.Config(t, srv.URL()))
}

// fastPolicy retries in milliseconds.
func fastPolicy(t *testing.T) agentproto.Policy {
	p := agentproto.DefaultPolicy()
	p.BaseDelay, p.MaxDelay, p.MaxElapsed, p.MaxAttempts = 5*time.Millisecond, 20*time.Millisecond, 0, 3
	p.AttemptTimeout = 200 * time.Millisecond
	p.Logger = zerolog.New(zerolog.NewTestWriter(t))
	return p
}

func newResolver(t *testing.T, nc *nats.Conn, agent string) *agentproto.Resolver {
	t.Helper()
	r, err := agentproto.NewResolver(agentproto.ResolverConfig{
		Agent: agent, Conn: func() *nats.Conn { return nc }, Policy: fastPolicy(t),
		Logger: zerolog.New(zerolog.NewTestWriter(t)),
	})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func putWait(t *testing.T, s *supervisor.Supervisor, key, val string) uint64 {
	t.Helper()
	rev, err := s.Buckets().Configs.Put(context.Background(), key, []byte(val))
	if err != nil {
		t.Fatal(err)
	}
	natstest.CheckFor(t, 2*time.Second, time.Millisecond, func() error {
		if s.Index().AsOf().Configs < rev {
			return errors.New("not applied yet")
		}
		return nil
	})
	return rev
}

func TestResolverStaleThenFresh(t *testing.T) {
	srv := natstest.RunServer(t)
	s := startSupervisor(t, srv)
	rev1 := putWait(t, s, "global.github", `{"url":"https://one.example/mcp"}`)
	nc := srv.Connect()
	r := newResolver(t, nc, "a7")
	var changes atomic.Int32
	r.Subscribe(func(agentproto.Resolved) error { changes.Add(1); return nil })
	ctx := context.Background()

	res, err := r.Resolve(ctx, "github")
	if err != nil || res.Stale || res.Revision != rev1 || res.Config.URL != "https://one.example/mcp" || res.Scope != "global" {
		t.Fatalf("fresh: %+v %v", res, err)
	}
	// Supervisor down: the held config comes back, marked stale.
	s.Close()
	res, err = r.Resolve(ctx, "github")
	if err != nil || !res.Stale || res.Revision != rev1 || res.Err == nil || !r.Degraded() {
		t.Fatalf("stale: %+v %v", res, err)
	}
	if !errors.Is(res.Err, nats.ErrNoResponders) {
		t.Errorf("stale cause: %v", res.Err)
	}
	if a := r.Applied()["github"]; !a.Stale || a.Revision != rev1 {
		t.Errorf("applied: %+v", a)
	}
	all, err := r.ResolveAll(ctx)
	if err != nil || !all["github"].Stale {
		t.Fatalf("resolveall stale: %+v %v", all, err)
	}
	// A new server with no held config fails.
	if _, err := r.Resolve(ctx, "slack"); err == nil {
		t.Fatal("unknown server resolved while supervisor down")
	}
	// Supervisor back with a newer revision: fresh, changed, subscribers told.
	s2 := startSupervisor(t, srv)
	rev2 := putWait(t, s2, "global.github", `{"url":"https://two.example/mcp"}`)
	res, err = r.Resolve(ctx, "github")
	if err != nil || res.Stale || !res.Changed || res.Revision != rev2 || r.Degraded() {
		t.Fatalf("back: %+v %v", res, err)
	}
	if changes.Load() != 2 {
		t.Errorf("subscriber called %d times, want 2", changes.Load())
	}
}

func TestResolverErrors(t *testing.T) {
	srv := natstest.RunServer(t)
	s := startSupervisor(t, srv)
	putWait(t, s, "global.github", `{"url":"https://one.example/mcp"}`)
	r := newResolver(t, srv.Connect(), "a7")
	ctx := context.Background()
	if _, err := r.Resolve(ctx, "github"); err != nil {
		t.Fatal(err)
	}
	// 422: error plus the held config, stale.
	putWait(t, s, "global.github", `{"url":"https://one.example/mcp","timout":"1s"}`)
	res, err := r.Resolve(ctx, "github")
	var se *agentproto.ServiceError
	if !errors.As(err, &se) || se.Code != 422 || !res.Stale || res.Config == nil {
		t.Fatalf("422: %+v %v", res, err)
	}
	// 404: the held config is dropped.
	if err := s.Buckets().Configs.Delete(ctx, "global.github"); err != nil {
		t.Fatal(err)
	}
	natstest.CheckFor(t, 2*time.Second, time.Millisecond, func() error {
		_, err := r.Resolve(ctx, "github")
		if !errors.As(err, &se) || se.Code != 404 {
			return errors.New("not 404 yet")
		}
		return nil
	})
	if _, ok := r.Held("github"); ok {
		t.Fatal("config held after 404")
	}
	// A permanent error is one attempt: bad server name never leaves the process.
	if _, err := r.Resolve(ctx, "a.b"); err == nil || agentproto.Classify(err) != agentproto.ClassPermanent {
		t.Fatalf("bad id: %v", err)
	}
}

// TestResolverNeverTakesOlder answers from a lagging responder with an
// older revision; the held newer config is kept.
func TestResolverNeverTakesOlder(t *testing.T) {
	srv := natstest.RunServer(t)
	nc := srv.Connect()
	var reply atomic.Value
	sub, err := nc.Subscribe("mcp.v1.resolve.a7.github", func(m *nats.Msg) {
		b, _ := json.Marshal(reply.Load())
		m.Respond(b)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	mk := func(rev, asOf uint64, url string) agentproto.ResolveReply {
		return agentproto.ResolveReply{Agent: "a7", Server: "github", Scope: "global", Key: "global.github", Revision: rev,
			AsOf: kvconfig.AsOf{Configs: asOf}, Config: json.RawMessage(`{"url":"` + url + `"}`)}
	}
	r := newResolver(t, nc, "a7")
	ctx := context.Background()
	reply.Store(mk(9, 9, "https://new.example"))
	if res, err := r.Resolve(ctx, "github"); err != nil || res.Revision != 9 {
		t.Fatalf("%+v %v", res, err)
	}
	reply.Store(mk(4, 4, "https://old.example")) // a lagging supervisor replica
	res, err := r.Resolve(ctx, "github")
	if err != nil || res.Revision != 9 || res.Config.URL != "https://new.example" {
		t.Fatalf("older answer replaced the held config: %+v %v", res, err)
	}
	// A newer index that resolves to a less specific key (override deleted)
	// is accepted even though that key's revision is lower.
	reply.Store(agentproto.ResolveReply{Agent: "a7", Server: "github", Scope: "role:coder", Key: "role.coder.github", Revision: 3,
		AsOf: kvconfig.AsOf{Configs: 12}, Config: json.RawMessage(`{"url":"https://role.example"}`)})
	res, err = r.Resolve(ctx, "github")
	if err != nil || res.Key != "role.coder.github" || !res.Changed {
		t.Fatalf("fallback after delete not taken: %+v %v", res, err)
	}
	// The buckets were re-created (a new epoch): revisions start again, and
	// the lower ones of the new epoch are taken, not refused forever.
	epoch := func(rev, asOf uint64, ep, url string) agentproto.ResolveReply {
		rep := mk(rev, asOf, url)
		rep.AsOf.Epoch = ep
		return rep
	}
	reply.Store(epoch(20, 20, "e1", "https://e1.example"))
	if res, err = r.Resolve(ctx, "github"); err != nil || res.Revision != 20 {
		t.Fatalf("epoch e1: %+v %v", res, err)
	}
	reply.Store(epoch(1, 1, "e2", "https://e2.example"))
	if res, err = r.Resolve(ctx, "github"); err != nil || res.Revision != 1 || res.Config.URL != "https://e2.example" {
		t.Fatalf("an answer from the re-created buckets' epoch was refused: %+v %v", res, err)
	}
	reply.Store(epoch(0, 0, "e2", "https://lagging.example")) // same epoch, behind: still refused
	if res, err = r.Resolve(ctx, "github"); err != nil || res.Config.URL != "https://e2.example" {
		t.Fatalf("an older answer within one epoch replaced the held one: %+v %v", res, err)
	}
}

// TestResolverCacheSurvivesRestart: an agent restarted while the
// supervisor is down starts with its last known good configs from disk,
// marked stale; the file is private to the owner.
func TestResolverCacheSurvivesRestart(t *testing.T) {
	srv := natstest.RunServer(t)
	s := startSupervisor(t, srv)
	rev := putWait(t, s, "global.github", `{"url":"https://one.example/mcp","headers":{"Authorization":"Bearer t"}}`)
	nc := srv.Connect()
	cache := filepath.Join(t.TempDir(), "configs.json")
	mk := func() *agentproto.Resolver {
		r, err := agentproto.NewResolver(agentproto.ResolverConfig{Agent: "a7", Conn: func() *nats.Conn { return nc },
			Policy: fastPolicy(t), CacheFile: cache, Logger: zerolog.New(zerolog.NewTestWriter(t))})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	ctx := context.Background()
	if _, err := mk().Resolve(ctx, "github"); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(cache)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("cache file: %v %v", st, err)
	}
	s.Close() // the supervisor is down when the agent restarts
	r := mk()
	res, err := r.Resolve(ctx, "github")
	if err != nil || !res.Stale || res.Revision != rev || res.Config.Headers["Authorization"] != "Bearer t" {
		t.Fatalf("restarted agent: %+v %v", res, err)
	}
	// Back up: the first answer confirms it.
	startSupervisor(t, srv)
	res, err = r.Resolve(ctx, "github")
	if err != nil || res.Stale || res.Revision != rev {
		t.Fatalf("confirmed: %+v %v", res, err)
	}
	// A cache of another agent is refused loudly.
	if _, err := agentproto.NewResolver(agentproto.ResolverConfig{Agent: "b1", Conn: func() *nats.Conn { return nc }, CacheFile: cache}); err == nil {
		t.Fatal("another agent's cache accepted")
	}
}
