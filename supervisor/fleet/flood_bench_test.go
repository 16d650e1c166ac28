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
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/internal/natstest"
	"github.com/tether-dev/tether/kvconfig"
	"github.com/tether-dev/tether/supervisor"
	"github.com/tether-dev/tether/supervisor/fleet"
)

// The fake-id flood of BenchmarkFakeIDFlood: floodIDs distinct ids, each
// sending floodRounds valid heartbeats, published floodBatch at a time
// (then Flush), never more than floodWindow ahead of what the supervisor
// has handled, so that the client's pending queue (in this process's RSS)
// stays small and the publisher measures the supervisor, not its own
// backlog.
const (
	floodIDs    = 200_000
	floodRounds = 2
	floodBatch  = 2_000
	floodWindow = 50_000
	floodEnv    = "TETHER_BENCH_FLOOD"
	floodReply  = "FLOOD "
)

// floodVariant is one supervisor configuration under the flood.
type floodVariant struct {
	name      string
	admission string
	maxAgents int
}

// floodVariants: the subject, a bound of 20,000 agents; the before
// behaviour (a bound as large as the flood: every id is tracked), and the
// default admission with nobody registered.
var floodVariants = []floodVariant{
	{"max-20000", supervisor.AdmitAny, 20_000},
	{"max-200000", supervisor.AdmitAny, floodIDs},
	{"registered", supervisor.AdmitRegistered, 20_000},
}

// floodResult is what one flood left behind, measured in the process that
// ran it: the test binary, whose RSS includes the embedded nats-server and
// the publisher's connection.
type floodResult struct {
	Variant        string
	RSSBefore      int64 // VmRSS after start, before the flood (after GC + FreeOSMemory)
	PeakHandled    int64 // VmHWM when every heartbeat is handled, before mcp_fleet is written
	RSSUnforced    int64 // VmRSS once mcp_fleet is persisted, as the process left it
	RSSAfter       int64 // the same after GC + FreeOSMemory: what the process keeps
	RSSPeak        int64 // VmHWM at the end: the peak RSS of the whole run
	HeapBefore     uint64
	HeapAfter      uint64 // runtime.MemStats.HeapAlloc after runtime.GC
	Tracked        int
	FleetKeys      uint64 // KV_mcp_fleet State.Msgs (history 1: one per key)
	FleetBytes     uint64 // KV_mcp_fleet State.Bytes
	Received       int
	Full           int
	Unregistered   int
	Dropped        int
	FloodSeconds   float64 // first publish → every heartbeat handled
	PersistSeconds float64 // every heartbeat handled → mcp_fleet holds every tracked agent
}

// BenchmarkFakeIDFlood publishes valid heartbeats from 200,000 distinct
// ids (each twice) at a real supervisor on the embedded server (SyncAlways,
// as in production) and reports what that leaves: process RSS, Go heap,
// agents tracked, mcp_fleet keys and bytes, and the heartbeats discarded
// as fleet_full or unregistered. Three variants (floodVariants) each run in
// a fresh process (this test binary again, BenchmarkFakeIDFloodProcess),
// in rotating order within every iteration, so the RSS of one is not the
// heap another left behind; the metrics are medians over iterations.
//
//	go test -run '^$' -bench 'BenchmarkFakeIDFlood$' -benchtime 5x -timeout 60m ./supervisor/fleet/
func BenchmarkFakeIDFlood(b *testing.B) {
	res := map[string][]floodResult{}
	for i := 0; b.Loop(); i++ {
		for k := range floodVariants {
			v := floodVariants[(i+k)%len(floodVariants)]
			r := runFloodProcess(b, v.name)
			res[v.name] = append(res[v.name], r)
			fmt.Printf("    flood iteration %d %s: RSS %.1f MB before, %.1f MB after (%.1f MB unforced; peak %.1f MB, %.1f MB before persisting); heap %.1f → %.1f MB; tracked %d; mcp_fleet %d keys %.1f MB; received %d, fleet_full %d, unregistered %d, slow_consumer %d; flood %.2f s, persist %.2f s\n",
				i+1, v.name, mb(r.RSSBefore), mb(r.RSSAfter), mb(r.RSSUnforced), mb(r.RSSPeak), mb(r.PeakHandled), mb(int64(r.HeapBefore)), mb(int64(r.HeapAfter)),
				r.Tracked, r.FleetKeys, mb(int64(r.FleetBytes)), r.Received, r.Full, r.Unregistered, r.Dropped, r.FloodSeconds, r.PersistSeconds)
		}
	}
	med := func(name string, f func(floodResult) float64) float64 {
		var v []float64
		for _, r := range res[name] {
			v = append(v, f(r))
		}
		slices.Sort(v)
		return v[len(v)/2]
	}
	for _, v := range floodVariants {
		n := v.name
		b.ReportMetric(med(n, func(r floodResult) float64 { return mb(r.RSSBefore) }), n+"-rss-before-MB")
		b.ReportMetric(med(n, func(r floodResult) float64 { return mb(r.RSSAfter) }), n+"-rss-MB")
		b.ReportMetric(med(n, func(r floodResult) float64 { return mb(r.RSSPeak) }), n+"-peak-rss-MB")
		b.ReportMetric(med(n, func(r floodResult) float64 { return mb(r.PeakHandled) }), n+"-ingest-peak-rss-MB")
		b.ReportMetric(med(n, func(r floodResult) float64 { return mb(int64(r.HeapAfter)) }), n+"-heap-MB")
		b.ReportMetric(med(n, func(r floodResult) float64 { return float64(r.Tracked) }), n+"-tracked")
		b.ReportMetric(med(n, func(r floodResult) float64 { return float64(r.FleetKeys) }), n+"-fleet-keys")
		b.ReportMetric(med(n, func(r floodResult) float64 { return mb(int64(r.FleetBytes)) }), n+"-fleet-MB")
	}
	ratio := func(f func(floodResult) float64) float64 {
		return med("max-20000", f) / max(med("max-200000", f), 1e-9)
	}
	b.ReportMetric(ratio(func(r floodResult) float64 { return float64(r.RSSAfter - r.RSSBefore) }), "rss-growth-ratio")
	b.ReportMetric(ratio(func(r floodResult) float64 { return float64(r.FleetBytes) }), "fleet-bytes-ratio")
}

