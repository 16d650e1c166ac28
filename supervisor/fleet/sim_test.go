package fleet_test

import (
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/internal/natstest"
	"github.com/tether-dev/tether/supervisor/fleet"
)

// simFleet simulates many agents on one connection: one goroutine
// publishes every agent's heartbeat each interval; wildcard subscriptions
// see every command sent to any agent (so a test can assert that
// unaffected agents got nothing). Agents ack commands in their next
// heartbeat and, on reresolve, resolve the servers named (after
// not_before) and report the revision they run.
type simFleet struct {
	t        testing.TB
	nc       *nats.Conn
	subj     agentproto.Subjects
	interval time.Duration

	mu     sync.Mutex
	agents map[string]*simAgent
	ids    []string
	all    []simCmd // every command seen, in order
	silent bool
	apply  bool
	sem    chan struct{}
	wg     sync.WaitGroup

	stop chan struct{}
	done chan struct{}
}

type simAgent struct {
	id       string
	mute     bool // sends no heartbeats
	deaf     bool // ignores probes: a zombie
	lastBeat time.Time
	seq      uint64
	acks     []string
	probeAck string
	applied  map[string]uint64
	appliedT map[string]time.Time
}

type simCmd struct {
	agent string
	gotCmd
}

func startSimFleet(t testing.TB, url string, n int, interval time.Duration, apply bool) *simFleet {
	t.Helper()
	f := &simFleet{t: t, interval: interval, agents: map[string]*simAgent{}, apply: apply,
		sem: make(chan struct{}, 64), stop: make(chan struct{}), done: make(chan struct{})}
	f.nc = natstest.Connect(t, url)
	for i := 0; i < n; i++ {
		id := simID(i)
		f.agents[id] = &simAgent{id: id, applied: map[string]uint64{}, appliedT: map[string]time.Time{}}
		f.ids = append(f.ids, id)
	}
	cmdPrefix := strings.TrimSuffix(f.subj.Wildcard("cmd"), ">")
	if _, err := f.nc.Subscribe(cmdPrefix+"*", func(m *nats.Msg) {
		f.handle(strings.TrimPrefix(m.Subject, cmdPrefix), fleet.RouteSubject, m.Data)
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.nc.Subscribe("*.hb", func(m *nats.Msg) {
		if len(m.Data) == 0 && m.Header.Get("Status") != "" {
			return // no responders
		}
		f.handle(strings.TrimPrefix(strings.TrimSuffix(m.Subject, ".hb"), "_INBOX_"), fleet.RouteReply, m.Data)
	}); err != nil {
		t.Fatal(err)
	}
	if err := f.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	go f.loop()
	t.Cleanup(f.Stop)
	return f
}

func simID(i int) string { return "sim-" + strconv.Itoa(10000 + i)[1:] }

func (f *simFleet) handle(id, route string, data []byte) {
	var c agentproto.Command
	if err := json.Unmarshal(data, &c); err != nil {
		f.t.Errorf("sim: command %s: %v", data, err)
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.all = append(f.all, simCmd{agent: id, gotCmd: gotCmd{Command: c, route: route, at: time.Now()}})
	a := f.agents[id]
	if a == nil {
		return // an agent this fleet does not run (a registry-only agent)
	}
	if c.Type == agentproto.CmdProbe {
		if !a.deaf || route != fleet.RouteSubject {
			a.probeAck = c.Nonce
		}
		return
	}
	a.acks = append(a.acks, c.ID)
	if c.Type == agentproto.CmdReconnect {
		a.deaf = false // rebuilt
	}
	if f.apply && c.Type == agentproto.CmdReresolve && len(c.Servers) > 0 {
		f.wg.Add(1)
		go f.resolve(a, c)
	}
}

// resolve applies a reresolve: waits for not_before, resolves each server
// and records the revision it now runs.
func (f *simFleet) resolve(a *simAgent, c agentproto.Command) {
	defer f.wg.Done()
	if d := time.Until(c.NotBeforeTime()); d > 0 {
		select {
		case <-time.After(d):
		case <-f.stop:
			return
		}
	}
	f.sem <- struct{}{}
	defer func() { <-f.sem }()
	for _, s := range c.Servers {
		msg, err := f.nc.Request(f.subj.Resolve(a.id, s), nil, 2*time.Second)
		if err != nil {
			continue
		}
		var rr agentproto.ResolveReply
		if json.Unmarshal(msg.Data, &rr) != nil || rr.Revision == 0 {
			continue
		}
		f.mu.Lock()
		a.applied[s], a.appliedT[s] = rr.Revision, time.Now()
		f.mu.Unlock()
	}
}

func (f *simFleet) loop() {
	defer close(f.done)
	tk := time.NewTicker(f.interval)
	defer tk.Stop()
	for {
		f.beat()
		select {
		case <-f.stop:
			return
		case <-tk.C:
		}
	}
}

// beat publishes one heartbeat per agent unless the fleet is silent.
func (f *simFleet) beat() {
	f.mu.Lock()
	if f.silent {
		f.mu.Unlock()
		return
	}
	msgs := make([]*nats.Msg, 0, len(f.ids))
	now := time.Now()
	sentAt := now.UTC().Format(time.RFC3339Nano)
	for _, id := range f.ids {
		a := f.agents[id]
		if a.mute {
			continue
		}
		a.seq++
		a.lastBeat = now
		msgs = append(msgs, &nats.Msg{Subject: f.subj.Heartbeat(id), Reply: agentproto.HeartbeatReply(id),
			Data: a.heartbeat(f.interval, sentAt)})
		a.acks = nil
	}
	f.mu.Unlock()
	for _, m := range msgs {
		_ = f.nc.PublishMsg(m)
	}
}

// heartbeat encodes the agent's heartbeat without reflection.
func (a *simAgent) heartbeat(interval time.Duration, sentAt string) []byte {
	b := make([]byte, 0, 256)
	b = append(b, `{"agent":"`...)
	b = append(b, a.id...)
	b = append(b, `","instance":"`...)
	b = append(b, a.id...)
	b = append(b, `-i1","seq":`...)
	b = strconv.AppendUint(b, a.seq, 10)
	b = append(b, `,"interval_ms":`...)
	b = strconv.AppendInt(b, interval.Milliseconds(), 10)
	b = append(b, `,"sent_at":"`...)
	b = append(b, sentAt...)
	b = append(b, `","conn":{"state":"connected","reconnects":0,"rtt_ms":0.3},"calls":{"ok":1,"retried":0,"failed":0,"unknown":0}`...)
	if a.probeAck != "" {
		b = append(b, `,"probe_ack":"`...)
		b = append(b, a.probeAck...)
		b = append(b, '"')
	}
	if len(a.acks) > 0 {
		b = append(b, `,"acks":["`...)
		b = append(b, strings.Join(a.acks, `","`)...)
		b = append(b, `"]`...)
	}
	if len(a.applied) > 0 {
		servers := make([]string, 0, len(a.applied))
		for s := range a.applied {
			servers = append(servers, s)
		}
		sort.Strings(servers)
		b = append(b, `,"configs":{`...)
		for i, s := range servers {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, '"')
			b = append(b, s...)
			b = append(b, `":{"revision":`...)
			b = strconv.AppendUint(b, a.applied[s], 10)
			b = append(b, `,"applied":true}`...)
		}
		b = append(b, '}')
	}
	return append(b, '}')
}

// set changes agents under the fleet's lock.
func (f *simFleet) set(ids []string, fn func(*simAgent)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, id := range ids {
		fn(f.agents[id])
	}
}

func (f *simFleet) setSilent(s bool) {
	f.mu.Lock()
	f.silent = s
	f.mu.Unlock()
}

// since returns the commands seen from index i on, and the next index.
func (f *simFleet) since(i int) ([]simCmd, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]simCmd(nil), f.all[i:]...), len(f.all)
}

func (f *simFleet) mark() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.all)
}

// appliedAt returns when each agent applied revision rev of server.
func (f *simFleet) appliedAt(server string, rev uint64) map[string]time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]time.Time{}
	for id, a := range f.agents {
		if a.applied[server] >= rev {
			out[id] = a.appliedT[server]
		}
	}
	return out
}

// Stop ends the heartbeat loop and waits for pending applies.
func (f *simFleet) Stop() {
	select {
	case <-f.stop:
	default:
		close(f.stop)
	}
	<-f.done
	f.wg.Wait()
}

// waitAllState waits until every simulated agent is in state want.
func waitAllState(t testing.TB, fl *fleet.Fleet, f *simFleet, want fleet.State, within time.Duration) {
	t.Helper()
	natstest.CheckFor(t, within, 5*time.Millisecond, func() error {
		if n := fl.Counts()[want]; n < len(f.ids) {
			return fmt.Errorf("%d of %d agents %v (counts %v)", n, len(f.ids), want, fl.Counts())
		}
		return nil
	})
}
