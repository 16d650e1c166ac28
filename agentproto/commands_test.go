package agentproto

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/tether-dev/tether/internal/natstest"
)

func TestCommandProbeAck(t *testing.T) {
	srv := natstest.RunServer(t, natstest.WithoutJetStream())
	sup := watchHeartbeats(t, srv, "p1")
	connect(t, testConfig(t, srv.URL(), "p1"))
	sup.waitHB(t, 0, func(Heartbeat) bool { return true })

	sup.send(t, "p1", Command{ID: "c1", Type: CmdProbe, Nonce: "n1"})
	hb := sup.waitHB(t, 0, func(hb Heartbeat) bool { return hb.ProbeAck == "n1" })
	if !slices.Contains(hb.Acks, "c1") {
		t.Fatalf("probe heartbeat acks %v, want c1", hb.Acks)
	}
	// The nonce is repeated until a newer one; the ack is not.
	_, n := sup.last()
	hb = sup.waitHB(t, n, func(Heartbeat) bool { return true })
	if hb.ProbeAck != "n1" || len(hb.Acks) != 0 {
		t.Fatalf("next heartbeat probe_ack %q acks %v", hb.ProbeAck, hb.Acks)
	}
	sup.send(t, "p1", Command{ID: "c2", Type: CmdProbe, Nonce: "n2"})
	sup.waitHB(t, n, func(hb Heartbeat) bool { return hb.ProbeAck == "n2" })

	// A probe as a heartbeat reply is acknowledged but never answered.
	_, n = sup.last()
	sup.mu.Lock()
	sup.next = func(*Heartbeat) *Command { return &Command{ID: "c3", Type: CmdProbe, Nonce: "zombie"} }
	sup.mu.Unlock()
	hb = sup.waitHB(t, n, func(hb Heartbeat) bool { return slices.Contains(hb.Acks, "c3") })
	if hb.ProbeAck != "n2" {
		t.Fatalf("probe via heartbeat reply answered: probe_ack %q", hb.ProbeAck)
	}
}

func TestCommandDuplicateUnknownInvalid(t *testing.T) {
	srv := natstest.RunServer(t, natstest.WithoutJetStream())
	sup := watchHeartbeats(t, srv, "d1")
	c := connect(t, testConfig(t, srv.URL(), "d1"))
	sup.send(t, "d1", Command{ID: "x1", Type: CmdProbe, Nonce: "n1"})
	sup.waitHB(t, 0, func(hb Heartbeat) bool { return slices.Contains(hb.Acks, "x1") })
	_, n := sup.last()
	sup.send(t, "d1", Command{ID: "x1", Type: CmdProbe, Nonce: "n-dup"}) // re-sent: ack, ignore
	sup.send(t, "d1", Command{ID: "x2", Type: "selfdestruct"})           // unknown: ack, ignore
	if err := sup.nc.Publish(Subjects{}.Command("d1"), []byte(`{"id":`)); err != nil {
		t.Fatal(err)
	}
	if err := sup.nc.Publish(Subjects{}.Command("d1"), []byte(`{"id":7,"type":"probe"}`)); err != nil {
		t.Fatal(err)
	}
	acked := map[string]bool{}
	sup.waitHB(t, n, func(hb Heartbeat) bool {
		for _, id := range hb.Acks {
			acked[id] = true
		}
		return acked["x1"] && acked["x2"]
	})
	natstest.CheckFor(t, 2*time.Second, 5*time.Millisecond, func() error {
		st := c.Stats()
		if st.DuplicateCommands != 1 || st.UnknownCommands != 1 || st.InvalidCommands != 2 || st.Commands != 1 {
			return fmt.Errorf("stats %+v", st)
		}
		return nil
	})
	if hb, _ := sup.last(); hb.ProbeAck != "n1" {
		t.Fatalf("duplicate id changed probe_ack to %q", hb.ProbeAck)
	}
	if c.State() != StateConnected {
		t.Fatalf("state %v", c.State())
	}
}

