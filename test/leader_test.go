package test

// Leadership under faults (issue 13): three supervisor replicas on a
// 3-node cluster, the leader's link to its node cut or black-holed without
// a graceful lease release, real agents on the other nodes.

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/internal/natstest"
	"github.com/tether-dev/tether/internal/suptest"
	"github.com/tether-dev/tether/kvconfig"
	"github.com/tether-dev/tether/supervisor"
	"github.com/tether-dev/tether/supervisor/fleet"
)

// leaderTTL is the lease TTL of the leadership fault tests. Not shorter:
// nats-server checks a stream's max age at most every 250 ms (and reads
// its clock in 100 ms ticks), so a dead leader's key outlives its TTL by
// up to about 0.35 s; with a TTL below about 1 s a failover can take more
// than 2x the TTL (measured at 300 ms: 1.8-2.1x, see BENCHMARKS.md).
const leaderTTL = time.Second

// leaderBeat is the heartbeat interval of the leadership fault tests:
// twice the other cluster tests', so that a replica stalled for 150 ms on a
// loaded machine does not judge agents lost (and, after a few returns,
// quarantine them), which is not what these tests are about.
const leaderBeat = 100 * time.Millisecond

// leaderConfig sets the replicas' lease TTL and fleet timings.
func leaderConfig(cfg *supervisor.Config) {
	cfg.LeaseTTL = leaderTTL
	f := &cfg.Fleet
	f.HeartbeatInterval, f.CheckInterval = leaderBeat, leaderBeat/5
	f.ProbeInterval, f.ProbeTimeout, f.ResendInterval = leaderBeat, 2*leaderBeat, 2*leaderBeat
}

// replicaSet is three replicas on a 3-node cluster, replica i connected to
// node i through proxies[i], started in order (so replica 0 leads).
type replicaSet struct {
	c       *natstest.Cluster
	proxies []*natstest.Proxy
	sups    []*supervisor.Supervisor
}

// startReplicaSet starts the cluster and the replicas, each config changed
// by adjust. The nodes ping their clients every 200 ms, as the embedded
// server pings every few seconds: a node drops a black-holed replica's
// connection, and with it its queue-group membership, within about 600 ms
// instead of the 2 minutes of nats-server's default.
func startReplicaSet(tb testing.TB, adjust func(*supervisor.Config)) *replicaSet {
	tb.Helper()
	r := &replicaSet{c: natstest.RunCluster(tb, 3, noAdvertise(), natstest.WithPingInterval(200*time.Millisecond))}
	for i := range 3 {
		p := natstest.NewProxy(tb, fmt.Sprintf("127.0.0.1:%d", r.c.Servers[i].Port))
		r.proxies = append(r.proxies, p)
		r.sups = append(r.sups, startReplicaWith(tb, p.URL(), i, adjust))
	}
	return r
}

// noAdvertise keeps cluster nodes from telling clients each other's
// URLs: a replica behind a cut proxy must not reconnect around it.
func noAdvertise() natstest.Option {
	return natstest.WithOptions(func(o *server.Options) { o.Cluster.NoAdvertise = true })
}

// leaderSampler polls every replica's IsLeader every millisecond and keeps
// the most that commanded at once and each replica's leadership changes.
type leaderSampler struct {
	sups []*supervisor.Supervisor
	stop chan struct{}
	done chan struct{}

	mu      sync.Mutex
	samples int
	most    int       // most replicas commanding in one sample
	mostAt  time.Time // when first seen
	changes []leaderChange
}

type leaderChange struct {
	at      time.Time
	replica int
	leading bool
}

func startSampler(t *testing.T, sups []*supervisor.Supervisor) *leaderSampler {
	s := &leaderSampler{sups: sups, stop: make(chan struct{}), done: make(chan struct{})}
	go s.run()
	t.Cleanup(s.close)
	return s
}

func (s *leaderSampler) run() {
	defer close(s.done)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	was := make([]bool, len(s.sups))
	for {
		select {
		case <-s.stop:
			return
		case <-tick.C:
		}
		now, n := time.Now(), 0
		s.mu.Lock()
		for i, sup := range s.sups {
			l := sup.IsLeader()
			if l {
				n++
			}
			if l != was[i] {
				s.changes = append(s.changes, leaderChange{at: now, replica: i, leading: l})
				was[i] = l
			}
		}
		s.samples++
		if n > s.most {
			s.most, s.mostAt = n, now
		}
		s.mu.Unlock()
	}
}

func (s *leaderSampler) close() {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.done
}

