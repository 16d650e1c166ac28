package fleet_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/internal/natstest"
	"github.com/tether-dev/tether/internal/suptest"
	"github.com/tether-dev/tether/kvconfig"
	"github.com/tether-dev/tether/supervisor"
	"github.com/tether-dev/tether/supervisor/fleet"
)

// The steady-state memory benchmark (BenchmarkSupervisorRSS): rssAgents
// agents heartbeat every rssInterval, answer every probe and ack every
// command, for rssRounds rounds; the supervisor runs alone in a child
// process (this test binary again), so its RSS is its own and the
// embedded server's share (this process) is measured apart.
const (
	rssAgents   = 100_000
	rssInterval = 5 * time.Second // the default heartbeat interval
	rssRounds   = 8
	rssURLEnv   = "TETHER_BENCH_RSS_URL"
	rssLine     = "RSS "
	rssURLLine  = "URL "
	// rssServerEnv starts the server process; rssProfileEnv names a file
	// for the supervisor process's heap profile, written as it exits.
	rssServerEnv  = "TETHER_BENCH_RSS_SERVER"
	rssProfileEnv = "TETHER_BENCH_RSS_HEAP_PROFILE"
)

// rssSample is one line the supervisor process prints every rssEvery.
type rssSample struct {
	RSS, HWM  int64  // VmRSS, VmHWM of the supervisor process
	HeapAlloc uint64 // live + not yet collected
	HeapInuse uint64
	HeapSys   uint64
	HeapIdle  uint64
	HeapRel   uint64 // HeapReleased
	StackSys  uint64
	Sys       uint64 // everything the Go runtime got from the OS
	NumGC     uint32
	Tracked   int
	Received  int
	Dropped   int
}

const rssEvery = 500 * time.Millisecond

// rssVariant is one way to run the supervisor process.
type rssVariant struct {
	name string
	env  []string // added to the child's environment
}

// rssVariants: Go's defaults (GOGC=100, no limit), and GOMEMLIMIT as the
// README recommends it for a fleet of this size.
var rssVariants = []rssVariant{
	{"default", []string{"GOMEMLIMIT=off"}},
	{"gomemlimit-96MiB", []string{"GOMEMLIMIT=96MiB"}},
}

// rssResult is what one run measured.
type rssResult struct {
	Base       rssSample // before the first heartbeat
	Steady     rssSample // median-RSS sample of the last two rounds
	Peak       int64     // VmHWM at the end
	ServerBase int64     // this process (embedded server + publisher) before
	Server     int64     // and in the last round
}

// BenchmarkSupervisorRSS reports the supervisor's resident memory per
// tracked agent with 100,000 agents in steady state: heartbeats every
// 5 s, probes answered, mcp_fleet persisted on the fsynced embedded server.
// The supervisor process is measured alone (VmRSS of its /proc status, not
// only the Go heap); the embedded nats-server, which runs in this process
// with the publisher, is reported apart. Each variant runs in a fresh
// process, rotating the order every iteration.
//
//	go test -run '^$' -bench 'BenchmarkSupervisorRSS$' -benchtime 3x -timeout 30m ./supervisor/fleet/
func BenchmarkSupervisorRSS(b *testing.B) {
	res := map[string][]rssResult{}
	for i := 0; b.Loop(); i++ {
		for k := range rssVariants {
			v := rssVariants[(i+k)%len(rssVariants)]
			r := runRSS(b, v)
			res[v.name] = append(res[v.name], r)
			fmt.Printf("    rss iteration %d %s: supervisor RSS %.1f MB → %.1f MB (peak %.1f MB, heap %.1f MB alloc / %.1f MB sys, %d GCs), %d tracked, %d dropped; per agent %.0f B; server process %.1f → %.1f MB\n",
				i+1, v.name, mb(r.Base.RSS), mb(r.Steady.RSS), mb(r.Peak), mb(int64(r.Steady.HeapAlloc)), mb(int64(r.Steady.Sys)),
				r.Steady.NumGC, r.Steady.Tracked, r.Steady.Dropped, r.perAgent(), mb(r.ServerBase), mb(r.Server))
		}
	}
	for _, v := range rssVariants {
		med := func(f func(rssResult) float64) float64 {
			var xs []float64
			for _, r := range res[v.name] {
				xs = append(xs, f(r))
			}
			slices.Sort(xs)
			return xs[len(xs)/2]
		}
		b.ReportMetric(med(rssResult.perAgent), v.name+"-rss-B/agent")
		b.ReportMetric(med(func(r rssResult) float64 { return mb(r.Steady.RSS) }), v.name+"-rss-MB")
		b.ReportMetric(med(func(r rssResult) float64 { return mb(r.Peak) }), v.name+"-peak-MB")
		b.ReportMetric(med(func(r rssResult) float64 { return float64(r.Steady.HeapAlloc) / rssAgents }), v.name+"-heap-B/agent")
		b.ReportMetric(med(func(r rssResult) float64 { return float64(r.Server-r.ServerBase) / rssAgents }), v.name+"-server-B/agent")
	}
}

