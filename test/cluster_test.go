package test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/internal/natstest"
	"github.com/tether-dev/tether/internal/suptest"
	"github.com/tether-dev/tether/supervisor"
	"github.com/tether-dev/tether/supervisor/fleet"

	"github.com/nats-io/nats.go"
)

// clusterLeaseTTL is the replicas' lease TTL in the cluster test.
const clusterLeaseTTL = 300 * time.Millisecond

// startReplica starts supervisor replica i connected to one cluster node,
// with millisecond fleet timings and buckets at replicas 3.
func startReplica(t *testing.T, url string, i int) *supervisor.Supervisor {
	t.Helper()
	return startReplicaWith(t, url, i, nil)
}

// startReplicaWith is startReplica with its config changed by adjust (the
// lease bucket's TTL is the first replica's).
func startReplicaWith(t testing.TB, url string, i int, adjust func(*supervisor.Config)) *supervisor.Supervisor {
	t.Helper()
	cfg := supervisor.DefaultConfig()
	cfg.NATSURL, cfg.HTTPAddr = url, ""
	cfg.ReplicaID = fmt.Sprintf("replica-%d", i)
	cfg.LeaseTTL = clusterLeaseTTL
	cfg.Buckets.Replicas = 3
	cfg.WatchCheckInterval, cfg.ReconnectWait = 50*time.Millisecond, 10*time.Millisecond
	cfg.Logger = zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel).With().Str("replica", cfg.ReplicaID).Logger()
	f := &cfg.Fleet
	f.HeartbeatInterval, f.CheckInterval = 50*time.Millisecond, 10*time.Millisecond
	f.ProbeInterval, f.ProbeTimeout, f.ResendInterval = 50*time.Millisecond, 100*time.Millisecond, 100*time.Millisecond
	f.PersistInterval = 20 * time.Millisecond
	if adjust != nil {
		adjust(&cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	s, err := supervisor.Start(ctx, cfg)
	if err != nil {
		t.Fatalf("replica %d: %v", i, err)
	}
	t.Cleanup(s.Close)
	if err := s.WaitReady(ctx); err != nil {
		t.Fatalf("replica %d: %v", i, err)
	}
	return s
}

// leaders returns the indexes of the replicas (not in skip) that command.
func leaders(sups []*supervisor.Supervisor, skip int) []int {
	var out []int
	for i, s := range sups {
		if i != skip && s.IsLeader() {
			out = append(out, i)
		}
	}
	return out
}

// counter sums a counter family of a supervisor's registry.
func counter(t *testing.T, s *supervisor.Supervisor, name string, labels map[string]string) float64 {
	t.Helper()
	fams, err := s.Metrics().Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]*dto.MetricFamily{}
	for _, f := range fams {
		m[f.GetName()] = f
	}
	return max(value(m, name, labels), 0)
}

// healthyEverywhere checks the agent is healthy in every listed replica's view.
func healthyEverywhere(sups []*supervisor.Supervisor, skip int, agent string) error {
	for i, s := range sups {
		if i == skip {
			continue
		}
		st, ok := s.Fleet().Agent(agent)
		if !ok || st.State != fleet.StateHealthy {
			return fmt.Errorf("replica %d: agent %s is %v (known %v)", i, agent, st.State, ok)
		}
	}
	return nil
}

