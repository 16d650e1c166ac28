package fleet_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/internal/natstest"
	"github.com/tether-dev/tether/supervisor"
	"github.com/tether-dev/tether/supervisor/fleet"
)

// fleetTestConfig is testConfig with millisecond fleet timings: heartbeat
// every interval, checked every interval/10.
func fleetTestConfig(t testing.TB, srv *natstest.Server, interval time.Duration) supervisor.Config {
	cfg := testConfig(t, srv)
	f := &cfg.Fleet
	f.HeartbeatInterval = interval
	f.CheckInterval = max(interval/10, time.Millisecond)
	f.ProbeInterval = interval
	f.ProbeTimeout = 2 * interval
	f.ResendInterval = 2 * interval
	f.PersistInterval = 10 * time.Millisecond
	f.MassSilenceHold = time.Minute
	// These tests judge agents, not admission (admission_test.go): every
	// fake agent is tracked without registering it in mcp_agents.
	cfg.Admission = supervisor.AdmitAny
	return cfg
}

// gotCmd is a command a fake agent received.
type gotCmd struct {
	agentproto.Command
	route string // "subject" or "reply"
	at    time.Time
}

// fakeAgent is a test-only agent: its own connection with a private inbox
// prefix, a command subscription, a heartbeat-reply subscription and a
// heartbeat loop. It acks every command in its next heartbeat, answers
// probes, and on reconnect "rebuilds" by re-subscribing its command subject.
type fakeAgent struct {
	t        testing.TB
	id       string
	nc       *nats.Conn
	subj     agentproto.Subjects
	interval time.Duration

	mu       sync.Mutex
	instance string
	seq      uint64
	acks     []string
	probeAck string
	got      []gotCmd
	cmdSub   *nats.Subscription
	paused   bool
	lastSent time.Time
	skew     time.Duration
	rebuilt  time.Time
	configs  map[string]any // reported as held, when set

	stop chan struct{}
	done chan struct{}
}

func startFakeAgent(t testing.TB, url, id string, interval time.Duration) *fakeAgent {
	t.Helper()
	return startFakeAgentWith(t, url, id, interval, nil)
}

// startFakeAgentWith lets setup change the agent (instance, skew) before
// its first heartbeat.
func startFakeAgentWith(t testing.TB, url, id string, interval time.Duration, setup func(*fakeAgent)) *fakeAgent {
	t.Helper()
	a := &fakeAgent{t: t, id: id, interval: interval, instance: id + "-i1", stop: make(chan struct{}), done: make(chan struct{})}
	if setup != nil {
		setup(a)
	}
	a.nc = natstest.Connect(t, url, nats.CustomInboxPrefix(agentproto.InboxPrefix(id)),
		nats.MaxReconnects(-1), nats.ReconnectWait(10*time.Millisecond), nats.ReconnectJitter(0, 0))
	a.subscribeCmd()
	if _, err := a.nc.Subscribe(agentproto.HeartbeatReply(id), func(m *nats.Msg) { a.handle(m, fleet.RouteReply) }); err != nil {
		t.Fatal(err)
	}
	go a.loop()
	t.Cleanup(a.Stop)
	return a
}

func (a *fakeAgent) subscribeCmd() {
	sub, err := a.nc.Subscribe(a.subj.Command(a.id), func(m *nats.Msg) { a.handle(m, fleet.RouteSubject) })
	if err != nil {
		a.t.Errorf("fake agent %s: subscribe: %v", a.id, err)
		return
	}
	a.mu.Lock()
	a.cmdSub = sub
	a.mu.Unlock()
}

func (a *fakeAgent) handle(m *nats.Msg, route string) {
	if len(m.Data) == 0 && m.Header.Get("Status") != "" {
		return // "no responders" on the heartbeat reply while no supervisor listens
	}
	var c agentproto.Command
	if err := json.Unmarshal(m.Data, &c); err != nil {
		a.t.Errorf("fake agent %s: command %s: %v", a.id, m.Data, err)
		return
	}
	a.mu.Lock()
	a.got = append(a.got, gotCmd{Command: c, route: route, at: time.Now()})
	if c.Type == agentproto.CmdProbe {
		a.probeAck = c.Nonce
		a.mu.Unlock()
		return
	}
	a.acks = append(a.acks, c.ID)
	a.mu.Unlock()
	if c.Type == agentproto.CmdReconnect {
		go a.rebuild(c.NotBeforeTime())
	}
}