func mb(n int64) float64 { return float64(n) / 1e6 }

// runFloodProcess runs one variant in a fresh process and returns its result.
func runFloodProcess(b *testing.B, variant string) floodResult {
	cmd := exec.Command(os.Args[0], "-test.run=^$", "-test.bench=^BenchmarkFakeIDFloodProcess$", "-test.benchtime=1x")
	cmd.Env = append(os.Environ(), floodEnv+"="+variant)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	var r floodResult
	found := false
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), floodReply); ok {
			if err := json.Unmarshal([]byte(rest), &r); err != nil {
				b.Fatal(err)
			}
			found = true
		} else if strings.HasPrefix(sc.Text(), "---") || strings.Contains(sc.Text(), "FAIL") {
			fmt.Println("    flood process:", sc.Text())
		}
	}
	if err := cmd.Wait(); err != nil || !found {
		b.Fatalf("flood process %s: %v (result found: %v)", variant, err, found)
	}
	return r
}

// BenchmarkFakeIDFloodProcess is not a benchmark: it is one variant of
// BenchmarkFakeIDFlood in its own process, and skips otherwise. It prints
// "FLOOD <json floodResult>" on stdout.
func BenchmarkFakeIDFloodProcess(b *testing.B) {
	name := os.Getenv(floodEnv)
	if name == "" {
		b.Skip("one process of BenchmarkFakeIDFlood; it runs only when started by it")
	}
	i := slices.IndexFunc(floodVariants, func(v floodVariant) bool { return v.name == name })
	if i < 0 {
		b.Fatalf("unknown flood variant %q", name)
	}
	r := fakeIDFlood(b, floodVariants[i])
	data, _ := json.Marshal(r)
	fmt.Printf("%s%s\n", floodReply, data)
}

