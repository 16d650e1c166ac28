package test

// Secrets are masked everywhere people look (issue 12): one test plants a
// distinct marker in every secret position of a config, runs a real
// supervisor, a real agent and every tool, and greps every output for
// every marker. Only the agent's own resolve replies and --show-secrets
// may show them, and the test checks that they do.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/internal/natstest"
	"github.com/tether-dev/tether/internal/suptest"
	"github.com/tether-dev/tether/supervisor"
	"github.com/tether-dev/tether/supervisor/auth"
	"github.com/tether-dev/tether/supervisor/fleet"
)

// secretTag is in every marker, so that a marker shown only in part is
// still caught.
const secretTag = "7Qv1k"

// marker is a planted secret and where it is planted.
type marker struct{ where, value string }

// secretMarkers are the planted config secrets.
var secretMarkers = []marker{
	{"env value", "zzEnv7Qv1k"},
	{"header value", "zzHdr7Qv1k"},
	{"url user", "zzUsr7Qv1k"},
	{"url password", "zzPwd7Qv1k"},
	{"url query value", "zzQry7Qv1k"},
	{"url fragment", "zzFrg7Qv1k"},
	{"url path segment with a key prefix", "zzKey7Qv1k"},
	{"url path segment of 16+ letters and digits", "zzTok7Qv1k3m9x2p"},
	{"args entry", "zzArg7Qv1k"},
	{"args --flag=value", "zzFlg7Qv1k"},
	{"a shadowed config's header", "zzShd7Qv1k"},
	{"an invalid url's password", "zzBpw7Qv1k"},
	{"an invalid url's path key", "zzBky7Qv1k"},
	{"an invalid url's query value", "zzBqy7Qv1k"},
	{"an invalid url's fragment", "zzBfr7Qv1k"},
	{"an invalid config's env value", "zzBen7Qv1k"},
	{"a refused command's args", "zzRar7Qv1k"},
}

// The commands the test agent may start.
const secretsCommand = "/usr/bin/github-mcp-server"

// secretConfigs are the values written, by key: the agent a7 (role
// coder) resolves github from its agent scope, remote from its role (the
// global one is shadowed), and three entries that fail.
var secretConfigs = map[string]string{
	"agent.a7.github": `{"command":"` + secretsCommand + `","args":["stdio","--token","zzArg7Qv1k","--api-key=zzFlg7Qv1k"],"env":{"GITHUB_TOKEN":"zzEnv7Qv1k"}}`,
	"role.coder.remote": `{"url":"https://zzUsr7Qv1k:zzPwd7Qv1k@mcp.example.com/mcp/sk-zzKey7Qv1k/hooks/zzTok7Qv1k3m9x2p?token=zzQry7Qv1k#zzFrg7Qv1k",` +
		`"headers":{"Authorization":"Bearer zzHdr7Qv1k"},"timeout":"30s"}`,
	"global.remote":      `{"url":"https://global.example.com/mcp","headers":{"X-Api-Key":"zzShd7Qv1k"}}`,
	"role.coder.broken":  `{"transport":"http","url":"ftp://ops:zzBpw7Qv1k@h.example/x/sk-zzBky7Qv1k?k=zzBqy7Qv1k#zzBfr7Qv1k"}`,
	"role.coder.typo":    `{"command":"` + secretsCommand + `","env":{"K":"zzBen7Qv1k"},"timout":"1s"}`,
	"role.coder.refused": `{"command":"/bin/sh","args":["-c","curl -H zzRar7Qv1k"]}`,
}

// secretServers are every server a7 sees.
var secretServers = []string{"broken", "github", "refused", "remote", "typo"}

// outputs collects what each output showed, by name.
type outputs struct {
	mu   sync.Mutex
	byOf map[string][]byte
}

func (o *outputs) add(name string, data []byte) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.byOf == nil {
		o.byOf = map[string][]byte{}
	}
	o.byOf[name] = append(o.byOf[name], data...)
}

