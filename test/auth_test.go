package test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/internal/natstest"
	"github.com/tether-dev/tether/internal/suptest"
	"github.com/tether-dev/tether/internal/tetherctl"
	"github.com/tether-dev/tether/supervisor"
	"github.com/tether-dev/tether/supervisor/auth"
	"github.com/tether-dev/tether/supervisor/fleet"
)

// TestEmbeddedAuthAlwaysOn: the embedded server refuses a client without
// credentials, generates its material once (0700/0600) and reuses it, and
// the supervisor, an operator and an agent with its own credentials work.
func TestEmbeddedAuthAlwaysOn(t *testing.T) {
	dir := t.TempDir()
	cfg := suptest.Embedded(t, dir)
	s := suptest.Start(t, cfg)
	url := s.ClientURL()
	if nc, err := nats.Connect(url, nats.MaxReconnects(0)); err == nil {
		nc.Close()
		t.Fatal("a client without credentials was accepted")
	} else if !errors.Is(err, nats.ErrAuthorization) {
		t.Logf("refused: %v", err)
	}
	ad := filepath.Join(dir, auth.DirName)
	if st, err := os.Stat(ad); err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("auth dir: %v %v", st.Mode(), err)
	}
	for _, f := range []string{auth.SupervisorFile, auth.OperatorFile, auth.ViewerFile} {
		if st, err := os.Stat(filepath.Join(ad, f)); err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v", f, st, err)
		}
	}
	opCreds, _ := os.ReadFile(filepath.Join(ad, auth.OperatorFile))
	op := natstest.Connect(t, url, nats.UserCredentials(filepath.Join(ad, auth.OperatorFile)))
	js, _ := jetstream.New(op)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, "mcp_configs")
	if err != nil {
		t.Fatal(err)
	}
	rev, err := kv.Put(ctx, "global.github", []byte(`{"url":"https://g.example/mcp"}`))
	if err != nil {
		t.Fatal(err)
	}
	waitApplied(t, s, rev)

	m, err := auth.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	creds, _, err := m.AgentCreds("a7", "")
	if err != nil {
		t.Fatal(err)
	}
	cf := filepath.Join(t.TempDir(), "a7.creds")
	if err := os.WriteFile(cf, creds, 0o600); err != nil {
		t.Fatal(err)
	}
	client := connectAgent(t, ctx, url, "a7", cf)
	if res, err := client.Resolve(ctx, "github"); err != nil || res.Revision != rev {
		t.Fatalf("agent resolve: %+v %v", res, err)
	}
	// A restart reuses the material: the same operator credentials work.
	s.Close()
	s2 := suptest.Start(t, cfg)
	again, _ := os.ReadFile(filepath.Join(ad, auth.OperatorFile))
	if string(again) != string(opCreds) {
		t.Fatal("operator credentials changed across a restart")
	}
	natstest.Connect(t, s2.ClientURL(), nats.UserCredentials(filepath.Join(ad, auth.OperatorFile)))
}

func tetherctlRun(t *testing.T, args ...string) (int, string) {
	t.Helper()
	var out, errb strings.Builder
	code := tetherctl.Run(context.Background(), args, &out, &errb)
	return code, out.String() + errb.String()
}

// addAgent issues id's credentials with tetherctl and returns their file.
func addAgent(t *testing.T, url, dir, id, role string) string {
	t.Helper()
	creds := filepath.Join(t.TempDir(), id+".creds")
	if code, out := tetherctlRun(t, "--nats-url", url, "--data-dir", dir, "agent", "add", id, "--role", role, "--out", creds); code != 0 {
		t.Fatalf("agent add %s: exit %d: %s", id, code, out)
	}
	return creds
}

// operatorConn connects as the operator of the data directory.
func operatorConn(t *testing.T, url, dir string) *nats.Conn {
	t.Helper()
	return natstest.Connect(t, url, nats.UserCredentials(filepath.Join(dir, auth.DirName, auth.OperatorFile)))
}

