package fleet_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/internal/natstest"
	"github.com/tether-dev/tether/supervisor/fleet"
)

// ingestResult is one rung of the ingest ladder: the target rate, the rate
// the publisher actually achieved and the CPU it used doing so.
type ingestResult struct {
	rate, achieved, published, processed, dropped int
	lag                                           time.Duration
	pubCPU                                        float64 // publisher process CPU over the publish window, in cores
}

// ok: nothing dropped, everything processed within 500 ms of the last
// publish, and the publisher really reached (95% of) the target rate.
func (r ingestResult) ok() bool {
	return r.dropped == 0 && r.processed >= r.published && r.lag <= 500*time.Millisecond && r.achieved*100 >= r.rate*95
}

// why says what ended the ladder at r.
func (r ingestResult) why() string {
	switch {
	case r.achieved*100 < r.rate*95:
		return fmt.Sprintf("publisher reached only %d/s", r.achieved)
	case r.dropped > 0:
		return fmt.Sprintf("%d dropped", r.dropped)
	case r.processed < r.published:
		return fmt.Sprintf("%d of %d processed within 3 s", r.processed, r.published)
	}
	return fmt.Sprintf("lag %v", r.lag.Round(time.Millisecond))
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

// The heartbeat publisher of BenchmarkHeartbeatIngest runs in its own
// process (this test binary again, BenchmarkIngestPublisherProcess), so
// its CPU is measured apart from the server's and the consumer's.
const (
	pubURLEnv    = "TETHER_BENCH_PUBLISHER_URL"
	pubAgentsEnv = "TETHER_BENCH_PUBLISHER_AGENTS"
	pubReply     = "PUBLISHED "
)

// BenchmarkIngestPublisherProcess is not a benchmark: it is the publisher
// process BenchmarkHeartbeatIngest starts, and skips otherwise. It reads
// "<rate> <duration ns>" lines from stdin, publishes at that rate for that
// long and answers "PUBLISHED <sent> <took ns> <cpu ns>" on stdout, the
// CPU being its own user+system time (getrusage) over the window.
func BenchmarkIngestPublisherProcess(b *testing.B) {
	url := os.Getenv(pubURLEnv)
	if url == "" {
		b.Skip("the publisher process of BenchmarkHeartbeatIngest; it runs only when started by it")
	}
	n, err := strconv.Atoi(os.Getenv(pubAgentsEnv))
	if err != nil {
		b.Fatal(err)
	}
	nc, err := nats.Connect(url)
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	sims := make([]*simAgent, n)
	for i := range sims {
		sims[i] = benchAgent(i)
	}
	src := newBenchSources(sims)
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		var rate int
		var d int64
		if _, err := fmt.Sscan(in.Text(), &rate, &d); err != nil {
			b.Fatal(err)
		}
		c0 := processCPU()
		sent, took := publishAt(nc, src, rate, time.Duration(d))
		fmt.Printf("%s%d %d %d\n", pubReply, sent, took, processCPU()-c0)
	}
}

// processCPU is this process's user+system CPU time.
func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// pubProcess is a running publisher process.
type pubProcess struct {
	b   *testing.B
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
}

func startPublisher(b *testing.B, url string, agents int) *pubProcess {
	cmd := exec.Command(os.Args[0], "-test.run=^$", "-test.bench=^BenchmarkIngestPublisherProcess$", "-test.benchtime=1x")
	cmd.Env = append(os.Environ(), pubURLEnv+"="+url, pubAgentsEnv+"="+strconv.Itoa(agents))
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	p := &pubProcess{b: b, cmd: cmd, in: in, out: bufio.NewScanner(out)}
	b.Cleanup(p.close)
	return p
}

// publish asks the process for rate heartbeats a second for d; it returns
// how many it sent, how long that took and the CPU it used.
func (p *pubProcess) publish(rate int, d time.Duration) (int, time.Duration, time.Duration) {
	if _, err := fmt.Fprintf(p.in, "%d %d\n", rate, int64(d)); err != nil {
		p.b.Fatal(err)
	}
	for p.out.Scan() {
		rest, ok := strings.CutPrefix(p.out.Text(), pubReply)
		if !ok {
			continue // the test framework's own output
		}
		var sent int
		var took, cpu int64
		if _, err := fmt.Sscan(rest, &sent, &took, &cpu); err != nil {
			p.b.Fatal(err)
		}
		return sent, time.Duration(took), time.Duration(cpu)
	}
	p.b.Fatalf("publisher process ended: %v", p.out.Err())
	return 0, 0, 0
}