// TestClusterLeaderFailover runs three supervisor replicas on a 3-node
// JetStream cluster (buckets at R3), each on its own node: exactly one
// leads, every replica tracks a real agent. Then the leader's node is shut
// down and the leader closed: another replica becomes the single leader,
// resolves keep answering, the agent stays healthy, and a config push
// after the failover reaches it, sent by exactly one replica.
func TestClusterLeaderFailover(t *testing.T) {
	c := natstest.RunCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Second)
	defer cancel()

	sups := make([]*supervisor.Supervisor, 3)
	for i := range sups {
		sups[i] = startReplica(t, c.Servers[i].URL(), i)
	}
	natstest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if l := leaders(sups, -1); len(l) != 1 {
			return fmt.Errorf("leaders %v, want exactly one", l)
		}
		return nil
	})
	old := leaders(sups, -1)[0]
	for i, s := range sups {
		if s.LeaderID() != sups[old].ReplicaID() {
			t.Errorf("replica %d sees holder %q, want %q", i, s.LeaderID(), sups[old].ReplicaID())
		}
	}
	if _, err := sups[old].Buckets().Configs.Put(ctx, "global.github", []byte(`{"url":"https://g1.example/mcp"}`)); err != nil {
		t.Fatal(err)
	}

	natstest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		for i, s := range sups { // any replica may answer the agent's resolve
			if _, err := s.Index().Resolve("c1", "github"); err != nil {
				return fmt.Errorf("replica %d: %w", i, err)
			}
		}
		return nil
	})
	for _, s := range sups {
		suptest.Register(t, s, "dev", "c1")
	}
	acfg := faultConfig(t, c.URLs(), "c1")
	acfg.SkipInitialResolve = false
	agent := startAgent(t, acfg)
	if _, err := agent.Resolve(ctx, "github"); err != nil {
		t.Fatal(err)
	}
	natstest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		return healthyEverywhere(sups, -1, "c1")
	})

	// Every reresolve sent to c1 from here on, by command-id epoch (one per replica).
	watch := observer(t, c.Servers[(old+1)%3].URL())
	var mu sync.Mutex
	epochs := map[string]int{}
	sub, err := watch.Subscribe(subj.Command("c1"), func(m *nats.Msg) {
		if m.Header.Get(agentproto.HeaderProbe) != "" {
			return // the agent's own subscription probe
		}
		var cmd agentproto.Command
		if json.Unmarshal(m.Data, &cmd) != nil || cmd.Type != agentproto.CmdReresolve || !strings.Contains(cmd.Reason, "global.github") {
			return
		}
		epoch, _, _ := strings.Cut(cmd.ID, "-")
		mu.Lock()
		epochs[epoch]++
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := watch.Flush(); err != nil {
		t.Fatal(err)
	}

	// (a) the leader's node dies and the leader goes with it.
	start := time.Now()
	c.Servers[old].Shutdown()
	sups[old].Close()
	var next int
	natstest.CheckFor(t, 15*time.Second, 5*time.Millisecond, func() error {
		l := leaders(sups, old)
		if len(l) != 1 {
			return fmt.Errorf("leaders among survivors %v, want exactly one", l)
		}
		next = l[0]
		return nil
	})
	failover := time.Since(start)
	t.Logf("failover: replica %d leads %v after the leader's node and the leader went down", next, failover.Round(time.Millisecond))

	natstest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		rctx, rcancel := context.WithTimeout(ctx, time.Second)
		defer rcancel()
		if _, err := agent.Resolve(rctx, "github"); err != nil {
			return fmt.Errorf("resolve after failover: %w", err)
		}
		return healthyEverywhere(sups, old, "c1")
	})

	// A config push after the failover reaches the agent, from one replica.
	var rev uint64
	natstest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		pctx, pcancel := context.WithTimeout(ctx, time.Second)
		defer pcancel()
		rev, err = sups[next].Buckets().Configs.Put(pctx, "global.github", []byte(`{"url":"https://g2.example/mcp"}`))
		return err
	})
	natstest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		held, ok := agent.Resolver().Held("github")
		if !ok || held.Revision < rev {
			return fmt.Errorf("agent holds github revision %d, want %d", held.Revision, rev)
		}
		st, _ := sups[next].Fleet().Agent("c1")
		if st.Configs["github"].Revision < rev {
			return fmt.Errorf("leader sees c1 on github revision %d, want %d", st.Configs["github"].Revision, rev)
		}
		return healthyEverywhere(sups, old, "c1")
	})
	mu.Lock()
	got := len(epochs)
	mu.Unlock()
	if got != 1 {
		t.Errorf("reresolve for the push came from %d replicas (%v), want exactly 1", got, epochs)
	}
	other := 3 - old - next
	if n := counter(t, sups[other], "tether_commands_sent_total", nil) + counter(t, sups[other], "tether_probes_sent_total", nil); n != 0 {
		t.Errorf("follower replica %d sent %v probes/commands", other, n)
	}
	if n := counter(t, sups[next], "tether_commands_sent_total", map[string]string{"type": "reresolve"}); n < 1 {
		t.Errorf("new leader replica %d sent no reresolve", next)
	}
	if failover > 10*time.Second {
		t.Errorf("failover took %v", failover)
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Error("test ran past its 25 s budget")
	}
}