// fakeIDFlood floods a supervisor configured as v, waits until every
// heartbeat is handled and mcp_fleet holds every tracked agent, and
// measures what is left; it fails if the flood did not do what v says.
func fakeIDFlood(b *testing.B, v floodVariant) floodResult {
	srv := benchServer(b)
	cfg := floodConfig(b, srv)
	cfg.Admission, cfg.Fleet.MaxAgents = v.admission, v.maxAgents
	s := startSupervisor(b, cfg)
	nc := natstest.Connect(b, srv.URL())
	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	stream, err := js.Stream(ctx, "KV_"+kvconfig.BucketFleet)
	if err != nil {
		b.Fatal(err)
	}
	m := s.Metrics().Fleet
	count := func(name string, labels ...string) int { return int(m.CounterValue(name, labels...)) }
	received := func() int { return count("tether_heartbeats_received_total") }

	r := floodResult{Variant: v.name}
	r.RSSBefore, r.HeapBefore = settledMemory()
	start := time.Now()
	total := publishFlood(b, nc, received)
	natstest.CheckFor(b, 60*time.Second, time.Millisecond, func() error {
		if got := received(); got < total {
			return fmt.Errorf("%d of %d heartbeats handled", got, total)
		}
		return nil
	})
	handled := time.Now()
	r.PeakHandled = procStatus("VmHWM")
	r.FloodSeconds = handled.Sub(start).Seconds()
	r.Tracked = len(s.Fleet().AgentIDs())
	// Persisted: mcp_fleet holds a key for every tracked agent (records are
	// written by the leader every PersistInterval, fsynced one by one).
	var info *jetstream.StreamInfo
	natstest.CheckFor(b, 600*time.Second, 100*time.Millisecond, func() error {
		if info, err = stream.Info(ctx); err != nil {
			return err
		}
		if int(info.State.Msgs) < r.Tracked {
			return fmt.Errorf("mcp_fleet holds %d of %d tracked agents", info.State.Msgs, r.Tracked)
		}
		return nil
	})
	r.PersistSeconds = time.Since(handled).Seconds()
	r.FleetKeys, r.FleetBytes = info.State.Msgs, info.State.Bytes
	r.Received = received()
	r.Full = count("tether_heartbeats_discarded_total", fleet.DiscardFull)
	r.Unregistered = count("tether_heartbeats_discarded_total", fleet.DiscardUnregistered)
	r.Dropped = count("tether_heartbeats_discarded_total", fleet.DiscardDropped)
	r.RSSUnforced = procStatus("VmRSS")
	r.RSSAfter, r.HeapAfter = settledMemory()
	// Linux updates the recorded high-water mark lazily: VmHWM read later
	// can be below an RSS reported earlier.
	r.RSSPeak = max(r.PeakHandled, procStatus("VmHWM"))
	if err := r.check(v, total); err != nil {
		b.Fatal(err)
	}
	return r
}

// check says whether the flood did what v says: an admitted id is tracked
// up to MaxAgents, every other heartbeat from a new id is discarded for
// the right reason, none is dropped, and mcp_fleet holds the tracked only.
func (r floodResult) check(v floodVariant, total int) error {
	tracked, full, unregistered := min(floodIDs, v.maxAgents), 0, 0
	if v.admission == supervisor.AdmitRegistered {
		tracked, unregistered = 0, total
	} else {
		full = (floodIDs - tracked) * floodRounds
	}
	if r.Tracked != tracked || r.Full != full || r.Unregistered != unregistered || r.Dropped != 0 ||
		r.Received != total || int(r.FleetKeys) != tracked {
		return fmt.Errorf("flood %s: tracked %d (want %d), fleet_full %d (want %d), unregistered %d (want %d), slow_consumer %d (want 0), received %d (want %d), mcp_fleet keys %d (want %d)",
			v.name, r.Tracked, tracked, r.Full, full, r.Unregistered, unregistered, r.Dropped, r.Received, total, r.FleetKeys, tracked)
	}
	return nil
}

// publishFlood publishes floodRounds heartbeats from each of floodIDs ids,
// in batches with a Flush, never more than floodWindow ahead of received;
// it returns how many it published.
func publishFlood(b *testing.B, nc *nats.Conn, received func() int) int {
	sentAt := time.Now().UTC().Format(time.RFC3339Nano)
	a := &simAgent{applied: map[string]uint64{"github": 12, "jira": 3}}
	sent := 0
	for round := 1; round <= floodRounds; round++ {
		for id := 0; id < floodIDs; id++ {
			a.id, a.seq = "fake-"+strconv.Itoa(1_000_000 + id)[1:], uint64(round)
			if err := nc.PublishRequest(subj.Heartbeat(a.id), agentproto.HeartbeatReply(a.id), a.heartbeat(fleet.DefaultHeartbeatInterval, sentAt)); err != nil {
				b.Fatal(err)
			}
			if sent++; sent%floodBatch == 0 {
				if err := nc.Flush(); err != nil {
					b.Fatal(err)
				}
				for sent-received() > floodWindow {
					time.Sleep(time.Millisecond)
				}
			}
		}
	}
	if err := nc.Flush(); err != nil {
		b.Fatal(err)
	}
	return sent
}

// floodConfig is the flood's supervisor config: production fleet timings
// (suptest.Config keeps them at their defaults), no logging beyond what
// a production supervisor writes at info, written nowhere.
func floodConfig(b *testing.B, srv *natstest.Server) supervisor.Config {
	cfg := testConfig(b, srv)
	cfg.Logger = zerolog.New(io.Discard).Level(zerolog.InfoLevel)
	return cfg
}

// settledMemory is the process RSS and the Go heap in use after a GC and
// after returning freed memory to the OS: what the process keeps, not the
// garbage it has not collected yet.
func settledMemory() (rss int64, heap uint64) {
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return procStatus("VmRSS"), ms.HeapAlloc
}

// procStatus reads one "kB" field of /proc/self/status, in bytes.
func procStatus(field string) int64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	return -1
}