func (p *pubProcess) close() {
	if p.in != nil {
		_ = p.in.Close()
		_ = p.cmd.Wait()
		p.in = nil
	}
}

// ingestRates is the ladder, in heartbeats a second.
var ingestRates = []int{25000, 37500, 50000, 62500, 75000, 100000, 125000, 150000, 200000, 250000, 300000, 400000, 500000, 600000, 800000, 1000000}

// ingestLadder raises the rate until the consumer drops or lags (or the
// publisher falls short); it returns every rung run.
func ingestLadder(b *testing.B, name string, pub *pubProcess, processed func() int, dropped func() int) []ingestResult {
	var out []ingestResult
	for _, rate := range ingestRates {
		p0, d0 := processed(), dropped()
		n, took, cpu := pub.publish(rate, 2*time.Second)
		end := time.Now()
		r := ingestResult{rate: rate, published: n, achieved: int(float64(n) / took.Seconds()), pubCPU: cpu.Seconds() / took.Seconds()}
		for time.Since(end) < 3*time.Second && processed()-p0 < n {
			time.Sleep(time.Millisecond)
		}
		r.lag, r.processed, r.dropped = time.Since(end), processed()-p0, dropped()-d0
		out = append(out, r)
		fmt.Printf("    ingest %s: target %d/s achieved %d/s (publisher CPU %.2f cores): published %d processed %d dropped %d lag %v\n",
			name, rate, r.achieved, r.pubCPU, n, r.processed, r.dropped, r.lag.Round(time.Millisecond))
		if !r.ok() {
			break
		}
	}
	return out
}

// ladderSummary is a ladder's best rate with zero drops, the publisher's
// CPU there, and what ended it ("" if it passed the top rung).
type ladderSummary struct {
	best   int
	pubCPU float64
	ended  string
}

func summarize(rs []ingestResult) ladderSummary {
	var s ladderSummary
	for _, r := range rs {
		if r.ok() && r.achieved > s.best {
			s.best, s.pubCPU = r.achieved, r.pubCPU
		}
	}
	if last := rs[len(rs)-1]; !last.ok() {
		s.ended = fmt.Sprintf("at %d/s: %s, publisher CPU %.2f cores", last.rate, last.why(), last.pubCPU)
	} else {
		s.ended = "passed the top rung: a lower bound"
	}
	return s
}

// ingestConsumers are the three consumers of BenchmarkHeartbeatIngest.
var ingestConsumers = []string{"supervisor", "json-struct", "noop"}

// BenchmarkHeartbeatIngest finds the highest heartbeat rate from 100,000
// agents taken with zero drops by the supervisor and by two references on
// the same embedded server (SyncAlways, as in production): a subscriber
// that decodes each heartbeat with encoding/json into agentproto.Heartbeat,
// and a no-op subscriber (the ceiling: what one subscription on this
// server delivers). In each iteration the three run in rotating order,
// each after runtime.GC and debug.FreeOSMemory; the publisher is a
// separate process whose CPU is reported. Metrics are medians over
// iterations; the log prints every rung.
//
//	go test -run '^$' -bench BenchmarkHeartbeatIngest -benchtime 3x -timeout 60m ./supervisor/fleet/
func BenchmarkHeartbeatIngest(b *testing.B) {
	const n = 100000
	res := map[string][]ladderSummary{}
	var heap []float64
	for i := 0; b.Loop(); i++ {
		srv := benchServer(b)
		pub := startPublisher(b, srv.URL(), n)
		for k := range ingestConsumers {
			who := ingestConsumers[(i+k)%len(ingestConsumers)]
			runtime.GC()
			debug.FreeOSMemory()
			var s ladderSummary
			if who == "supervisor" {
				var perAgent float64
				s, perAgent = ingestSupervisor(b, srv, pub, n)
				heap = append(heap, perAgent)
			} else {
				s = ingestBare(b, srv, pub, who)
			}
			res[who] = append(res[who], s)
			fmt.Printf("    ingest iteration %d %s: %d hb/s with zero drops (publisher CPU %.2f cores); ended %s\n", i+1, who, s.best, s.pubCPU, s.ended)
		}
		pub.close()
		srv.Shutdown()
	}
	med := func(v []float64) float64 {
		v = slices.Clone(v)
		slices.Sort(v)
		return v[len(v)/2]
	}
	rate := func(who string) float64 {
		v := make([]float64, 0, len(res[who]))
		for _, s := range res[who] {
			v = append(v, float64(s.best))
		}
		return med(v)
	}
	var cpu []float64
	for _, who := range ingestConsumers {
		for _, s := range res[who] {
			cpu = append(cpu, s.pubCPU)
		}
	}
	sr, jr, nr := rate("supervisor"), rate("json-struct"), rate("noop")
	b.ReportMetric(sr, "supervisor-hb/s")
	b.ReportMetric(jr, "json-struct-hb/s")
	b.ReportMetric(nr, "noop-hb/s")
	b.ReportMetric(sr/max(jr, 1), "supervisor/json-struct")
	b.ReportMetric(sr/max(nr, 1), "supervisor/noop")
	b.ReportMetric(slices.Max(cpu), "max-publisher-cores")
	b.ReportMetric(med(heap), "process-heap-bytes/agent")
	b.Logf("ingest, medians of %d: supervisor %.0f hb/s = %.2f× json-struct (%.0f) = %.0f%% of the no-op ceiling (%.0f); publisher CPU at most %.2f cores; process heap %.0f B/agent",
		len(heap), sr, sr/max(jr, 1), jr, 100*sr/max(nr, 1), nr, slices.Max(cpu), med(heap))
}