// connectAgent connects agent id with its own credentials.
func connectAgent(t *testing.T, ctx context.Context, url, id, creds string) *agentproto.Client {
	t.Helper()
	cfg := agentproto.DefaultConfig(id)
	cfg.URLs, cfg.CredsFile, cfg.SkipInitialResolve = url, creds, true
	cfg.Logger = zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	c, err := agentproto.Connect(ctx, cfg)
	if err != nil {
		t.Fatalf("connect agent %s: %v", id, err)
	}
	t.Cleanup(c.Close)
	return c
}

// operatorConfigs opens mcp_configs as the operator of the data directory.
func operatorConfigs(t *testing.T, url, dir string) jetstream.KeyValue {
	t.Helper()
	js, _ := jetstream.New(operatorConn(t, url, dir))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, "mcp_configs")
	if err != nil {
		t.Fatal(err)
	}
	return kv
}

// waitApplied waits until s's index holds configs revision rev.
func waitApplied(t *testing.T, s *supervisor.Supervisor, rev uint64) {
	t.Helper()
	natstest.CheckFor(t, 5*time.Second, 2*time.Millisecond, func() error {
		if s.Index().AsOf().Configs < rev {
			return errors.New("not applied yet")
		}
		return nil
	})
}

// TestAgentCredentialsAddListRevoke: tetherctl agent add issues working
// credentials and registers the role; a revoked agent is disconnected
// within 1 s and cannot connect again; an id like x.> never reaches a
// permission.
func TestAgentCredentialsAddListRevoke(t *testing.T) {
	dir := t.TempDir()
	s := suptest.Start(t, suptest.Embedded(t, dir))
	url := s.ClientURL()
	credsFile := filepath.Join(t.TempDir(), "a7.creds")
	if code, out := tetherctlRun(t, "--nats-url", url, "--data-dir", dir, "agent", "add", "a7", "--role", "coder", "--out", credsFile); code != 0 {
		t.Fatalf("agent add: exit %d: %s", code, out)
	}
	if st, err := os.Stat(credsFile); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("creds file: %v %v", st, err)
	}
	natstest.CheckFor(t, 5*time.Second, 2*time.Millisecond, func() error {
		if role, err := s.Index().Role("a7"); err != nil || role != "coder" {
			return fmt.Errorf("role %q %v", role, err)
		}
		return nil
	})
	if code, out := tetherctlRun(t, "--nats-url", url, "--data-dir", dir, "agent", "list"); code != 0 || !strings.Contains(out, "a7") || !strings.Contains(out, "coder") {
		t.Fatalf("agent list: exit %d: %s", code, out)
	}
	for _, bad := range []string{"x.>", "*", "a b", ""} {
		if code, out := tetherctlRun(t, "--nats-url", url, "--data-dir", dir, "agent", "add", bad, "--role", "coder", "--out", filepath.Join(t.TempDir(), "bad.creds")); code != 2 {
			t.Errorf("agent add %q: exit %d, want 2: %s", bad, code, out)
		}
	}
	if ids, _ := auth.Agents(dir); len(ids) != 1 || ids[0] != "a7" {
		t.Fatalf("agents issued: %v", ids)
	}

	var disconnected atomic.Int64
	nc := natstest.Connect(t, url, nats.UserCredentials(credsFile), nats.CustomInboxPrefix("_INBOX_a7"),
		nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond),
		nats.DisconnectErrHandler(func(*nats.Conn, error) { disconnected.CompareAndSwap(0, time.Now().UnixNano()) }))
	if m, err := nc.Request(subj.Resolve("a7", "github"), nil, 2*time.Second); err != nil || m.Header.Get(agentproto.HeaderServiceErrorCode) != "404" {
		t.Fatalf("a7's own resolve before the revoke: %v", err) // no config yet: a 404 proves the connection works
	}
	start := time.Now()
	if code, out := tetherctlRun(t, "--nats-url", url, "--data-dir", dir, "agent", "revoke", "a7"); code != 0 {
		t.Fatalf("agent revoke: exit %d: %s", code, out)
	}
	natstest.CheckFor(t, time.Second, 2*time.Millisecond, func() error {
		if disconnected.Load() == 0 {
			return errors.New("still connected")
		}
		return nil
	})
	took := time.Duration(disconnected.Load() - start.UnixNano())
	t.Logf("revoked agent disconnected %v after 'tetherctl agent revoke' started", took.Round(time.Millisecond))
	// It cannot come back: its reconnects are refused, and so is a new connection.
	deadline := time.Now().Add(500 * time.Millisecond)
	for time.Now().Before(deadline) {
		if nc.IsConnected() {
			t.Fatal("the revoked agent reconnected")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if c, err := nats.Connect(url, nats.UserCredentials(credsFile), nats.MaxReconnects(0)); err == nil {
		c.Close()
		t.Fatal("a revoked credential connected")
	}
	// The revocation survives a supervisor restart.
	s.Close()
	s2 := suptest.Start(t, suptest.Embedded(t, dir))
	if c, err := nats.Connect(s2.ClientURL(), nats.UserCredentials(credsFile), nats.MaxReconnects(0)); err == nil {
		c.Close()
		t.Fatal("a revoked credential connected after a restart")
	}
}

// TestAttackerAgentReachesNothingOfAnother: agent A, with its own
// generated credentials, tries every way the issue lists to reach victim
// B's configs, inbox, heartbeats and commands. Each attempt is denied by
// the server or refused by the supervisor, no byte of B's planted secrets
// reaches A, and B keeps working throughout.
func TestAttackerAgentReachesNothingOfAnother(t *testing.T) {
	dir := t.TempDir()
	s := suptest.Start(t, suptest.Embedded(t, dir))
	url := s.ClientURL()
	credsOf := map[string]string{"A": addAgent(t, url, dir, "A", "ra"), "B": addAgent(t, url, dir, "B", "rb")}
	const secret = "SECRET-of-B-3f9c2a"
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	kv := operatorConfigs(t, url, dir)
	var last uint64
	for key, val := range map[string]string{
		"agent.B.github":  `{"url":"https://b.example/mcp","headers":{"Authorization":"Bearer ` + secret + `-agent"}}`,
		"role.rb.jira":    `{"url":"https://jira.example/mcp","headers":{"Authorization":"Bearer ` + secret + `-role"}}`,
		"global.github":   `{"url":"https://global.example/mcp"}`,
		"global.calendar": `{"url":"https://cal.example/mcp"}`,
	} {
		last = natstest.KVPut(t, kv, key, val)
	}
	waitApplied(t, s, last)
	// B works before, during and after.
	b := connectAgent(t, ctx, url, "B", credsOf["B"])
	bWorks := func(when string) {
		t.Helper()
		res, err := b.Resolve(ctx, "github")
		if err != nil || res.Config == nil || res.Config.Headers["Authorization"] != "Bearer "+secret+"-agent" {
			t.Fatalf("B %s: %+v %v", when, res, err)
		}
	}
	bWorks("before")

	// Everything A receives, on any subscription, and every denial.
	var mu sync.Mutex
	var got [][]byte
	var denials []string
	a := natstest.Connect(t, url, nats.UserCredentials(credsOf["A"]), nats.CustomInboxPrefix("_INBOX_A"),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			mu.Lock()
			denials = append(denials, err.Error())
			mu.Unlock()
		}))
	keep := func(m *nats.Msg) {
		mu.Lock()
		got = append(got, append(append([]byte(m.Subject+" "), m.Data...), []byte(fmt.Sprint(m.Header))...))
		mu.Unlock()
	}
	attempts := 0
	try := func(f func() error) {
		attempts++
		if err := f(); err != nil {
			mu.Lock()
			denials = append(denials, err.Error())
			mu.Unlock()
		}
	}
	request := func(subject string, body []byte) func() error {
		return func() error {
			m, err := a.Request(subject, body, 300*time.Millisecond)
			if err == nil {
				keep(m)
			}
			return err
		}
	}
	for _, subject := range []string{
		subj.Resolve("B", "github"), subj.ResolveAll("B"), subj.Explain("B", "github"), subj.FleetStatus(),
		"$JS.API.STREAM.INFO.KV_mcp_configs", "$JS.API.DIRECT.GET.KV_mcp_configs.$KV.mcp_configs.agent.B.github",
		"$JS.API.CONSUMER.CREATE.KV_mcp_configs", "$KV.mcp_configs.agent.B.github", "$SYS.REQ.SERVER.PING",
	} {
		try(request(subject, nil))
	}
	try(request(subj.Resolve("A", "jira"), []byte(`{"agent":"B"}`))) // a forged body agent
	for _, subject := range []string{"_INBOX.>", "_INBOX_B.>", ">", subj.Command("B"), "$KV.mcp_configs.>", "$JS.>", subj.Heartbeat("B")} {
		try(func() error {
			sub, err := a.Subscribe(subject, keep)
			if err == nil {
				_ = a.Flush()
				_ = sub // a denied subscription is reported asynchronously
			}
			return err
		})
	}
	// Heartbeats and commands as B.
	try(func() error {
		return a.Publish(subj.Heartbeat("B"), []byte(`{"agent":"B","instance":"x","seq":18446744073709551615,"goodbye":true}`))
	})
	try(func() error { return a.Publish(subj.Command("B"), []byte(`{"id":"x","type":"reconnect"}`)) })
	// A's own resolves with hostile reply subjects: the supervisor refuses them.
	spy := operatorConn(t, url, dir)
	leaked := make(chan *nats.Msg, 64)
	for _, subject := range []string{"$KV.mcp_configs.>", "$JS.API.>", subj.Heartbeat("B"), subj.Command("B"), "_INBOX_B.hb"} {
		if _, err := spy.ChanSubscribe(subject, leaked); err != nil {
			t.Fatal(err)
		}
	}
	_ = spy.Flush()
	for _, reply := range []string{"$KV.mcp_configs.agent.B.github", "$JS.API.STREAM.DELETE.KV_mcp_configs", subj.Heartbeat("B"), subj.Command("B"), "_INBOX_B.hb"} {
		try(func() error { return a.PublishRequest(subj.Resolve("A", "github"), reply, nil) })
	}
	try(request(subj.Resolve("A", "github"), nil)) // A's own, on its own inbox: answered
	bWorks("after the attacks")
	_ = a.Flush()
	_ = spy.Flush()

	mu.Lock()
	defer mu.Unlock()
	for _, g := range got {
		if bytes.Contains(g, []byte(secret)) {
			t.Errorf("B's secret reached A: %.200s", g)
		}
	}
	for len(leaked) > 0 {
		m := <-leaked
		if strings.HasPrefix(m.Subject, "$JS.API.") && !bytes.Contains(m.Data, []byte("global.example")) {
			continue // the supervisor's and B's own JetStream traffic, not a reply to A
		}
		if m.Subject == subj.Heartbeat("B") && !bytes.Contains(m.Data, []byte("global.example")) {
			continue // B's own heartbeats
		}
		t.Errorf("a reply to A's request landed on %s: %.120s", m.Subject, m.Data)
	}
	own := 0
	for _, g := range got {
		if bytes.HasPrefix(g, []byte("_INBOX_A")) && bytes.Contains(g, []byte("global.example")) {
			own++
		}
	}
	if own != 1 {
		t.Errorf("A's own resolve answered %d times, want 1", own)
	}
	t.Logf("%d attempts by A; %d denials or refusals reported to A; %d messages A received; 0 bytes of B's secret among them",
		attempts, len(denials), len(got))
}