// lacksSecrets fails for every output that shows any marker (in any case),
// the tag alone, or a percent-encoded mask.
func (o *outputs) lacksSecrets(t *testing.T, markers []marker) {
	t.Helper()
	o.mu.Lock()
	defer o.mu.Unlock()
	names := make([]string, 0, len(o.byOf))
	for n := range o.byOf {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		low := strings.ToLower(string(o.byOf[n]))
		for _, m := range markers {
			if i := strings.Index(low, strings.ToLower(m.value)); i >= 0 {
				t.Errorf("%s shows the %s: …%s…", n, m.where, excerpt(o.byOf[n], i))
			}
		}
		if i := strings.Index(low, strings.ToLower(secretTag)); i >= 0 {
			t.Errorf("%s shows part of a secret: …%s…", n, excerpt(o.byOf[n], i))
		}
		if i := strings.Index(low, "%2a%2a"); i >= 0 {
			t.Errorf("%s shows a percent-encoded mask: …%s…", n, excerpt(o.byOf[n], i))
		}
	}
	t.Logf("%d outputs checked for %d planted secrets: %s", len(names), len(markers), strings.Join(names, "; "))
}

func excerpt(b []byte, i int) string {
	return string(b[max(0, i-100):min(len(b), i+60)])
}

// showsAll fails unless data shows every marker value given.
func showsAll(t *testing.T, what string, data []byte, values ...string) {
	t.Helper()
	for _, v := range values {
		if !strings.Contains(string(data), v) {
			t.Errorf("%s does not show %s: the check would pass vacuously\n%.600s", what, v, data)
		}
	}
}

// TestSecretsMaskedInEveryOutput is the whole check: every marker is in
// the raw values written, in the agent's own resolve replies and in
// --show-secrets output, and in none of the logs (supervisor and agent,
// debug level), mcp_fleet, explain, fleet.status, the dashboard (JSON,
// events, pages, the page a real browser renders), /metrics, tetherctl
// (get, put, history, rollback, validate, resolve, explain, fleet, import
// diff; human and --json), or anything a viewer or another agent receives.
func TestSecretsMaskedInEveryOutput(t *testing.T) {
	for _, m := range secretMarkers {
		found := false
		for _, v := range secretConfigs {
			found = found || strings.Contains(v, m.value)
		}
		if !found {
			t.Fatalf("marker %s (%s) is planted nowhere", m.value, m.where)
		}
	}
	var out outputs
	var supLog, agentLog syncBuffer
	dir := t.TempDir()
	cfg := suptest.Embedded(t, dir)
	suptest.FastFleet(&cfg)
	cfg.HTTPAddr = "127.0.0.1:0"
	cfg.Logger = zerolog.New(&supLog).Level(zerolog.DebugLevel)
	s := suptest.Start(t, cfg)
	url := s.ClientURL()
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()

	a7Creds := addAgent(t, url, dir, "a7", "coder")
	a8Creds := addAgent(t, url, dir, "a8", "other")
	observe := watchAsObservers(t, &out, url, dir, a8Creds) // before anything is written

	kv := operatorConfigs(t, url, dir)
	var last uint64
	for _, key := range sortedKeysOf(secretConfigs) {
		last = natstest.KVPut(t, kv, key, secretConfigs[key])
	}
	waitApplied(t, s, last)

	acfg := faultConfig(t, url, "a7")
	acfg.CredsFile, acfg.SkipInitialResolve = a7Creds, false
	acfg.AllowCommands = []string{secretsCommand}
	acfg.Logger = zerolog.New(&agentLog).Level(zerolog.DebugLevel)
	agent := startAgent(t, acfg)
	waitFleetRecord(t, ctx, s, url, dir)
	agentOwnReplies(t, ctx, agent, url, a7Creds)

	collectTetherctl(t, &out, url, dir)
	collectNATS(t, ctx, &out, url, dir)
	collectHTTP(t, ctx, &out, s.HTTPAddr())
	t.Run("browser", func(t *testing.T) { collectBrowser(t, ctx, &out, s.HTTPAddr()) })
	observe()

	out.add("supervisor log (debug)", []byte(supLog.String()))
	out.add("agent log (debug)", []byte(agentLog.String()))
	if !strings.Contains(supLog.String(), `"level":"debug"`) || !strings.Contains(supLog.String(), "role.coder.broken") {
		t.Errorf("the supervisor's debug log is not captured: %.300s", supLog.String())
	}
	out.lacksSecrets(t, secretMarkers)
}