// ingestSupervisor runs the ladder against a real supervisor and returns it
// with the process heap per agent (supervisor + embedded server).
func ingestSupervisor(b *testing.B, srv *natstest.Server, pub *pubProcess, n int) (ladderSummary, float64) {
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	cfg := benchConfig(b, srv)
	cfg.Logger = cfg.Logger.Level(zerolog.ErrorLevel) // the warm-up's write retries are expected
	s := startSupervisor(b, cfg)
	defer s.Close()
	// Every agent joins once; joining writes its mcp_fleet record (a
	// state change), fsynced one by one. Keep every agent heartbeating
	// (each every 2 s) until those writes are done and no more follow, so
	// no agent goes suspect and the ladder measures heartbeats only.
	w0 := int(s.Metrics().Fleet.CounterValue("tether_fleet_kv_writes_total", "ok"))
	written := func() int { return int(s.Metrics().Fleet.CounterValue("tether_fleet_kv_writes_total", "ok")) - w0 }
	start, prev := time.Now(), -1
	for {
		if time.Since(start) > 300*time.Second {
			b.Fatalf("warm-up: %d of %d records written after 300 s", written(), n)
		}
		pub.publish(50000, 2*time.Second)
		if w := written(); w >= n && w == prev {
			break
		}
		prev = written()
	}
	rs := ingestLadder(b, "supervisor", pub, func() int { return int(s.Metrics().Fleet.CounterValue("tether_heartbeats_received_total")) },
		func() int {
			return int(s.Metrics().Fleet.CounterValue("tether_heartbeats_discarded_total", fleet.DiscardDropped))
		})
	if got := len(s.Fleet().AgentIDs()); got != n {
		b.Fatalf("tracked %d agents, want %d", got, n)
	}
	runtime.GC()
	runtime.ReadMemStats(&m1)
	return summarize(rs), (float64(m1.HeapAlloc) - float64(m0.HeapAlloc)) / float64(n)
}

// ingestBare runs the ladder against one plain subscription on the
// heartbeat wildcard, with the supervisor's pending limits, that decodes
// each heartbeat into agentproto.Heartbeat (json-struct) or only counts it
// (noop).
func ingestBare(b *testing.B, srv *natstest.Server, pub *pubProcess, who string) ladderSummary {
	var count atomic.Int64
	handler := func(*nats.Msg) { count.Add(1) }
	if who == "json-struct" {
		handler = func(m *nats.Msg) {
			var hb agentproto.Heartbeat
			if json.Unmarshal(m.Data, &hb) == nil && hb.Agent != "" {
				count.Add(1)
			}
		}
	}
	nc, err := nats.Connect(srv.URL())
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	sub, err := nc.Subscribe(subj.Wildcard("hb"), handler)
	if err != nil {
		b.Fatal(err)
	}
	_ = sub.SetPendingLimits(fleet.HeartbeatPendingMsgs, fleet.HeartbeatPendingBytes)
	if err := nc.Flush(); err != nil {
		b.Fatal(err)
	}
	rs := ingestLadder(b, who, pub, func() int { return int(count.Load()) },
		func() int { d, _ := sub.Dropped(); return d })
	return summarize(rs)
}