// firstChange is when replica first changed to leading after from (zero if
// it has not).
func (s *leaderSampler) firstChange(replica int, leading bool, from time.Time) time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.changes {
		if c.replica == replica && c.leading == leading && !c.at.Before(from) {
			return c.at
		}
	}
	return time.Time{}
}

// check fails the test if two replicas ever commanded in one sample.
func (s *leaderSampler) check(t *testing.T) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.most > 1 {
		t.Errorf("%d replicas commanded at once at %v (changes %+v)", s.most, s.mostAt.Format("15:04:05.000"), s.changes)
	}
	t.Logf("leadership sampled %d times: never more than %d commanding", s.samples, s.most)
}

// agentRec is a real agent and what it carried out: the reconnect and
// reresolve commands it accepted, each with the github revision it held
// then, and its config changes per github revision.
type agentRec struct {
	id string
	c  *agentproto.Client

	mu       sync.Mutex
	accepted []acceptedCmd
	changes  map[uint64]int
}

type acceptedCmd struct {
	id   string
	held uint64
}

func (a *agentRec) acceptedCount() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.accepted)
}

// leaderRig is three replicas on a 3-node cluster, replica i connected to
// node i through proxies[i]; replica 0 starts first, so it leads. Agents
// run on nodes 1 and 2. Their resolves may go to any replica (a request
// from a client picks a queue member anywhere in the cluster), so a test
// that black-holes replica 0 waits until node 0 has dropped its dead
// connection before agents resolve.
type leaderRig struct {
	*replicaSet
	t       *testing.T
	agents  []*agentRec
	js      jetstream.JetStream // a plain connection to node 1
	cmdsMu  sync.Mutex
	cmds    map[string]agentproto.Command // every command seen on an agent's subjects, by id
	fleetKV jetstream.KeyValue
	configs jetstream.KeyValue
	sampler *leaderSampler
}

func startLeaderRig(t *testing.T) *leaderRig {
	t.Helper()
	begin := time.Now()
	defer func() { t.Logf("rig up in %v", time.Since(begin).Round(time.Millisecond)) }()
	r := &leaderRig{t: t, replicaSet: startReplicaSet(t, leaderConfig)}
	if !r.sups[0].IsLeader() {
		t.Fatal("replica 0, started first, does not lead")
	}
	nc := observer(t, r.c.Servers[1].URL())
	r.cmds = map[string]agentproto.Command{}
	for _, subject := range []string{subj.Command("*"), agentproto.HeartbeatReply("c1"), agentproto.HeartbeatReply("c2")} {
		if _, err := nc.Subscribe(subject, func(m *nats.Msg) {
			var cmd agentproto.Command
			if json.Unmarshal(m.Data, &cmd) == nil && cmd.Type != "" && cmd.Type != agentproto.CmdProbe {
				r.cmdsMu.Lock()
				r.cmds[cmd.ID] = cmd
				r.cmdsMu.Unlock()
			}
		}); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	var err error
	if r.js, err = jetstream.New(nc); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if r.fleetKV, err = r.js.KeyValue(ctx, kvconfig.BucketFleet); err != nil {
		t.Fatal(err)
	}
	if r.configs, err = r.js.KeyValue(ctx, kvconfig.BucketConfigs); err != nil {
		t.Fatal(err)
	}
	rev := r.put("g0")
	for _, s := range r.sups {
		suptest.Register(t, s, "dev", "c1", "c2")
		natstest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
			if res, err := s.Index().Resolve("c1", "github"); err != nil || res.Revision != rev {
				return fmt.Errorf("replica index: github %+v %v", res, err)
			}
			return nil
		})
	}
	for i, id := range []string{"c1", "c2"} {
		a := &agentRec{id: id, changes: map[uint64]int{}}
		cfg := faultConfig(t, r.c.Servers[1+i].URL(), id)
		cfg.SkipInitialResolve, cfg.HeartbeatInterval = false, leaderBeat
		cfg.OnEvent = func(e agentproto.Event) {
			if e.Kind == agentproto.EventCommand && e.Reason != agentproto.CmdProbe {
				held, _ := a.c.Resolver().Held("github")
				a.mu.Lock()
				a.accepted = append(a.accepted, acceptedCmd{id: e.Subject, held: held.Revision})
				a.mu.Unlock()
			}
		}
		a.c = startAgent(t, cfg)
		a.c.OnConfigChange(func(res agentproto.Resolved) error {
			a.mu.Lock()
			a.changes[res.Revision]++
			a.mu.Unlock()
			return nil
		})
		if _, err := a.c.Resolve(ctx, "github"); err != nil {
			t.Fatal(err)
		}
		r.agents = append(r.agents, a)
	}
	r.settled(rev, -1)
	r.sampler = startSampler(t, r.sups)
	return r
}