// rebuild re-subscribes the command subject after not_before.
func (a *fakeAgent) rebuild(notBefore time.Time) {
	if d := time.Until(notBefore); d > 0 {
		time.Sleep(d)
	}
	a.mu.Lock()
	old := a.cmdSub
	a.mu.Unlock()
	if old != nil && old.IsValid() {
		return // not broken
	}
	a.subscribeCmd()
	a.mu.Lock()
	a.rebuilt = time.Now()
	a.mu.Unlock()
}

// breakCmd kills the command subscription while heartbeats go on: a zombie.
func (a *fakeAgent) breakCmd() {
	a.mu.Lock()
	sub := a.cmdSub
	a.mu.Unlock()
	_ = sub.Unsubscribe()
}

func (a *fakeAgent) loop() {
	defer close(a.done)
	tk := time.NewTicker(a.interval)
	defer tk.Stop()
	a.beat(false)
	for {
		select {
		case <-a.stop:
			return
		case <-tk.C:
			a.beat(false)
		}
	}
}

// beat publishes one heartbeat unless paused.
func (a *fakeAgent) beat(goodbye bool) {
	a.mu.Lock()
	if a.paused && !goodbye {
		a.mu.Unlock()
		return
	}
	a.seq++
	hb := map[string]any{
		"agent": a.id, "instance": a.instance, "seq": a.seq, "interval_ms": a.interval.Milliseconds(),
		"sent_at": time.Now().Add(a.skew).UTC().Format(time.RFC3339Nano),
		"conn":    map[string]any{"state": "connected", "reconnects": a.nc.Stats().Reconnects, "rtt_ms": 0.2},
		"calls":   map[string]any{"ok": a.seq, "retried": 0, "failed": 0, "unknown": 0},
	}
	if a.probeAck != "" {
		hb["probe_ack"] = a.probeAck
	}
	if len(a.acks) > 0 {
		hb["acks"] = a.acks
		a.acks = nil
	}
	if goodbye {
		hb["goodbye"] = true
	}
	if a.configs != nil {
		hb["configs"] = a.configs
	}
	data, _ := json.Marshal(hb)
	a.lastSent = time.Now()
	a.mu.Unlock()
	_ = a.nc.PublishMsg(&nats.Msg{Subject: a.subj.Heartbeat(a.id), Reply: agentproto.HeartbeatReply(a.id), Data: data})
}

func (a *fakeAgent) pause(p bool) time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.paused = p
	return a.lastSent
}

// restart starts a new instance (a new process under the same id).
func (a *fakeAgent) restart(n int) {
	a.mu.Lock()
	a.instance, a.seq, a.probeAck = fmt.Sprintf("%s-i%d", a.id, n), 0, ""
	a.mu.Unlock()
}

func (a *fakeAgent) commands(typ string) []gotCmd {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []gotCmd
	for _, c := range a.got {
		if typ == "" || c.Type == typ {
			out = append(out, c)
		}
	}
	return out
}

// Stop ends the heartbeat loop; safe to call twice.
func (a *fakeAgent) Stop() {
	select {
	case <-a.stop:
	default:
		close(a.stop)
	}
	<-a.done
}

// waitState polls an agent's state.
func waitState(t testing.TB, f *fleet.Fleet, id string, want fleet.State, within time.Duration) fleet.AgentStatus {
	t.Helper()
	var st fleet.AgentStatus
	natstest.CheckFor(t, within, time.Millisecond, func() error {
		var ok bool
		if st, ok = f.Agent(id); !ok || st.State != want {
			return fmt.Errorf("agent %s is %v (known %v), want %v", id, st.State, ok, want)
		}
		return nil
	})
	return st
}

// fleetRecordOf reads an agent's mcp_fleet record.
func fleetRecordOf(t testing.TB, s *supervisor.Supervisor, id string) (fleet.Record, error) {
	e, err := s.Buckets().Fleet.Get(context.Background(), id)
	if err != nil {
		return fleet.Record{}, err
	}
	var r fleet.Record
	return r, json.Unmarshal(e.Value(), &r)
}
