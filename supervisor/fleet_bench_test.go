package supervisor

import (
	"encoding/json"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/internal/natstest"
)

// benchAgent is a realistic heartbeat source: two configs applied, call
// counters, a probe ack (~330 bytes a heartbeat).
func benchAgent(i int) *simAgent {
	return &simAgent{id: "agent-" + strconv.Itoa(1000000 + i)[1:], probeAck: "x-p1",
		applied: map[string]uint64{"github": 12, "jira": 3}}
}

func benchConfig(b testing.TB, srv *natstest.Server) Config {
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
// tracker (decode, lookup, update) with decoding it into a map.
func BenchmarkHeartbeatDecode(b *testing.B) {
	const n = 10000
	msgs := make([]*nats.Msg, n)
	for i := range msgs {
		a := benchAgent(i)
		a.seq = 1
		msgs[i] = &nats.Msg{Subject: subj.Heartbeat(a.id), Reply: agentproto.HeartbeatReply(a.id),
			Data: a.heartbeat(time.Second, time.Now().UTC().Format(time.RFC3339Nano))}
	}
	b.Run("tracker", func(b *testing.B) {
		cmd, _ := newCommander(nil, nil, "mcp", nil, zerolog.Nop(), nil)
		tr := newTracker(DefaultFleetConfig(), "mcp", cmd, zerolog.Nop(), nil)
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
					msgs[j].Data = a.heartbeat(time.Second, "2026-01-01T00:00:00Z")
				}
				b.StartTimer()
			}
			tr.handleHeartbeat(msgs[i%n])
		}
	})
	b.Run("bare-map", func(b *testing.B) {
		b.SetBytes(int64(len(msgs[0].Data)))
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			var m map[string]any
			if err := json.Unmarshal(msgs[i%n].Data, &m); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkSweep100k is one judgement pass over 100,000 agents.
func BenchmarkSweep100k(b *testing.B) {
	const n = 100000
	cmd, _ := newCommander(nil, nil, "mcp", func() bool { return false }, zerolog.Nop(), nil)
	tr := newTracker(DefaultFleetConfig(), "mcp", cmd, zerolog.Nop(), nil)
	for i := 0; i < n; i++ {
		a := benchAgent(i)
		a.seq = 1
		tr.handleHeartbeat(&nats.Msg{Subject: subj.Heartbeat(a.id), Data: a.heartbeat(time.Second, "2026-01-01T00:00:00Z")})
	}
	b.ReportAllocs()
	for b.Loop() {
		tr.sweepOnce()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/n, "ns/agent")
}

// BenchmarkTrackerMemory reports the supervisor's heap per tracked agent
// with 100,000 agents, each heard a few times.
func BenchmarkTrackerMemory(b *testing.B) {
	const n = 100000
	for b.Loop() {
		cmd, _ := newCommander(nil, nil, "mcp", nil, zerolog.Nop(), nil)
		runtime.GC()
		var m0, m1 runtime.MemStats
		runtime.ReadMemStats(&m0)
		tr := newTracker(DefaultFleetConfig(), "mcp", cmd, zerolog.Nop(), nil)
		for round := uint64(1); round <= 3; round++ {
			for i := 0; i < n; i++ {
				a := benchAgent(i)
				a.seq = round
				tr.handleHeartbeat(&nats.Msg{Subject: subj.Heartbeat(a.id), Reply: agentproto.HeartbeatReply(a.id),
					Data: a.heartbeat(time.Second, "2026-01-01T00:00:00Z")})
			}
		}
		tr.sweepOnce() // schedules probes, as a running tracker would
		runtime.GC()
		runtime.ReadMemStats(&m1)
		b.ReportMetric(float64(m1.HeapAlloc-m0.HeapAlloc)/n, "bytes/agent")
		runtime.KeepAlive(tr)
	}
}

// ingestResult is one rung of the ingest ladder: the target rate and the
// rate the publisher actually achieved.
type ingestResult struct {
	rate, achieved, published, processed, dropped int
	lag                                           time.Duration
}

// ok: nothing dropped, everything processed within 500 ms of the last
// publish, and the publisher really reached (95% of) the target rate.
func (r ingestResult) ok() bool {
	return r.dropped == 0 && r.processed >= r.published && r.lag <= 500*time.Millisecond && r.achieved*100 >= r.rate*95
}

// benchSource is a heartbeat template per agent whose seq is patched in
// place (a space-padded number is valid JSON), so the publisher spends its
// time publishing, not encoding.
type benchSource struct {
	subj, reply string
	buf         []byte
	seqAt       int
	seq         uint64
}

const seqWidth = 12

func newBenchSources(agents []*simAgent) []*benchSource {
	out := make([]*benchSource, len(agents))
	sentAt := time.Now().UTC().Format(time.RFC3339Nano)
	for i, a := range agents {
		a.seq = 1234567890
		// Agents announce 10 s: at the lowest rate of the ladder each one
		// heartbeats every 2 s, which must not make anyone suspect.
		b := a.heartbeat(10*time.Second, sentAt)
		at := strings.Index(string(b), `"seq":`) + len(`"seq":`)
		buf := append(append(append([]byte{}, b[:at]...), strings.Repeat(" ", seqWidth)...), b[at+len("1234567890"):]...)
		out[i] = &benchSource{subj: subj.Heartbeat(a.id), reply: agentproto.HeartbeatReply(a.id), buf: buf, seqAt: at}
	}
	return out
}

func (s *benchSource) next() []byte {
	s.seq++
	n := s.seq
	for i := s.seqAt + seqWidth - 1; i >= s.seqAt; i-- {
		if n == 0 && i < s.seqAt+seqWidth-1 {
			s.buf[i] = ' '
			continue
		}
		s.buf[i] = byte('0' + n%10)
		n /= 10
	}
	return s.buf
}

// publishAt publishes heartbeats for agents round-robin at rate per second
// for d, paced every 200 µs; it returns how many and how long it took.
func publishAt(nc *nats.Conn, src []*benchSource, rate int, d time.Duration) (int, time.Duration) {
	start := time.Now()
	sent, total := 0, int(float64(rate)*d.Seconds())
	for sent < total {
		el := time.Since(start)
		for target := min(total, int(float64(rate)*el.Seconds())); sent < target; sent++ {
			s := src[sent%len(src)]
			_ = nc.PublishRequest(s.subj, s.reply, s.next())
		}
		time.Sleep(200 * time.Microsecond)
	}
	_ = nc.Flush()
	return sent, time.Since(start)
}

// ingestLadder raises the rate until the consumer drops or lags; it
// returns every rung run.
func ingestLadder(b *testing.B, pub *nats.Conn, agents []*benchSource, processed func() int, dropped func() int) []ingestResult {
	var out []ingestResult
	for _, rate := range []int{25000, 37500, 50000, 62500, 75000, 100000, 125000, 150000, 200000, 250000} {
		p0, d0 := processed(), dropped()
		n, took := publishAt(pub, agents, rate, 2*time.Second)
		end := time.Now()
		r := ingestResult{rate: rate, published: n, achieved: int(float64(n) / took.Seconds())}
		for time.Since(end) < 3*time.Second && processed()-p0 < n {
			time.Sleep(time.Millisecond)
		}
		r.lag, r.processed, r.dropped = time.Since(end), processed()-p0, dropped()-d0
		out = append(out, r)
		b.Logf("target %d/s achieved %d/s: published %d processed %d dropped %d lag %v", rate, r.achieved, n, r.processed, r.dropped, r.lag.Round(time.Millisecond))
		if !r.ok() {
			break
		}
	}
	return out
}

func maxOK(rs []ingestResult) int {
	best := 0
	for _, r := range rs {
		if r.ok() {
			best = max(best, r.achieved)
		}
	}
	return best
}

// BenchmarkHeartbeatIngest finds the highest heartbeat rate the supervisor
// takes from 100,000 agents with zero drops, and the same for a bare
// subscriber that only decodes each heartbeat into a map, in one run.
func BenchmarkHeartbeatIngest(b *testing.B) {
	const n = 100000
	for b.Loop() {
		srv := natstest.RunServer(b)
		sims := make([]*simAgent, n)
		for i := range sims {
			sims[i] = benchAgent(i)
		}
		agents := newBenchSources(sims)
		pub := srv.Connect()

		runtime.GC()
		var m0, m1 runtime.MemStats
		runtime.ReadMemStats(&m0)
		s := startSupervisor(b, benchConfig(b, srv))
		// Every agent joins once; joining writes its mcp_fleet record (a
		// state change), so wait for those writes before measuring.
		warm, _ := publishAt(pub, agents, 50000, 2*time.Second)
		natstest.CheckFor(b, 120*time.Second, 10*time.Millisecond, func() error {
			if got, w := int(counterValue(s.Metrics().hbReceived)), int(counterValue(s.Metrics().kvWrites.WithLabelValues("ok"))); got < warm || w < n {
				return fmt.Errorf("warm-up: %d of %d heartbeats, %d of %d records written", got, warm, w, n)
			}
			return nil
		})
		sup := ingestLadder(b, pub, agents, func() int { return int(counterValue(s.Metrics().hbReceived)) },
			func() int { return int(counterValue(s.Metrics().hbDiscarded.WithLabelValues(discardDropped))) })
		if got := len(s.Fleet().t.sortedIDs()); got != n {
			b.Fatalf("tracked %d agents, want %d", got, n)
		}
		runtime.GC()
		runtime.ReadMemStats(&m1)
		perAgent := float64(m1.HeapAlloc-m0.HeapAlloc) / n
		s.Close()

		var count atomic.Int64
		nc := srv.Connect()
		sub, err := nc.Subscribe(subj.Wildcard("hb"), func(m *nats.Msg) {
			var v map[string]any
			if json.Unmarshal(m.Data, &v) == nil {
				count.Add(1)
			}
		})
		if err != nil {
			b.Fatal(err)
		}
		_ = sub.SetPendingLimits(hbPendingMsgs, hbPendingBytes)
		_ = nc.Flush()
		bare := ingestLadder(b, pub, agents, func() int { return int(count.Load()) },
			func() int { d, _ := sub.Dropped(); return d })
		sr, br := maxOK(sup), maxOK(bare)
		b.ReportMetric(float64(sr), "supervisor-hb/s")
		b.ReportMetric(float64(br), "bare-hb/s")
		if br > 0 {
			b.ReportMetric(float64(sr)/float64(br), "ratio")
		}
		b.ReportMetric(perAgent, "process-heap-bytes/agent")
		fmt.Fprintf(benchOut{b}, "ingest: supervisor %d hb/s, bare map decoder %d hb/s (ratio %.2f); process heap (supervisor + embedded server with the mcp_fleet store) %.0f B/agent at %d agents\n",
			sr, br, float64(sr)/float64(max(br, 1)), perAgent, n)
	}
}

// benchOut writes to the benchmark log.
type benchOut struct{ b *testing.B }

func (w benchOut) Write(p []byte) (int, error) { w.b.Log(string(p)); return len(p), nil }

// BenchmarkDetection10k measures, with 10,000 agents heartbeating, how
// long the supervisor takes to find 100 agents that went silent (lost) and
// 100 whose command subscription died (zombie), in heartbeat intervals.
func BenchmarkDetection10k(b *testing.B) {
	const n, faulty, interval = 10000, 100, 500 * time.Millisecond
	for b.Loop() {
		srv := natstest.RunServer(b)
		cfg := benchConfig(b, srv)
		cfg.Fleet.HeartbeatInterval = interval
		cfg.Fleet.CheckInterval = interval / 10
		cfg.Fleet.ProbeInterval, cfg.Fleet.ProbeTimeout = interval, 2*interval
		cfg.Fleet.ResendInterval = 2 * interval
		cfg.Fleet.RecoveryRate = 1000
		s := startSupervisor(b, cfg)
		f := startSimFleet(b, srv.URL(), n, interval, false)
		waitAllState(b, s.Fleet(), f, StateHealthy, 30*time.Second)
		natstest.CheckFor(b, 10*time.Second, 10*time.Millisecond, func() error { // probes answered fleet-wide
			if v := counterValue(s.Metrics().probesSent); v < 2*n {
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
func injectFaults(b *testing.B, fl *Fleet, f *simFleet, faulty int) (lost, zombie map[string]time.Duration, healthy time.Duration) {
	mute, deaf := f.ids[:faulty], f.ids[faulty:2*faulty]
	fault := time.Now()
	last := map[string]time.Time{}
	f.set(mute, func(a *simAgent) { a.mute = true; last[a.id] = a.lastBeat })
	f.set(deaf, func(a *simAgent) { a.deaf = true })
	lost, zombie = map[string]time.Duration{}, map[string]time.Duration{}
	record := func(ids []string, want State, into map[string]time.Duration, from func(string) time.Time) {
		for _, id := range ids {
			if _, ok := into[id]; !ok {
				if st, _ := fl.Agent(id); st.State == want {
					into[id] = time.Since(from(id))
				}
			}
		}
	}
	natstest.CheckFor(b, 30*time.Second, 5*time.Millisecond, func() error {
		record(mute, StateLost, lost, func(id string) time.Time { return last[id] })
		record(deaf, StateZombie, zombie, func(string) time.Time { return fault })
		if len(lost) < faulty || len(zombie) < faulty {
			return fmt.Errorf("lost %d, zombie %d of %d", len(lost), len(zombie), faulty)
		}
		return nil
	})
	natstest.CheckFor(b, 30*time.Second, 5*time.Millisecond, func() error {
		for _, id := range deaf {
			if st, _ := fl.Agent(id); st.State != StateHealthy {
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
	for _, spreadRate := range []float64{DefaultPushSpreadRate, 0} {
		b.Run(fmt.Sprintf("spread-rate-%v", spreadRate), func(b *testing.B) {
			for b.Loop() {
				benchPush(b, spreadRate)
			}
		})
	}
}

func benchPush(b *testing.B, spreadRate float64) {
	const n, rounds = 1000, 5
	srv := natstest.RunServer(b)
	cfg := benchConfig(b, srv)
	cfg.Fleet.PushSpreadRate = spreadRate
	s := startSupervisor(b, cfg)
	f := startSimFleet(b, srv.URL(), n, time.Second, true)
	waitAllState(b, s.Fleet(), f, StateHealthy, 30*time.Second)
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
