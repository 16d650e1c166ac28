package fleet_test

import (
	"encoding/json"
	"fmt"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/internal/natstest"
	"github.com/tether-dev/tether/supervisor"
	"github.com/tether-dev/tether/supervisor/fleet"
)

// benchAgent is a realistic heartbeat source: two configs applied, call
// counters, a probe ack (~330 bytes a heartbeat).
func benchAgent(i int) *simAgent {
	return &simAgent{id: "agent-" + strconv.Itoa(1000000 + i)[1:], probeAck: "x-p1",
		applied: map[string]uint64{"github": 12, "jira": 3}}
}

func benchConfig(b testing.TB, srv *natstest.Server) supervisor.Config {
	cfg := testConfig(b, srv)
	cfg.Logger = zerolog.New(zerolog.NewTestWriter(b)).Level(zerolog.WarnLevel)
	cfg.HTTPAddr = ""
	cfg.Fleet.HeartbeatInterval = time.Second
	cfg.Fleet.ProbeInterval = time.Hour // measure ingest, not probing
	cfg.Fleet.ProbeTimeout = 2 * time.Second
	cfg.Fleet.ResendInterval = 2 * time.Second
	return cfg
}

// BenchmarkHeartbeatDecode compares the cost of one heartbeat through the
// tracker (decode, lookup, update) with the same tracker without the
// heartbeat bounds (tracker-unbounded: what the bounds cost) and with
// encoding/json decoding it into agentproto.Heartbeat, the struct a
// competitor would write. Run each in a fresh process, alternating
// (BENCHMARKS.md):
//
//	go test -run '^$' -bench 'HeartbeatDecode/tracker$' -benchmem ./supervisor/fleet/
//	go test -run '^$' -bench 'HeartbeatDecode/tracker-unbounded$' -benchmem ./supervisor/fleet/
//	go test -run '^$' -bench 'HeartbeatDecode/json-struct$' -benchmem ./supervisor/fleet/
//
// tracker-servers and json-struct-servers are the same with two MCP
// servers' call health in every heartbeat (issue 14).
func BenchmarkHeartbeatDecode(b *testing.B) {
	const n = 10000
	msgs := make([]*nats.Msg, n)
	for i := range msgs {
		a := benchAgent(i)
		a.seq = 1
		msgs[i] = &nats.Msg{Subject: subj.Heartbeat(a.id), Reply: agentproto.HeartbeatReply(a.id),
			Data: a.heartbeat(time.Second, time.Now().UTC().Format(time.RFC3339Nano))}
	}
	// Both trackers run the same loop: a fresh seq for every agent each
	// n heartbeats (prepared outside the timer), so every heartbeat is
	// applied, none discarded as stale.
	hb := func(a *simAgent, sent string, servers bool) []byte {
		data := a.heartbeat(time.Second, sent)
		if servers {
			data = append(append(data[:len(data)-1], benchServers...), '}')
		}
		return data
	}
	prepare := func(servers bool) {
		for j := range msgs {
			msgs[j].Data = hb(benchAgent(j), "2026-01-01T00:00:00Z", servers)
		}
	}
	throughTracker := func(b *testing.B, tr *fleet.Tracker, servers bool) {
		prepare(servers)
		b.SetBytes(int64(len(msgs[0].Data)))
		b.ReportAllocs()
		seq := uint64(1)
		for i := 0; b.Loop(); i++ {
			if i%n == 0 {
				seq++
				b.StopTimer()
				for j := range msgs {
					a := benchAgent(j)
					a.seq = seq
					msgs[j].Data = hb(a, "2026-01-01T00:00:00Z", servers)
				}
				b.StartTimer()
			}
			tr.HandleHeartbeat(msgs[i%n])
		}
	}
	b.Run("tracker", func(b *testing.B) {
		throughTracker(b, fleet.NewTracker(fleet.DefaultConfig(), nil), false)
	})
	b.Run("tracker-unbounded", func(b *testing.B) {
		throughTracker(b, fleet.NewUnboundedTracker(fleet.DefaultConfig()), false)
	})
	// The same heartbeats with two MCP servers' call health (issue 14).
	b.Run("tracker-servers", func(b *testing.B) {
		throughTracker(b, fleet.NewTracker(fleet.DefaultConfig(), nil), true)
	})
	jsonStruct := func(b *testing.B, servers bool) {
		prepare(servers)
		b.SetBytes(int64(len(msgs[0].Data)))
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			var hb agentproto.Heartbeat
			if err := json.Unmarshal(msgs[i%n].Data, &hb); err != nil || hb.Agent == "" || servers && len(hb.Servers) != 2 {
				b.Fatal(err)
			}
		}
	}
	b.Run("json-struct", func(b *testing.B) { jsonStruct(b, false) })
	// The reference for tracker-servers.
	b.Run("json-struct-servers", func(b *testing.B) { jsonStruct(b, true) })
}