// put writes global.github (through node 1) and returns its revision.
func (r *leaderRig) put(host string) uint64 {
	r.t.Helper()
	var rev uint64
	natstest.CheckFor(r.t, 5*time.Second, 20*time.Millisecond, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		var err error
		rev, err = r.configs.Put(ctx, "global.github", fmt.Appendf(nil, `{"url":"https://%s.example/mcp"}`, host))
		return err
	})
	return rev
}

// settled waits until every agent runs github revision rev and reports it,
// every replica but skip sees both agents healthy on it, and mcp_fleet
// holds that for both with nothing pending.
func (r *leaderRig) settled(rev uint64, skip int) {
	r.t.Helper()
	natstest.CheckFor(r.t, 5*time.Second, 5*time.Millisecond, func() error {
		for _, a := range r.agents {
			if held, ok := a.c.Resolver().Held("github"); !ok || held.Revision != rev {
				return fmt.Errorf("agent %s holds github %d, want %d", a.id, held.Revision, rev)
			}
			for i, s := range r.sups {
				if i == skip {
					continue
				}
				st, ok := s.Fleet().Agent(a.id)
				if !ok || st.State != fleet.StateHealthy || st.Configs["github"].Revision != rev {
					return fmt.Errorf("replica %d sees %s %v on github %d, want healthy on %d", i, a.id, st.State, st.Configs["github"].Revision, rev)
				}
			}
			if _, err := r.record(a.id, rev); err != nil {
				return err
			}
		}
		return nil
	})
}

// record reads an agent's mcp_fleet record and checks that it is what a
// leader with a correct picture writes: healthy on github revision rev,
// no zombie or quarantine flag, nothing pending.
func (r *leaderRig) record(agent string, rev uint64) (fleet.Record, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	e, err := r.fleetKV.Get(ctx, agent)
	if err != nil {
		return fleet.Record{}, fmt.Errorf("mcp_fleet %s: %w", agent, err)
	}
	var rec fleet.Record
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		return rec, fmt.Errorf("mcp_fleet %s: %w", agent, err)
	}
	switch {
	case rec.State != fleet.StateHealthy || rec.Liveness != fleet.StateHealthy || rec.Zombie || rec.Quarantined:
		return rec, fmt.Errorf("mcp_fleet %s: state %v liveness %v zombie %v quarantined %v", agent, rec.State, rec.Liveness, rec.Zombie, rec.Quarantined)
	case rec.Configs["github"].Revision != rev:
		return rec, fmt.Errorf("mcp_fleet %s: github revision %d, want %d", agent, rec.Configs["github"].Revision, rev)
	case len(rec.PendingCommands) > 0:
		return rec, fmt.Errorf("mcp_fleet %s: %d commands pending", agent, len(rec.PendingCommands))
	}
	return rec, nil
}

// accepted returns each agent's accepted command count.
func (r *leaderRig) accepted() []int {
	out := make([]int, len(r.agents))
	for i, a := range r.agents {
		out[i] = a.acceptedCount()
	}
	return out
}

// pushOnce puts a new github config and checks that each agent carries out
// exactly one command for it and changes config exactly once.
func (r *leaderRig) pushOnce(host string, skip int) uint64 {
	r.t.Helper()
	before := r.accepted()
	rev := r.put(host)
	r.settled(rev, skip)
	r.checkOnce(rev, before)
	return rev
}