func sortedKeysOf(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// waitFleetRecord waits until the supervisor tracks a7 healthy with every
// server reported, and mcp_fleet holds its record.
func waitFleetRecord(t *testing.T, ctx context.Context, s *supervisor.Supervisor, url, dir string) {
	t.Helper()
	natstest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		st, ok := s.Fleet().Agent("a7")
		if !ok || st.State != fleet.StateHealthy || st.Configs["remote"].Revision == 0 || st.Configs["refused"].Error == "" {
			return fmt.Errorf("a7: %+v %v", st, ok)
		}
		return nil
	})
	js, _ := jetstream.New(operatorConn(t, url, dir))
	fkv, err := js.KeyValue(ctx, "mcp_fleet")
	if err != nil {
		t.Fatal(err)
	}
	natstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		e, err := fkv.Get(ctx, "a7")
		if err != nil || !strings.Contains(string(e.Value()), `"refused"`) {
			return fmt.Errorf("mcp_fleet a7: %v", err)
		}
		return nil
	})
}

// agentOwnReplies: the agent gets the real values, raw and decoded.
func agentOwnReplies(t *testing.T, ctx context.Context, agent *agentproto.Client, url, creds string) {
	t.Helper()
	res, err := agent.Resolve(ctx, "remote")
	if err != nil || res.Config == nil || res.Config.Headers["Authorization"] != "Bearer zzHdr7Qv1k" {
		t.Fatalf("the agent's own resolve of remote: %+v %v", res, err)
	}
	nc := natstest.Connect(t, url, nats.UserCredentials(creds), nats.CustomInboxPrefix(agentproto.InboxPrefix("a7")))
	for _, sub := range []string{subj.Resolve("a7", "remote"), subj.Resolve("a7", "github"), subj.ResolveAll("a7")} {
		m, e := natstest.Request(t, nc, sub, nil)
		if e != nil {
			t.Fatalf("a7's own %s: %+v", sub, e)
		}
		if sub != subj.Resolve("a7", "github") {
			showsAll(t, "a7's own "+sub+" reply", m.Data, "zzUsr7Qv1k", "zzPwd7Qv1k", "sk-zzKey7Qv1k", "zzTok7Qv1k3m9x2p", "zzQry7Qv1k", "zzFrg7Qv1k", "zzHdr7Qv1k")
		}
		if sub != subj.Resolve("a7", "remote") {
			showsAll(t, "a7's own "+sub+" reply", m.Data, "zzEnv7Qv1k", "zzArg7Qv1k", "zzFlg7Qv1k")
		}
	}
}

// watchAsObservers records everything a viewer and another agent (a8)
// receive on every subscription they are allowed, from now on; the
// returned function makes their requests for a7's configs and then records
// what they received.
func watchAsObservers(t *testing.T, out *outputs, url, dir, a8Creds string) func() {
	t.Helper()
	quiet := nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}) // denials are expected
	conns := map[string]*nats.Conn{
		"viewer": natstest.Connect(t, url, nats.UserCredentials(filepath.Join(dir, auth.DirName, auth.ViewerFile)),
			nats.CustomInboxPrefix(auth.ViewerInboxPrefix), quiet),
		"agent a8": natstest.Connect(t, url, nats.UserCredentials(a8Creds), nats.CustomInboxPrefix(agentproto.InboxPrefix("a8")), quiet),
	}
	got := map[string]chan *nats.Msg{}
	for who, nc := range conns {
		got[who] = make(chan *nats.Msg, 1<<14)
		for _, s := range []string{">", "_INBOX.>", "_INBOX_a7.>", "_INBOX_a8.>", "$KV.>", "$JS.>", "mcp.>"} {
			_, _ = nc.ChanSubscribe(s, got[who]) // the server refuses the denied ones
		}
		_ = nc.Flush()
	}
	record := func(name string, m *nats.Msg) {
		out.add(name, []byte(m.Subject+" "+fmt.Sprint(m.Header)+" "+string(m.Data)+"\n"))
	}
	return func() {
		for who, nc := range conns {
			for _, s := range []string{subj.Resolve("a7", "remote"), subj.Resolve("a7", "github"), subj.ResolveAll("a7"),
				subj.Explain("a7", "broken"), subj.Explain("a7", "remote"), subj.FleetStatus()} {
				if m, err := nc.Request(s, nil, 300*time.Millisecond); err == nil {
					record(who+"'s requests", m)
				}
			}
			_ = nc.Flush() // a channel subscription has every message sent before the flush's answer
			n := 0
			for len(got[who]) > 0 {
				record(who+"'s subscriptions", <-got[who])
				n++
			}
			t.Logf("%s received %d messages on its subscriptions", who, n)
		}
	}
}