// perAgent is the supervisor's RSS growth per tracked agent.
func (r rssResult) perAgent() float64 {
	return float64(r.Steady.RSS-r.Base.RSS) / float64(max(r.Steady.Tracked, 1))
}

// runRSS runs one variant: the server and the agents here, the supervisor
// in a child process.
func runRSS(b *testing.B, v rssVariant) rssResult {
	server := startRSSProcess(b, "^BenchmarkSupervisorRSSServer$", []string{rssServerEnv + "=1"})
	defer server.stop()
	url := server.url(b)
	sup := startRSSProcess(b, "^BenchmarkSupervisorRSSProcess$", append([]string{rssURLEnv + "=" + url}, v.env...))
	defer sup.stop()
	sup.wait(b)
	time.Sleep(2 * rssEvery) // fresh samples, taken after start
	var r rssResult
	r.Base, r.ServerBase = sup.last(), server.last().RSS

	f := newPacedFleet(b, url, rssAgents, rssConfigs(b, url))
	defer f.close()
	start := time.Now()
	var steady []rssSample
	for round := 1; round <= rssRounds; round++ {
		f.round(start.Add(time.Duration(round-1) * rssInterval))
		if round > rssRounds-2 {
			steady = append(steady, sup.last())
		}
	}
	natstest.CheckFor(b, 30*time.Second, 100*time.Millisecond, func() error {
		if got := sup.last().Tracked; got < rssAgents {
			return fmt.Errorf("%d of %d agents tracked", got, rssAgents)
		}
		return nil
	})
	slices.SortFunc(steady, func(a, b rssSample) int { return int(a.RSS - b.RSS) })
	r.Steady = steady[len(steady)/2]
	r.Peak, r.Server = sup.last().HWM, server.last().RSS
	return r
}

// rssProcess is a child process of BenchmarkSupervisorRSS (this test
// binary again) that prints rssSample lines until its stdin closes.
type rssProcess struct {
	cmd     *exec.Cmd
	stdin   io.Closer
	mu      sync.Mutex
	samples []rssSample
	urlLine string
	ready   chan struct{}
}

func startRSSProcess(b *testing.B, bench string, env []string) *rssProcess {
	p := &rssProcess{ready: make(chan struct{})}
	p.cmd = exec.Command(os.Args[0], "-test.run=^$", "-test.bench="+bench, "-test.benchtime=1x")
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stderr = os.Stderr
	stdin, err := p.cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		b.Fatal(err)
	}
	p.stdin = stdin
	go p.read(out)
	return p
}

func (p *rssProcess) wait(b *testing.B) {
	select {
	case <-p.ready:
	case <-time.After(60 * time.Second):
		b.Fatal("rss process did not start")
	}
}

func (p *rssProcess) url(b *testing.B) string {
	p.wait(b)
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.urlLine
}

func (p *rssProcess) last() rssSample {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.samples) == 0 {
		return rssSample{}
	}
	return p.samples[len(p.samples)-1]
}