// benchServers is a heartbeat's servers field for two MCP servers.
const benchServers = `,"servers":{"github":{"ok":120,"retried":3,"failed":1,"outcome_unknown":0,"state":"ok","last_error_class":"transient","last_failure":"refused","restarts":0},` +
	`"jira":{"ok":7,"retried":0,"failed":2,"outcome_unknown":1,"state":"failing","last_error_class":"unknown","last_failure":"http_503","restarts":0}}`

// BenchmarkSweep100k is one judgement pass over 100,000 agents.
func BenchmarkSweep100k(b *testing.B) {
	const n = 100000
	tr := fleet.NewTracker(fleet.DefaultConfig(), func() bool { return false })
	for i := 0; i < n; i++ {
		a := benchAgent(i)
		a.seq = 1
		tr.HandleHeartbeat(&nats.Msg{Subject: subj.Heartbeat(a.id), Data: a.heartbeat(time.Second, "2026-01-01T00:00:00Z")})
	}
	b.ReportAllocs()
	for b.Loop() {
		tr.Sweep()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/n, "ns/agent")
}

// BenchmarkTrackerMemory reports the supervisor's heap per tracked agent
// with 100,000 agents, each heard a few times.
func BenchmarkTrackerMemory(b *testing.B) {
	const n = 100000
	for b.Loop() {
		runtime.GC()
		var m0, m1 runtime.MemStats
		runtime.ReadMemStats(&m0)
		tr := fleet.NewTracker(fleet.DefaultConfig(), nil)
		for round := uint64(1); round <= 3; round++ {
			for i := 0; i < n; i++ {
				a := benchAgent(i)
				a.seq = round
				tr.HandleHeartbeat(&nats.Msg{Subject: subj.Heartbeat(a.id), Reply: agentproto.HeartbeatReply(a.id),
					Data: a.heartbeat(time.Second, "2026-01-01T00:00:00Z")})
			}
		}
		tr.Sweep() // schedules probes, as a running tracker would
		runtime.GC()
		runtime.ReadMemStats(&m1)
		b.ReportMetric(float64(m1.HeapAlloc-m0.HeapAlloc)/n, "bytes/agent")
		runtime.KeepAlive(tr)
	}
}

// benchServer is the embedded server of the fleet benchmarks with the
// sync setting of production: startEmbedded sets SyncAlways, so every
// mcp_fleet write is fsynced before it is acknowledged.
func benchServer(b *testing.B) *natstest.Server {
	return natstest.RunServer(b, natstest.WithSyncAlways())
}

// BenchmarkDetection10k measures, with 10,000 agents heartbeating, how
// long the supervisor takes to find 100 agents that went silent (lost) and
// 100 whose command subscription died (zombie), in heartbeat intervals.
func BenchmarkDetection10k(b *testing.B) {
	const n, faulty, interval = 10000, 100, 500 * time.Millisecond
	for b.Loop() {
		srv := benchServer(b)
		cfg := benchConfig(b, srv)
		cfg.Fleet.HeartbeatInterval = interval
		cfg.Fleet.CheckInterval = interval / 10
		cfg.Fleet.ProbeInterval, cfg.Fleet.ProbeTimeout = interval, 2*interval
		cfg.Fleet.ResendInterval = 2 * interval
		cfg.Fleet.RecoveryRate = 1000
		s := startSupervisor(b, cfg)
		f := startSimFleet(b, srv.URL(), n, interval, false)
		waitAllState(b, s.Fleet(), f, fleet.StateHealthy, 30*time.Second)
		natstest.CheckFor(b, 10*time.Second, 10*time.Millisecond, func() error { // probes answered fleet-wide
			if v := s.Metrics().Fleet.CounterValue("tether_probes_sent_total"); v < 2*n {
				return fmt.Errorf("%v probes sent", v)
			}
			return nil
		})
		lost, zombie, healthy := injectFaults(b, s.Fleet(), f, faulty)
		vals := func(m map[string]time.Duration) []time.Duration {
			out := make([]time.Duration, 0, len(m))
			for _, d := range m {
				out = append(out, d)
			}
			return out
		}
		l50, _, lmax := percentiles(vals(lost))
		z50, _, zmax := percentiles(vals(zombie))
		x := func(d time.Duration) float64 { return float64(d) / float64(interval) }
		b.ReportMetric(x(l50), "lost-p50-intervals")
		b.ReportMetric(x(lmax), "lost-max-intervals")
		b.ReportMetric(x(z50), "zombie-p50-intervals")
		b.ReportMetric(x(zmax), "zombie-max-intervals")
		b.ReportMetric(x(healthy), "zombies-healthy-intervals")
		b.Logf("10k agents, interval %v: lost after p50 %.2f / max %.2f intervals (from last heartbeat); zombie after p50 %.2f / max %.2f intervals (from fault); all 100 zombies healthy again after %.2f intervals",
			interval, x(l50), x(lmax), x(z50), x(zmax), x(healthy))
		f.Stop()
	}
}