// TestViewerReadsTheFleetOnly: the viewer credentials call fleet.status and
// watch mcp_fleet on the viewers' own inbox, but read no config value —
// not even the replies to the supervisor's and an operator's reads, on the
// shared inbox — and write nothing.
func TestViewerReadsTheFleetOnly(t *testing.T) {
	dir := t.TempDir()
	s := suptest.Start(t, suptest.Embedded(t, dir))
	viewerCreds := nats.UserCredentials(filepath.Join(dir, auth.DirName, auth.ViewerFile))
	quiet := nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {})
	snoop := natstest.Connect(t, s.ClientURL(), viewerCreds, quiet)
	seen := make(chan *nats.Msg, 1024)
	for _, subject := range []string{"_INBOX.>", ">", "$KV.>"} {
		_, _ = snoop.ChanSubscribe(subject, seen) // refused by the server
	}
	_ = snoop.Flush()
	kv := operatorConfigs(t, s.ClientURL(), dir)
	rev := natstest.KVPut(t, kv, "global.github", `{"url":"https://g.example/mcp","headers":{"Authorization":"Bearer viewer-must-not-see"}}`)
	waitApplied(t, s, rev) // the supervisor's watcher delivered it, on its inbox
	if _, err := kv.Get(context.Background(), "global.github"); err != nil {
		t.Fatal(err) // an operator's read, answered on its inbox
	}
	_ = snoop.Flush()
	for len(seen) > 0 {
		m := <-seen
		t.Errorf("a viewer received %s: %.120s", m.Subject, m.Data)
	}
	viewer := natstest.Connect(t, s.ClientURL(), viewerCreds, nats.CustomInboxPrefix(auth.ViewerInboxPrefix), quiet)
	if _, e := natstest.Request(t, viewer, subj.FleetStatus(), nil); e != nil {
		t.Fatalf("viewer fleet.status: %+v", e)
	}
	if _, e := natstest.Request(t, viewer, subj.Explain("a7", "github"), nil); e != nil && e.Code != "404" {
		t.Fatalf("viewer explain: %+v", e)
	}
	js, _ := jetstream.New(viewer)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	fleetKV, err := js.KeyValue(ctx, "mcp_fleet")
	if err != nil {
		t.Fatalf("viewer opens mcp_fleet: %v", err)
	}
	w, err := fleetKV.WatchAll(ctx)
	if err != nil {
		t.Fatalf("viewer watches mcp_fleet: %v", err)
	}
	select {
	case <-w.Updates(): // the initial-values marker: the watch works
	case <-ctx.Done():
		t.Fatal("viewer's mcp_fleet watch delivered nothing")
	}
	_ = w.Stop()
	short, scancel := context.WithTimeout(ctx, time.Second)
	defer scancel()
	if _, err := fleetKV.Put(short, "x", []byte("{}")); err == nil {
		t.Error("viewer wrote mcp_fleet")
	}
	if _, err := js.KeyValue(short, "mcp_configs"); err == nil {
		t.Error("viewer opened mcp_configs")
	}
	if _, err := viewer.Request(subj.Resolve("a7", "github"), nil, 300*time.Millisecond); err == nil {
		t.Error("viewer resolved a config")
	}
	// tetherctl takes the viewers' inbox from the credentials.
	for _, args := range [][]string{{"fleet"}, {"explain", "a7", "github"}} {
		code, out := tetherctlRun(t, append([]string{"--nats-url", s.ClientURL(), "--creds", filepath.Join(dir, auth.DirName, auth.ViewerFile), "--timeout", "2s"}, args...)...)
		if code != 0 || !strings.Contains(out, "global.github") && args[0] == "explain" {
			t.Errorf("tetherctl %s as a viewer: exit %d: %s", args[0], code, out)
		}
	}
}