func TestCommandReconnectViaReplyHonoursNotBefore(t *testing.T) {
	srv := natstest.RunServer(t, natstest.WithoutJetStream())
	sup := watchHeartbeats(t, srv, "r1")
	c := connect(t, testConfig(t, srv.URL(), "r1"))
	sup.waitHB(t, 0, func(Heartbeat) bool { return true })
	const wait = 300 * time.Millisecond
	var sentAt atomic.Int64
	sup.mu.Lock()
	sup.next = func(*Heartbeat) *Command {
		nb := time.Now().Add(wait)
		sentAt.Store(time.Now().UnixNano())
		return &Command{ID: "rc1", Type: CmdReconnect, Reason: "test", NotBefore: nb.UTC().Format(time.RFC3339Nano)}
	}
	sup.mu.Unlock()
	sup.waitHB(t, 0, func(hb Heartbeat) bool { return slices.Contains(hb.Acks, "rc1") })
	var rebuiltAt time.Time
	natstest.CheckFor(t, 3*time.Second, time.Millisecond, func() error {
		if c.Stats().Rebuilds < 1 {
			return errors.New("not rebuilt yet")
		}
		rebuiltAt = time.Now()
		return nil
	})
	after := rebuiltAt.Sub(time.Unix(0, sentAt.Load()))
	t.Logf("reconnect command with not_before +%v: rebuilt %v after sending, rebuild took %v", wait, after, c.Stats().LastRebuild)
	if after < wait {
		t.Fatalf("rebuilt %v after the command, before its not_before (%v)", after, wait)
	}
	_, n := sup.last()
	hb := sup.waitHB(t, n, func(hb Heartbeat) bool { return hb.Conn.Reconnects >= 1 })
	if hb.Conn.State != ConnConnected || c.Stats().Rebuilds != 1 {
		t.Fatalf("after rebuild: %+v, stats %+v", hb.Conn, c.Stats())
	}
}