func (p *rssProcess) stop() {
	_ = p.stdin.Close()
	_ = p.cmd.Wait()
}

func (p *rssProcess) read(out io.Reader) {
	sc := bufio.NewScanner(out)
	once := sync.OnceFunc(func() { close(p.ready) })
	for sc.Scan() {
		line := sc.Text()
		if u, ok := strings.CutPrefix(line, rssURLLine); ok {
			p.mu.Lock()
			p.urlLine = u
			p.mu.Unlock()
			continue
		}
		rest, ok := strings.CutPrefix(line, rssLine)
		if !ok {
			if strings.HasPrefix(line, "---") || strings.Contains(line, "FAIL") {
				fmt.Println("    rss process:", line)
			}
			continue
		}
		var s rssSample
		if json.Unmarshal([]byte(rest), &s) == nil {
			p.mu.Lock()
			p.samples = append(p.samples, s)
			p.mu.Unlock()
			once()
		}
	}
}

// BenchmarkSupervisorRSSServer is not a benchmark: it is the server
// process of BenchmarkSupervisorRSS (the embedded server as the supervisor
// runs it, fsync on every write), and skips otherwise. It prints
// "URL <url>", then its samples until its stdin closes.
func BenchmarkSupervisorRSSServer(b *testing.B) {
	if os.Getenv(rssServerEnv) == "" {
		b.Skip("the server process of BenchmarkSupervisorRSS; it runs only when started by it")
	}
	srv := benchServer(b)
	fmt.Printf("%s%s\n", rssURLLine, srv.URL())
	printSamples(nil)
}

// printSamples prints an rssSample every rssEvery until stdin closes.
func printSamples(fill func(*rssSample)) {
	done := make(chan struct{})
	go func() { _, _ = io.Copy(io.Discard, os.Stdin); close(done) }()
	tk := time.NewTicker(rssEvery)
	defer tk.Stop()
	for {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		s := rssSample{RSS: procStatus("VmRSS"), HWM: procStatus("VmHWM"),
			HeapAlloc: ms.HeapAlloc, HeapInuse: ms.HeapInuse, HeapSys: ms.HeapSys, HeapIdle: ms.HeapIdle, HeapRel: ms.HeapReleased, StackSys: ms.StackSys, Sys: ms.Sys, NumGC: ms.NumGC}
		if fill != nil {
			fill(&s)
		}
		data, _ := json.Marshal(s)
		fmt.Printf("%s%s\n", rssLine, data)
		select {
		case <-done:
			if path := os.Getenv(rssProfileEnv); path != "" && fill != nil {
				writeHeapProfile(path)
			}
			// The measurement is over: exit without the test's cleanup
			// (closing a supervisor of 100,000 agents is not measured).
			os.Exit(0)
		case <-tk.C:
		}
	}
}

// BenchmarkSupervisorRSSProcess is not a benchmark: it is the supervisor
// process of BenchmarkSupervisorRSS, and skips otherwise. It prints
// "RSS <json rssSample>" every rssEvery until its stdin closes.
func BenchmarkSupervisorRSSProcess(b *testing.B) {
	url := os.Getenv(rssURLEnv)
	if url == "" {
		b.Skip("the supervisor process of BenchmarkSupervisorRSS; it runs only when started by it")
	}
	cfg := suptest.Config(b, url)
	cfg.Logger = zerolog.New(io.Discard).Level(zerolog.InfoLevel)
	cfg.Admission, cfg.Fleet.MaxAgents = supervisor.AdmitAny, rssAgents
	s := startSupervisor(b, cfg)
	m := s.Metrics().Fleet
	printSamples(func(r *rssSample) {
		for _, n := range s.Fleet().Counts() {
			r.Tracked += n
		}
		r.Received = int(m.CounterValue("tether_heartbeats_received_total"))
		r.Dropped = int(m.CounterValue("tether_heartbeats_discarded_total", fleet.DiscardDropped))
	})
}