// TestExternalNATSFromTetherctlAuth: a nats-server started from exactly
// what 'tetherctl auth' prints trusts Tether's operator: the supervisor
// connects with supervisor.creds, an agent with its own credentials
// resolves, a client without credentials is refused, and a revocation
// reaches the server.
func TestExternalNATSFromTetherctlAuth(t *testing.T) {
	dir := t.TempDir()
	code, out := tetherctlRun(t, "--data-dir", dir, "auth", "--resolver-dir", filepath.Join(t.TempDir(), "jwt"))
	if code != 0 {
		t.Fatalf("tetherctl auth: %s", out)
	}
	conf := filepath.Join(t.TempDir(), "nats.conf")
	if err := os.WriteFile(conf, []byte(out+"\nport: -1\nhost: 127.0.0.1\njetstream: {store_dir: "+strconv.Quote(t.TempDir())+"}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(conf)
	if err != nil {
		t.Fatalf("nats-server rejects the printed configuration: %v\n%s", err, out)
	}
	opts.NoLog, opts.NoSigs = true, true
	ns, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("server not ready")
	}
	url := ns.ClientURL()
	if c, err := nats.Connect(url, nats.MaxReconnects(0)); err == nil {
		c.Close()
		t.Fatal("a client without credentials was accepted")
	}
	cfg := suptest.Config(t, url)
	cfg.CredsFile = filepath.Join(dir, auth.DirName, auth.SupervisorFile)
	s := suptest.Start(t, cfg)
	creds := addAgent(t, url, dir, "e1", "r")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rev := natstest.KVPut(t, operatorConfigs(t, url, dir), "global.github", `{"url":"https://g.example/mcp"}`)
	waitApplied(t, s, rev)
	client := connectAgent(t, ctx, url, "e1", creds)
	if res, err := client.Resolve(ctx, "github"); err != nil || res.Revision != rev {
		t.Fatalf("agent on the external server: %+v %v", res, err)
	}
	if code, out := tetherctlRun(t, "--nats-url", url, "--data-dir", dir, "agent", "revoke", "e1"); code != 0 {
		t.Fatalf("agent revoke: %s", out)
	}
	if c, err := nats.Connect(url, nats.UserCredentials(creds), nats.MaxReconnects(0)); err == nil {
		c.Close()
		t.Fatal("a revoked credential connected to the external server")
	}
}

// TestSupervisorNeedsNothingBeyondItsPermissions runs the supervisor's
// whole job on the embedded server — heartbeats, probes, a config push and
// the agent's re-resolve, resolveall, explain, fleet.status, mcp_fleet
// writes, lease renewals, KV watcher progress checks after a compaction —
// and checks that NATS refused none of its own publishes or subscriptions.
func TestSupervisorNeedsNothingBeyondItsPermissions(t *testing.T) {
	dir := t.TempDir()
	cfg := suptest.Embedded(t, dir)
	suptest.FastFleet(&cfg)
	cfg.LeaseTTL = 300 * time.Millisecond
	s := suptest.Start(t, cfg)
	url := s.ClientURL()
	creds := addAgent(t, url, dir, "w1", "r")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	kv := operatorConfigs(t, url, dir)
	natstest.KVPut(t, kv, "global.github", `{"url":"https://g1.example/mcp"}`)
	natstest.KVPut(t, kv, "global.old", `{"url":"https://old.example/mcp"}`)
	ac := faultConfig(t, url, "w1")
	ac.CredsFile, ac.SkipInitialResolve = creds, false
	client := startAgent(t, ac)
	pushed := make(chan uint64, 16)
	client.OnConfigChange(func(r agentproto.Resolved) error {
		if r.Server == "github" {
			pushed <- r.Revision
		}
		return nil
	})
	natstest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if st, ok := s.Fleet().Agent("w1"); !ok || st.State != fleet.StateHealthy || st.Configs["github"].Revision == 0 {
			return fmt.Errorf("w1: %+v %v", st, ok)
		}
		return nil
	})
	rev := natstest.KVPut(t, kv, "global.github", `{"url":"https://g2.example/mcp"}`) // pushed to w1
	for got := uint64(0); got != rev; {
		select {
		case got = <-pushed: // earlier revisions may still be in the channel
		case <-ctx.Done():
			t.Fatalf("the config push never reached w1 (last applied %d, want %d)", got, rev)
		}
	}
	if err := kv.Delete(ctx, "global.old"); err != nil {
		t.Fatal(err)
	}
	if err := kv.PurgeDeletes(ctx, jetstream.DeleteMarkersOlderThan(-1)); err != nil {
		t.Fatal(err)
	}
	if _, e := natstest.Request(t, operatorConn(t, url, dir), subj.Explain("w1", "github"), nil); e != nil {
		t.Fatalf("explain: %+v", e)
	}
	viewer := natstest.Connect(t, url, nats.UserCredentials(filepath.Join(dir, auth.DirName, auth.ViewerFile)), nats.CustomInboxPrefix(auth.ViewerInboxPrefix))
	if _, e := natstest.Request(t, viewer, subj.FleetStatus(), nil); e != nil {
		t.Fatalf("fleet.status: %+v", e)
	}
	if _, err := client.ResolveAll(ctx); err != nil {
		t.Fatal(err)
	}
	// Long enough for lease renewals, mcp_fleet writes, probes and watcher checks.
	deadline := time.Now().Add(1500 * time.Millisecond)
	for time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if !s.IsLeader() {
		t.Fatal("the supervisor lost its lease")
	}
	if v := suptest.Value(suptest.Gather(s), "tether_nats_permission_errors_total", nil); v != 0 {
		t.Fatalf("NATS refused %v of the supervisor's own operations (see the log for the subjects)", v)
	}
	if v := suptest.Value(suptest.Gather(s), "tether_probes_sent_total", nil); v < 3 {
		t.Fatalf("only %v probes sent", v)
	}
}
