package supervisor

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/internal/natstest"
	"github.com/tether-dev/tether/kvconfig"
	"github.com/tether-dev/tether/supervisor/auth"
)

// loadResult is one load run: throughput and latency percentiles.
type loadResult struct {
	perSec   float64
	p50, p99 time.Duration
}

// load sends n requests to subject from `workers` goroutines sharing nc.
func load(b *testing.B, nc *nats.Conn, subject string, n, workers int) loadResult {
	lat := make([]time.Duration, n)
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := w; i < n; i += workers {
				t0 := time.Now()
				if _, err := nc.Request(subject, nil, 5*time.Second); err != nil {
					b.Error(err)
					return
				}
				lat[i] = time.Since(t0)
			}
		}(w)
	}
	wg.Wait()
	el := time.Since(start)
	slices.Sort(lat)
	return loadResult{perSec: float64(n) / el.Seconds(), p50: lat[n/2], p99: lat[n*99/100]}
}

// BenchmarkResolveVsEcho measures resolve over NATS (the real supervisor,
// logging every resolution as JSON) next to a bare echo responder on the
// same embedded server (SyncAlways, as in production), 32 concurrent
// requesters on one connection. The echo replies with the bytes of a real
// resolve reply, so both bodies are the same size. The two are measured in
// alternating rounds so machine noise hits both; the reported figures are
// medians over rounds.
//
//	go test -run '^$' -bench ResolveVsEcho -benchtime 20000x ./supervisor/
func BenchmarkResolveVsEcho(b *testing.B) {
	srv := natstest.RunServer(b, natstest.WithSyncAlways())
	cfg := testConfig(b, srv)
	cfg.HTTPAddr = ""
	cfg.Logger = zerolog.New(io.Discard)
	s := startSupervisor(b, cfg)
	if _, err := s.Buckets().Configs.Put(context.Background(), "global.github", []byte(`{"transport":"http","url":"https://mcp.example.com/mcp","headers":{"Authorization":"Bearer abc"},"timeout":"30s"}`)); err != nil {
		b.Fatal(err)
	}
	waitRev(b, s, "a7", "github", 1)
	echoConn := srv.Connect()
	first, err := echoConn.Request(subj.Resolve("a7", "github"), nil, 5*time.Second)
	if err != nil {
		b.Fatal(err)
	}
	body := slices.Clone(first.Data)
	if _, err := echoConn.Subscribe("bench.echo", func(m *nats.Msg) { _ = m.Respond(body) }); err != nil {
		b.Fatal(err)
	}
	nc := srv.Connect()
	const workers, rounds = 32, 5
	n := max(b.N, 2000)
	var echo, res []loadResult
	b.ResetTimer()
	for r := 0; r < rounds; r++ {
		echo = append(echo, load(b, nc, "bench.echo", n, workers))
		res = append(res, load(b, nc, subj.Resolve("a7", "github"), n, workers))
	}
	b.StopTimer()
	med := medianOf
	tput := func(r loadResult) float64 { return r.perSec }
	p50 := func(r loadResult) float64 { return float64(r.p50.Microseconds()) }
	p99 := func(r loadResult) float64 { return float64(r.p99.Microseconds()) }
	b.ReportMetric(med(res, tput), "resolve_req/s")
	b.ReportMetric(med(echo, tput), "echo_req/s")
	b.ReportMetric(med(res, tput)/med(echo, tput), "tput_ratio")
	b.ReportMetric(med(res, p50), "resolve_p50_us")
	b.ReportMetric(med(echo, p50), "echo_p50_us")
	b.ReportMetric(med(res, p50)/med(echo, p50), "p50_ratio")
	b.ReportMetric(med(res, p99), "resolve_p99_us")
	b.ReportMetric(med(echo, p99), "echo_p99_us")
	b.ReportMetric(float64(len(body)), "reply_bytes")
	b.ReportMetric(0, "ns/op")
	b.Logf("resolve and echo reply bodies: %d bytes each", len(body))
}