// checkOnce checks that, since before, each agent changed to revision rev
// exactly once and carried out exactly one command for the change: one
// push, or a new leader's takeover or gap reconcile, from one leader, and
// not after it already ran rev. Commands for other events are allowed and
// logged: the leader's drift repair (the agent's re-resolve was answered
// by a replica whose index had not applied rev yet, so it still ran the
// old one) and a recovery re-resolve (an agent judged lost, at these
// millisecond timings on a loaded machine, that heartbeats again).
func (r *leaderRig) checkOnce(rev uint64, before []int) {
	r.t.Helper()
	for i, a := range r.agents {
		a.mu.Lock()
		got, changes := slices.Clone(a.accepted[before[i]:]), a.changes[rev]
		a.mu.Unlock()
		r.cmdsMu.Lock()
		pushes, wasted, others := 0, 0, 0
		fences := map[[2]uint64]bool{}
		for _, c := range got {
			cmd := r.cmds[c.id]
			fences[[2]uint64{uint64(cmd.Term), cmd.Epoch}] = true
			switch {
			case cmd.Reason != "put global.github" && !strings.HasPrefix(cmd.Reason, "leader "):
				others++
			case c.held >= rev:
				wasted++
			default:
				pushes++
			}
		}
		r.cmdsMu.Unlock()
		desc := r.describe(got)
		if changes != 1 || pushes != 1 || wasted != 0 || len(fences) != 1 {
			r.t.Errorf("agent %s, revision %d: %d config changes, %d commands for the change, %d more once on it, %d leader fences; want 1, 1, 0, 1 (%s)",
				a.id, rev, changes, pushes, wasted, len(fences), desc)
		}
		if others > 0 {
			r.t.Logf("agent %s, revision %d: %d commands for other events (%s)", a.id, rev, others, desc)
		}
	}
}

// describe names each command id with its type and reason, as seen.
func (r *leaderRig) describe(got []acceptedCmd) string {
	r.cmdsMu.Lock()
	defer r.cmdsMu.Unlock()
	out := ""
	for _, a := range got {
		c := r.cmds[a.id]
		out += fmt.Sprintf("[%s %s %q servers %v fence %d/%d, agent on %d] ", a.id, c.Type, c.Reason, c.Servers, c.Term, c.Epoch, a.held)
	}
	return out
}

// newLeader waits until the sampler has seen a replica other than old
// start commanding since from, and returns it and when.
func (r *leaderRig) newLeader(old int, from time.Time, within time.Duration) (int, time.Time) {
	r.t.Helper()
	next, at := -1, time.Time{}
	natstest.CheckFor(r.t, within, time.Millisecond, func() error {
		for i := range r.sups {
			if i == old {
				continue
			}
			if at = r.sampler.firstChange(i, true, from); !at.IsZero() {
				next = i
				return nil
			}
		}
		return fmt.Errorf("no other replica commands yet (leaders %v)", leaders(r.sups, -1))
	})
	return next, at
}