// TestNATSURLCredentialsMasked: a NATS URL's userinfo (a password, or a
// token as the user) is masked wherever it is printed: the supervisor's
// and the agent's logs (ready, reconnected), and the errors of the
// supervisor, agentproto and tetherctl when they cannot connect.
func TestNATSURLCredentialsMasked(t *testing.T) {
	const pw, token = "zzNpw7Qv1k", "zzNtk7Qv1k"
	var out outputs
	for _, tc := range []struct {
		name, userinfo string
		auth           func(*server.Options)
	}{
		{"user and password", "sup:" + pw, func(o *server.Options) { o.Users = []*server.User{{Username: "sup", Password: pw}} }},
		{"token", token, func(o *server.Options) { o.Authorization = token }},
	} {
		srv := natstest.RunServer(t, natstest.WithOptions(tc.auth))
		u := "nats://" + tc.userinfo + "@127.0.0.1:" + strconv.Itoa(srv.Port)
		var supLog, agentLog syncBuffer
		cfg := suptest.Config(t, u)
		cfg.Logger = zerolog.New(&supLog).Level(zerolog.DebugLevel)
		rctx, stop := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- supervisor.Run(rctx, cfg) }() // Run logs "supervisor ready"
		natstest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
			if !strings.Contains(supLog.String(), "supervisor ready") {
				return errors.New("not ready yet")
			}
			return nil
		})
		acfg := faultConfig(t, u, "n1")
		acfg.Logger = zerolog.New(&agentLog).Level(zerolog.DebugLevel)
		agent := startAgent(t, acfg)
		srv.Restart()
		natstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
			if !strings.Contains(supLog.String(), "nats reconnected") || !strings.Contains(agentLog.String(), "agentproto: reconnected") {
				return errors.New("not reconnected yet")
			}
			return nil
		})
		agent.Close()
		stop()
		<-done
		if want := `"nats":"nats://****@127.0.0.1:`; !strings.Contains(supLog.String(), want) {
			t.Errorf("the supervisor's log lacks %q", want)
		}
		out.add("supervisor log (debug), "+tc.name+" in the URL", []byte(supLog.String()))
		out.add("agent log (debug), "+tc.name+" in the URL", []byte(agentLog.String()))
	}

	// Nothing listens here: every client fails to connect and says where.
	dead := "127.0.0.1:" + strconv.Itoa(freeTCPPort(t))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, u := range []string{"nats://sup:" + pw + "@" + dead, "nats://" + token + "@" + dead, "nats://" + dead + ",nats://" + token + "@" + dead} {
		if _, err := supervisor.Start(ctx, suptest.Config(t, u)); err == nil || !strings.Contains(err.Error(), dead) {
			t.Errorf("supervisor.Start on %s: %v", dead, err)
		} else {
			out.add("supervisor.Start error", []byte(err.Error()+"\n"))
		}
		ac := faultConfig(t, u, "n2")
		ac.Logger = zerolog.Nop() // it retries until the deadline
		actx, acancel := context.WithTimeout(ctx, 300*time.Millisecond)
		_, err := agentproto.Connect(actx, ac)
		acancel()
		if err == nil || !strings.Contains(err.Error(), dead) {
			t.Errorf("agentproto.Connect on %s: %v", dead, err)
		} else {
			out.add("agentproto.Connect error", []byte(err.Error()+"\n"))
		}
		code, got := tetherctlRun(t, "--nats-url", u, "--timeout", "500ms", "get", "global", "x")
		if code == 0 || !strings.Contains(got, dead) {
			t.Errorf("tetherctl on %s: exit %d: %s", dead, code, got)
		}
		out.add("tetherctl connect error", []byte(got))
	}
	out.lacksSecrets(t, []marker{{"NATS URL password", pw}, {"NATS URL token", token}})
}

// freeTCPPort is a loopback port nothing listens on.
func freeTCPPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