// medianOf is the median of f over rounds.
func medianOf(rs []loadResult, f func(loadResult) float64) float64 {
	v := make([]float64, len(rs))
	for i, r := range rs {
		v[i] = f(r)
	}
	slices.Sort(v)
	return v[len(v)/2]
}

// BenchmarkResolveAuthOnOff measures what auth costs a resolve: agent a7
// resolving over the embedded server with auth on (operator mode, its own
// credentials and permissions) and over a plain server without auth, both
// supervisors in this process, in alternating rounds of 32 concurrent
// requesters on one connection with a7's private inbox; medians over rounds.
//
//	go test -run '^$' -bench ResolveAuthOnOff -benchtime 20000x ./supervisor/
func BenchmarkResolveAuthOnOff(b *testing.B) {
	const value = `{"transport":"http","url":"https://mcp.example.com/mcp","headers":{"Authorization":"Bearer abc"},"timeout":"30s"}`
	plain := natstest.RunServer(b, natstest.WithSyncAlways())
	offCfg := testConfig(b, plain)
	offCfg.HTTPAddr, offCfg.Logger = "", zerolog.New(io.Discard)
	off := startSupervisor(b, offCfg)
	put(b, off, kvconfig.BucketConfigs, "global.github", value)
	waitRev(b, off, "a7", "github", 1)
	offConn := plain.Connect(nats.CustomInboxPrefix("_INBOX_a7"))

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	onCfg := offCfg
	onCfg.NATSURL, onCfg.Listen, onCfg.DataDir = "", ln.Addr().String(), b.TempDir()
	ln.Close()
	on := startSupervisor(b, onCfg)
	m, err := auth.Load(onCfg.DataDir)
	if err != nil {
		b.Fatal(err)
	}
	op := natstest.Connect(b, on.ClientURL(), nats.UserCredentials(m.Path(auth.OperatorFile)))
	js, _ := jetstream.New(op)
	kv, err := js.KeyValue(context.Background(), kvconfig.BucketConfigs)
	if err != nil {
		b.Fatal(err)
	}
	natstest.KVPut(b, kv, "global.github", value)
	waitRev(b, on, "a7", "github", 1)
	creds, _, err := m.AgentCreds("a7", "")
	if err != nil {
		b.Fatal(err)
	}
	cf := filepath.Join(b.TempDir(), "a7.creds")
	if err := os.WriteFile(cf, creds, 0o600); err != nil {
		b.Fatal(err)
	}
	onConn := natstest.Connect(b, on.ClientURL(), nats.UserCredentials(cf), nats.CustomInboxPrefix("_INBOX_a7"))

	const workers, rounds = 32, 5
	n := max(b.N, 2000)
	subject := subj.Resolve("a7", "github")
	var offR, onR []loadResult
	b.ResetTimer()
	for r := 0; r < rounds; r++ {
		if r%2 == 0 {
			offR = append(offR, load(b, offConn, subject, n, workers))
			onR = append(onR, load(b, onConn, subject, n, workers))
		} else {
			onR = append(onR, load(b, onConn, subject, n, workers))
			offR = append(offR, load(b, offConn, subject, n, workers))
		}
	}
	b.StopTimer()
	tput := func(r loadResult) float64 { return r.perSec }
	p50 := func(r loadResult) float64 { return float64(r.p50.Microseconds()) }
	b.ReportMetric(medianOf(offR, tput), "off_req/s")
	b.ReportMetric(medianOf(onR, tput), "on_req/s")
	b.ReportMetric(medianOf(onR, tput)/medianOf(offR, tput), "tput_ratio")
	b.ReportMetric(medianOf(offR, p50), "off_p50_us")
	b.ReportMetric(medianOf(onR, p50), "on_p50_us")
	b.ReportMetric(medianOf(onR, p50)/medianOf(offR, p50), "p50_ratio")
	b.ReportMetric(0, "ns/op")
}