// fakeResolver answers resolve and resolveall for agent's one server,
// github, at revision *rev.
func fakeResolver(t *testing.T, srv *natstest.Server, agent string, rev *atomic.Uint64) {
	nc := srv.Connect()
	config := func() (uint64, json.RawMessage) {
		r := rev.Load()
		return r, json.RawMessage(fmt.Sprintf(`{"url":"https://r%d.example/mcp"}`, r))
	}
	_, err := nc.Subscribe(Subjects{}.Resolve(agent, "github"), func(m *nats.Msg) {
		r, cfg := config()
		data, _ := json.Marshal(ResolveReply{Agent: agent, Server: "github", Scope: ScopeGlobal, Key: "global.github",
			Revision: r, Config: cfg})
		_ = m.Respond(data)
	})
	if err != nil {
		t.Fatal(err)
	}
	_, err = nc.Subscribe(Subjects{}.ResolveAll(agent), func(m *nats.Msg) {
		r, cfg := config()
		data, _ := json.Marshal(ResolveAllReply{Agent: agent, Servers: map[string]ResolveResult{
			"github": {Scope: ScopeGlobal, Key: "global.github", Revision: r, Config: cfg}}})
		_ = m.Respond(data)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
}

// An agent started while its supervisor is away keeps resolving with
// backoff and reports the configs once the supervisor answers.
func TestInitialResolveRetriesUntilSupervisor(t *testing.T) {
	srv := natstest.RunServer(t, natstest.WithoutJetStream())
	sup := watchHeartbeats(t, srv, "ir1")
	cfg := testConfig(t, srv.URL(), "ir1")
	cfg.SkipInitialResolve = false
	c := connect(t, cfg)
	sup.waitHB(t, 0, func(hb Heartbeat) bool { return hb.Seq >= 2 && len(hb.Configs) == 0 })
	var rev atomic.Uint64
	rev.Store(11)
	start := time.Now()
	fakeResolver(t, srv, "ir1", &rev)
	hb := sup.waitHB(t, 0, func(hb Heartbeat) bool { return hb.Configs["github"].Revision == 11 })
	t.Logf("supervisor back → configs in a heartbeat after %v (no-responders heartbeats %d)", time.Since(start), c.Stats().NoSupervisor)
	if !hb.Configs["github"].Applied || hb.Configs["github"].Stale || c.State() != StateConnected {
		t.Fatalf("configs %+v, state %v", hb.Configs, c.State())
	}
}

func TestCommandReresolve(t *testing.T) {
	srv := natstest.RunServer(t, natstest.WithoutJetStream())
	sup := watchHeartbeats(t, srv, "rr1")
	var rev atomic.Uint64
	rev.Store(3)
	fakeResolver(t, srv, "rr1", &rev)
	c := connect(t, testConfig(t, srv.URL(), "rr1"))
	changes := make(chan Resolved, 4)
	c.OnConfigChange(func(r Resolved) error { changes <- r; return nil })
	sup.send(t, "rr1", Command{ID: "rs1", Type: CmdReresolve, Servers: []string{"github"}})
	var first Resolved
	select {
	case first = <-changes:
	case <-time.After(3 * time.Second):
		t.Fatal("first config not reported")
	}
	rev.Store(4)
	sent := time.Now()
	sup.send(t, "rr1", Command{ID: "rs2", Type: CmdReresolve, Servers: []string{"github"}})
	var second Resolved
	select {
	case second = <-changes:
	case <-time.After(3 * time.Second):
		t.Fatal("config change not reported")
	}
	took := time.Since(sent)
	if first.Revision != 3 || second.Revision != 4 || !second.Changed || second.Config == nil {
		t.Fatalf("changes %+v then %+v", first, second)
	}
	hb := sup.waitHB(t, 0, func(hb Heartbeat) bool { return hb.Configs["github"].Revision == 4 })
	if !hb.Configs["github"].Applied {
		t.Fatalf("configs %+v", hb.Configs)
	}
	t.Logf("reresolve command to swapped config: %v", took)
	if r, err := c.Resolve(t.Context(), "github"); err != nil || r.Revision != 4 {
		t.Fatalf("Resolve: %+v %v", r, err)
	}
}

// A command below the highest (term, epoch) accepted comes from a deposed
// leader: it is acknowledged (no re-send loop) but not carried out.
func TestCommandFencedByLeaderEpoch(t *testing.T) {
	srv := natstest.RunServer(t, natstest.WithoutJetStream())
	sup := watchHeartbeats(t, srv, "fx1")
	var rev atomic.Uint64
	rev.Store(3)
	fakeResolver(t, srv, "fx1", &rev)
	c := connect(t, testConfig(t, srv.URL(), "fx1"))
	changes := make(chan Resolved, 8)
	c.OnConfigChange(func(r Resolved) error { changes <- r; return nil })
	wait := func(what string) Resolved {
		t.Helper()
		select {
		case r := <-changes:
			return r
		case <-time.After(3 * time.Second):
			t.Fatalf("%s: no config change", what)
		}
		return Resolved{}
	}
	sup.send(t, "fx1", Command{ID: "new-leader", Type: CmdReresolve, Servers: []string{"github"}, Term: 100, Epoch: 50})
	wait("the new leader's command")
	rev.Store(4)
	// The deposed leader (epoch 40 in the same term, or an older term) is
	// ignored; the new leader's next command is carried out.
	sup.send(t, "fx1", Command{ID: "old-1", Type: CmdReresolve, Servers: []string{"github"}, Term: 100, Epoch: 40})
	sup.send(t, "fx1", Command{ID: "old-2", Type: CmdReresolve, Servers: []string{"github"}, Term: 99, Epoch: 900})
	hb := sup.waitHB(t, 0, func(hb Heartbeat) bool {
		return slices.Contains(hb.Acks, "old-1") || slices.Contains(hb.Acks, "old-2")
	})
	_ = hb
	select {
	case r := <-changes:
		t.Fatalf("a deposed leader's command was carried out: %+v", r)
	case <-time.After(200 * time.Millisecond):
	}
	if n := c.Stats().FencedCommands; n != 2 {
		t.Fatalf("FencedCommands %d, want 2", n)
	}
	sup.send(t, "fx1", Command{ID: "new-2", Type: CmdReresolve, Servers: []string{"github"}, Term: 100, Epoch: 50})
	if r := wait("the new leader's next command"); r.Revision != 4 {
		t.Fatalf("revision %d, want 4", r.Revision)
	}
}

func TestFenceBelow(t *testing.T) {
	for _, tc := range []struct {
		cmd   Command
		term  int64
		epoch uint64
		below bool
	}{
		{Command{Term: 5, Epoch: 10}, 5, 10, false},
		{Command{Term: 5, Epoch: 9}, 5, 10, true},
		{Command{Term: 4, Epoch: 99}, 5, 10, true},
		{Command{Term: 6, Epoch: 1}, 5, 10, false}, // a re-created lease bucket: a later term
		{Command{}, 5, 10, false},                  // an unfenced sender
	} {
		if got := tc.cmd.FenceBelow(tc.term, tc.epoch); got != tc.below {
			t.Errorf("%+v.FenceBelow(%d, %d) = %v", tc.cmd, tc.term, tc.epoch, got)
		}
	}
}