func writeHeapProfile(path string) {
	f, err := os.Create(path)
	if err != nil {
		return
	}
	defer f.Close()
	runtime.GC()
	_ = pprof.WriteHeapProfile(f)
}

// rssConfigs writes the two configs every benchmark agent reports it runs
// (global.github, global.jira) and returns their revisions: the agents run
// what the supervisor would give them, as in a steady fleet.
func rssConfigs(b testing.TB, url string) map[string]uint64 {
	nc := natstest.Connect(b, url)
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, kvconfig.BucketConfigs)
	if err != nil {
		b.Fatal(err)
	}
	applied := map[string]uint64{}
	for _, server := range []string{"github", "jira"} {
		rev, err := kv.Put(ctx, "global."+server, []byte(`{"transport":"http","url":"https://`+server+`.example/mcp"}`))
		if err != nil {
			b.Fatal(err)
		}
		applied[server] = rev
	}
	return applied
}

// pacedFleet is n agents on one connection whose heartbeats are spread
// evenly over each interval (as a real fleet's are), answering probes on
// their command subjects and acking every other command.
type pacedFleet struct {
	b    testing.TB
	nc   *nats.Conn
	subj agentproto.Subjects

	mu     sync.Mutex
	agents []*simAgent
	byID   map[string]*simAgent
}

func newPacedFleet(b testing.TB, url string, n int, applied map[string]uint64) *pacedFleet {
	f := &pacedFleet{b: b, nc: natstest.Connect(b, url), byID: make(map[string]*simAgent, n)}
	for i := range n {
		a := benchAgent(i)
		a.applied = applied
		f.agents = append(f.agents, a)
		f.byID[a.id] = a
	}
	cmdPrefix := strings.TrimSuffix(f.subj.Wildcard("cmd"), ">")
	sub, err := f.nc.Subscribe(cmdPrefix+"*", func(m *nats.Msg) { f.command(strings.TrimPrefix(m.Subject, cmdPrefix), m.Data) })
	if err != nil {
		b.Fatal(err)
	}
	_ = sub.SetPendingLimits(-1, -1)
	rsub, err := f.nc.Subscribe("*.hb", func(m *nats.Msg) {
		f.command(strings.TrimPrefix(strings.TrimSuffix(m.Subject, ".hb"), "_INBOX_"), m.Data)
	})
	if err != nil {
		b.Fatal(err)
	}
	_ = rsub.SetPendingLimits(-1, -1)
	if err := f.nc.Flush(); err != nil {
		b.Fatal(err)
	}
	return f
}

func (f *pacedFleet) command(id string, data []byte) {
	var c agentproto.Command
	if len(data) == 0 || json.Unmarshal(data, &c) != nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	a := f.byID[id]
	if a == nil {
		return
	}
	if c.Type == agentproto.CmdProbe {
		a.probeAck = c.Nonce
	} else {
		a.acks = append(a.acks, c.ID)
	}
}

// round publishes one heartbeat per agent, spread over rssInterval from
// start, in 100 slices; it returns at the end of the interval.
func (f *pacedFleet) round(start time.Time) {
	const slices = 100
	sentAt := time.Now().UTC().Format(time.RFC3339Nano)
	per := (len(f.agents) + slices - 1) / slices
	for s := 0; s < slices; s++ {
		time.Sleep(time.Until(start.Add(rssInterval * time.Duration(s) / slices)))
		f.mu.Lock()
		for _, a := range f.agents[min(s*per, len(f.agents)):min((s+1)*per, len(f.agents))] {
			a.seq++
			data := a.heartbeat(rssInterval, sentAt)
			a.acks = nil
			if err := f.nc.PublishMsg(&nats.Msg{Subject: f.subj.Heartbeat(a.id), Reply: agentproto.HeartbeatReply(a.id), Data: data}); err != nil {
				f.mu.Unlock()
				f.b.Fatal(err)
			}
		}
		f.mu.Unlock()
	}
	time.Sleep(time.Until(start.Add(rssInterval)))
}

func (f *pacedFleet) close() { f.nc.Close() }