// injectFaults mutes faulty agents and makes as many others deaf to
// probes, then returns per agent the time to lost (from its last
// heartbeat) and to zombie (from the fault), and when every zombie was
// healthy again.
func injectFaults(b *testing.B, fl *fleet.Fleet, f *simFleet, faulty int) (lost, zombie map[string]time.Duration, healthy time.Duration) {
	mute, deaf := f.ids[:faulty], f.ids[faulty:2*faulty]
	fault := time.Now()
	last := map[string]time.Time{}
	f.set(mute, func(a *simAgent) { a.mute = true; last[a.id] = a.lastBeat })
	f.set(deaf, func(a *simAgent) { a.deaf = true })
	lost, zombie = map[string]time.Duration{}, map[string]time.Duration{}
	record := func(ids []string, want fleet.State, into map[string]time.Duration, from func(string) time.Time) {
		for _, id := range ids {
			if _, ok := into[id]; !ok {
				if st, _ := fl.Agent(id); st.State == want {
					into[id] = time.Since(from(id))
				}
			}
		}
	}
	natstest.CheckFor(b, 30*time.Second, 5*time.Millisecond, func() error {
		record(mute, fleet.StateLost, lost, func(id string) time.Time { return last[id] })
		record(deaf, fleet.StateZombie, zombie, func(string) time.Time { return fault })
		if len(lost) < faulty || len(zombie) < faulty {
			return fmt.Errorf("lost %d, zombie %d of %d", len(lost), len(zombie), faulty)
		}
		return nil
	})
	natstest.CheckFor(b, 30*time.Second, 5*time.Millisecond, func() error {
		for _, id := range deaf {
			if st, _ := fl.Agent(id); st.State != fleet.StateHealthy {
				return fmt.Errorf("%s still %v", id, st.State)
			}
		}
		healthy = time.Since(fault)
		return nil
	})
	return lost, zombie, healthy
}

// BenchmarkConfigPush1000 measures put-to-delivery and put-to-applied
// latency of a global config change affecting 1,000 agents, with the
// default not_before spread and with none.
func BenchmarkConfigPush1000(b *testing.B) {
	for _, spreadRate := range []float64{fleet.DefaultPushSpreadRate, 0} {
		b.Run(fmt.Sprintf("spread-rate-%v", spreadRate), func(b *testing.B) {
			for b.Loop() {
				benchPush(b, spreadRate)
			}
		})
	}
}

func benchPush(b *testing.B, spreadRate float64) {
	const n, rounds = 1000, 5
	srv := benchServer(b)
	cfg := benchConfig(b, srv)
	cfg.Fleet.PushSpreadRate = spreadRate
	s := startSupervisor(b, cfg)
	f := startSimFleet(b, srv.URL(), n, time.Second, true)
	waitAllState(b, s.Fleet(), f, fleet.StateHealthy, 30*time.Second)
	var deliver, apply []time.Duration
	for r := 0; r < rounds; r++ {
		mark := f.mark()
		start := time.Now()
		rev := put(b, s, "mcp_configs", "global.X", fmt.Sprintf(`{"url":"https://v%d.example"}`, r))
		var applied map[string]time.Time
		natstest.CheckFor(b, 30*time.Second, 2*time.Millisecond, func() error {
			if applied = f.appliedAt("X", rev); len(applied) < n {
				return fmt.Errorf("%d of %d applied", len(applied), n)
			}
			return nil
		})
		cmds, _ := f.since(mark)
		seen := map[string]bool{}
		for _, c := range cmds {
			if c.Type == agentproto.CmdReresolve && !seen[c.agent] {
				seen[c.agent] = true
				deliver = append(deliver, c.at.Sub(start))
			}
		}
		for _, at := range applied {
			apply = append(apply, at.Sub(start))
		}
	}
	d50, d99, _ := percentiles(deliver)
	a50, a99, amax := percentiles(apply)
	b.ReportMetric(float64(d50.Microseconds())/1000, "deliver-p50-ms")
	b.ReportMetric(float64(d99.Microseconds())/1000, "deliver-p99-ms")
	b.ReportMetric(float64(a50.Microseconds())/1000, "applied-p50-ms")
	b.ReportMetric(float64(a99.Microseconds())/1000, "applied-p99-ms")
	b.Logf("push to %d agents x %d puts (spread rate %v/s): delivered p50 %v p99 %v; applied (resolved) p50 %v p99 %v max %v",
		n, rounds, spreadRate, d50, d99, a50, a99, amax)
	f.Stop()
}