// supervisorConns counts the supervisor connections a node holds.
func supervisorConns(t *testing.T, s *natstest.Server) int {
	cz, err := s.NATS().Connz(&server.ConnzOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, c := range cz.Conns {
		if c.Name == "tether-supervisor" {
			n++
		}
	}
	return n
}

// sent is what a replica has sent and written: probes, commands, and
// mcp_fleet writes that landed (outcome ok).
func sent(t *testing.T, s *supervisor.Supervisor) [3]float64 {
	return [3]float64{counter(t, s, "tether_probes_sent_total", nil), counter(t, s, "tether_commands_sent_total", nil),
		counter(t, s, "tether_fleet_kv_writes_total", map[string]string{"outcome": "ok"})}
}

// rejoined waits until the deposed replica old is connected again, sees
// next holding the lease, tracks both agents healthy and has caught up
// with github revision rev, so that anything it would do late it has had
// every reason to do.
func (r *leaderRig) rejoined(old, next int, rev uint64) {
	r.t.Helper()
	s := r.sups[old]
	natstest.CheckFor(r.t, 10*time.Second, 5*time.Millisecond, func() error {
		switch {
		case !s.Conn().IsConnected():
			return fmt.Errorf("replica %d not reconnected (%v)", old, s.Conn().Status())
		case s.LeaderID() != r.sups[next].ReplicaID():
			return fmt.Errorf("replica %d sees holder %q", old, s.LeaderID())
		}
		if res, err := s.Index().Resolve("c1", "github"); err != nil || res.Revision != rev {
			return fmt.Errorf("replica %d index: github %d %v, want %d", old, res.Revision, err, rev)
		}
		return healthyEverywhere(r.sups[old:old+1], -1, "c1")
	})
}

// finalChecks: exactly one leader, the same as before the deposed replica
// returned; the deposed replica sent and wrote nothing since; agents
// fenced or deduplicated whatever came late; mcp_fleet holds the new
// leader's picture, written since the fault.
func (r *leaderRig) finalChecks(old, next int, oldSent [3]float64, fault time.Time, rev uint64) {
	r.t.Helper()
	if l := leaders(r.sups, -1); len(l) != 1 || l[0] != next {
		r.t.Errorf("leaders %v after the deposed replica returned, want only %d", l, next)
	}
	if got := sent(r.t, r.sups[old]); got != oldSent {
		r.t.Errorf("deposed replica %d sent/wrote after the new leader took over: probes, commands, mcp_fleet writes %v → %v", old, oldSent, got)
	}
	for _, a := range r.agents {
		st := a.c.Stats()
		rec, err := r.record(a.id, rev)
		if err != nil {
			r.t.Error(err)
		}
		if rec.Updated.Before(fault) {
			r.t.Errorf("mcp_fleet %s last written %v, before the fault at %v", a.id, rec.Updated, fault)
		}
		r.t.Logf("agent %s: commands accepted %d (probes included), fenced %d, duplicates %d", a.id, st.Commands, st.FencedCommands, st.DuplicateCommands)
	}
	r.t.Logf("new leader %d: mcp_fleet conflicts %v", next, counter(r.t, r.sups[next], "tether_fleet_kv_writes_total", map[string]string{"outcome": "conflict"}))
	r.sampler.check(r.t)
}

// TestClusterLeaderCrash: the leader's connection dies (its proxy cuts
// every link and refuses new ones) with no lease release. Another replica
// commands within 2x the lease TTL, never two at once; a config change made
// while nobody led is carried out once by each agent; when the deposed
// replica comes back, it sends and writes nothing, agents carry out
// nothing twice and mcp_fleet holds the new leader's picture.
func TestClusterLeaderCrash(t *testing.T) {
	r := startLeaderRig(t)
	const old = 0
	r.pushOnce("g1", -1)

	cut := time.Now()
	r.proxies[old].Cut()
	before := r.accepted()
	gapRev := r.put("g2") // most likely while nobody leads
	next, led := r.newLeader(old, cut, 5*time.Second)
	stepped := r.sampler.firstChange(old, false, cut)
	failover := led.Sub(cut)
	t.Logf("crash: replica %d stepped down %v after the cut, replica %d commands %v after it (TTL %v)",
		old, stepped.Sub(cut).Round(time.Millisecond), next, failover.Round(time.Millisecond), leaderTTL)
	if failover > 2*leaderTTL {
		t.Errorf("failover took %v, more than 2x the lease TTL %v", failover, leaderTTL)
	}
	if stepped.IsZero() || !stepped.Before(led) {
		t.Errorf("the deposed leader stepped down at %v, not before the new one led at %v", stepped, led)
	}
	r.settled(gapRev, old)
	r.checkOnce(gapRev, before)
	oldSent := sent(t, r.sups[old])

	r.proxies[old].Pass()
	r.rejoined(old, next, gapRev)
	rev := r.pushOnce("g3", -1)
	r.finalChecks(old, next, oldSent, cut, rev)
}

// TestClusterLeaderPartition: the leader's link is black-holed (nothing
// closes; bytes vanish) for longer than the TTL, then healed. The old
// leader steps down before the new one leads, the new one commands within
// 2x the TTL, and after healing there is still exactly one leader, with
// the same guarantees for agents and mcp_fleet as after a crash.
func TestClusterLeaderPartition(t *testing.T) {
	r := startLeaderRig(t)
	const old = 0
	r.pushOnce("g1", -1)

	hole := time.Now()
	r.proxies[old].BlackHole()
	next, led := r.newLeader(old, hole, 5*time.Second)
	stepped := r.sampler.firstChange(old, false, hole)
	failover := led.Sub(hole)
	t.Logf("partition: replica %d stepped down %v after the black hole, replica %d commands %v after it (TTL %v)",
		old, stepped.Sub(hole).Round(time.Millisecond), next, failover.Round(time.Millisecond), leaderTTL)
	if failover > 2*leaderTTL {
		t.Errorf("failover took %v, more than 2x the lease TTL %v", failover, leaderTTL)
	}
	if stepped.IsZero() || !stepped.Before(led) {
		t.Errorf("the partitioned leader stepped down at %v, not before the new one led at %v", stepped, led)
	}
	// Its node notices: a resolve is no longer handed to the dead member.
	natstest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if n := supervisorConns(t, r.c.Servers[old]); n != 0 {
			return fmt.Errorf("node %d still holds %d supervisor connections", old, n)
		}
		return nil
	})
	rev := r.pushOnce("g2", old) // while the old leader is still cut off
	oldSent := sent(t, r.sups[old])
	natstest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if held := time.Since(hole); held < 2*leaderTTL {
			return fmt.Errorf("black hole held %v so far", held)
		}
		return nil
	})

	r.proxies[old].Pass()
	r.rejoined(old, next, rev)
	rev = r.pushOnce("g3", -1)
	r.finalChecks(old, next, oldSent, hole, rev)
}
