package agentproto

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/internal/natstest"
)

// BenchmarkRecovery injects one fault per sub-benchmark and measures, in
// the same run and in rotating order within every iteration, three
// subscribers:
//
//   - plain: nats.go with its default options;
//   - tuned: nats.go with the reconnect and ping options agentproto.Client
//     sets by default (tunedOptions), so what remains is the watchdog's own
//     contribution;
//   - tether: an agentproto.Client with DefaultConfig.
//
// Each reports <who>-ms (the median over iterations, a miss counting as
// the cap) and <who>-ok (the fraction that recovered within the cap); the
// log prints every iteration. Times run from the moment the fault is
// repaired (server ready, password or permission back, link healed) to the
// first message through the subscriber's subscription (or KV watcher);
// for the black hole, <who>-detect-ms is also the time from the fault to
// the client noticing it.
//
//	go test -run '^$' -bench BenchmarkRecovery -benchtime 3x ./agentproto/
func BenchmarkRecovery(b *testing.B) {
	for _, f := range benchFaults {
		b.Run(f.name, func(b *testing.B) {
			res := map[string][]benchOutcome{}
			for i := 0; i < b.N; i++ {
				for k := range benchWho {
					who := benchWho[(i+k)%len(benchWho)]
					res[who] = append(res[who], f.run(b, who))
				}
			}
			for _, who := range benchWho {
				reportOutcomes(b, f.name, who, res[who], f.detects)
			}
		})
	}
}

// benchWho are the three subscribers compared.
var benchWho = []string{"plain", "tuned", "tether"}

// benchSlotWindow is the default reconnect window.
var benchSlotWindow = ReconnectWindow(DefaultFleetSize, DefaultConnectRate, DefaultReconnectWait, DefaultMaxReconnectWait)

const (
	benchCap       = 5 * time.Second  // wait for a recovery
	benchKVCap     = 25 * time.Second // nats.go's ordered consumer checks its heartbeats every 10 s
	benchHoleCap   = 8 * time.Second  // wait for black-hole detection (nats.go defaults: ~6 min)
	benchReconnect = 2                // MaxReconnects that forces CLOSED in the closed case
)

type benchFault struct {
	name    string
	detects bool // also reports detection time
	run     func(b *testing.B, who string) benchOutcome
}

var benchFaults = []benchFault{
	{name: "restart", run: benchRestartFor(500 * time.Millisecond)},
	{name: "restart-8s", run: benchRestartFor(8 * time.Second)},
	{name: "closed", run: benchClosed},
	{name: "auth-closed", run: benchAuthClosed},
	{name: "sub-dropped", run: benchSubDropped},
	{name: "kv-watcher", run: benchKVWatcher},
	{name: "blackhole", detects: true, run: benchBlackHole},
}

// benchOutcome is one iteration: time to recover (cap if not), whether it
// did, and for the black hole the time to detect.
type benchOutcome struct {
	took, detect    time.Duration
	ok, detectOK    bool
	recoverMeasured bool // false: the black hole was never detected
}

// tunedOptions are agentproto.Client's default reconnect and ping options
// (Client.options) as a competitor would set them on a plain nats.go
// connection: reconnect attempts on the agent's slots of the default
// 400 ms window (nats.ReconnectToServer with SlotDelay and
// ReconnectPhase, pure functions anyone can copy), unlimited reconnects,
// a 900 ms ping with 2 outstanding, a 1 MiB reconnect buffer, a 2 s
// connect timeout.
func tunedOptions() []nats.Option {
	w := ReconnectWindow(DefaultFleetSize, DefaultConnectRate, DefaultReconnectWait, DefaultMaxReconnectWait)
	phase := ReconnectPhase("bench", w)
	return []nats.Option{
		nats.MaxReconnects(DefaultMaxReconnects),
		nats.ReconnectToServer(func(pool []nats.Server, _ nats.ServerInfo) (*nats.Server, time.Duration) {
			return &pool[0], SlotDelay(time.Now(), w, phase)
		}),
		nats.PingInterval(DefaultPingInterval),
		nats.MaxPingsOutstanding(DefaultMaxPingsOut),
		nats.ReconnectBufSize(DefaultReconnectBufSize),
		nats.Timeout(DefaultConnectTimeout),
	}
}

// benchSub is one subscriber under test, whichever kind.
type benchSub struct {
	got    chan struct{} // one per message on bench.x (or KV entry)
	down   chan struct{} // closed when the link is found dead
	perm   chan struct{} // closed at the first permission error
	gaveUp func() bool   // nats.go closed the connection
	client *Client       // tether only
	nc     *nats.Conn    // plain and tuned only
	close  func()
}

// benchSubOpts adjust a subscriber: credentials, forced MaxReconnects.
type benchSubOpts struct {
	user, pass    string
	maxReconnects int // 0: the kind's default
}

// newBenchSub connects a subscriber of kind who to url and subscribes to
// bench.x (unless noSub, for the KV fault).
func newBenchSub(b *testing.B, who, url string, o benchSubOpts, noSub bool) *benchSub {
	s := &benchSub{got: make(chan struct{}, 1024), down: make(chan struct{}), perm: make(chan struct{})}
	var downOnce, permOnce sync.Once
	onDown := func() { downOnce.Do(func() { close(s.down) }) }
	onPerm := func() { permOnce.Do(func() { close(s.perm) }) }
	handler := func(*nats.Msg) {
		select {
		case s.got <- struct{}{}:
		default:
		}
	}
	if who == "tether" {
		cfg := DefaultConfig("bench")
		cfg.URLs, cfg.SkipInitialResolve, cfg.Logger = url, true, zerolog.Nop()
		cfg.User, cfg.Password = o.user, o.pass
		if o.maxReconnects != 0 {
			cfg.MaxReconnects = o.maxReconnects
		}
		cfg.OnEvent = func(e Event) {
			switch e.Kind {
			case EventDisconnected, EventRebuildStarted, EventLinkStale:
				onDown()
			case EventPermissionError:
				onPerm()
			}
		}
		c, err := Connect(context.Background(), cfg)
		if err != nil {
			b.Fatal(err)
		}
		if !noSub {
			if _, err := c.Subscribe("bench.x", handler); err != nil {
				b.Fatal(err)
			}
		}
		s.client, s.gaveUp, s.close = c, func() bool { return c.Stats().ConnCloses > 0 }, c.Close
		return s
	}
	var opts []nats.Option
	if who == "tuned" {
		opts = tunedOptions()
	}
	opts = append(opts,
		nats.DisconnectErrHandler(func(*nats.Conn, error) { onDown() }),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			if errors.Is(err, nats.ErrPermissionViolation) {
				onPerm()
			}
		}))
	if o.user != "" {
		opts = append(opts, nats.UserInfo(o.user, o.pass))
	}
	if o.maxReconnects != 0 {
		opts = append(opts, nats.MaxReconnects(o.maxReconnects))
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		b.Fatal(err)
	}
	if !noSub {
		if _, err := nc.Subscribe("bench.x", handler); err != nil {
			b.Fatal(err)
		}
		if err := nc.Flush(); err != nil {
			b.Fatal(err)
		}
	}
	s.nc, s.gaveUp, s.close = nc, nc.IsClosed, nc.Close
	return s
}

// waitWorking proves the subscription receives before the fault.
func (s *benchSub) waitWorking(b *testing.B, url string, pubOpts ...nats.Option) {
	if _, ok := untilDelivered(b, url, "bench.x", s.got, time.Now(), benchCap, pubOpts...); !ok {
		b.Fatal("subscriber not working before the fault")
	}
}

// 1. Server down for `down`, then back on the same port: from ready to
// delivered.
func benchRestartFor(down time.Duration) func(b *testing.B, who string) benchOutcome {
	return func(b *testing.B, who string) benchOutcome {
		srv := natstest.RunServer(b, natstest.WithoutJetStream())
		defer srv.Shutdown()
		s := newBenchSub(b, who, srv.URL(), benchSubOpts{}, false)
		defer s.close()
		s.waitWorking(b, srv.URL())
		// A random moment for the fault: iterations chained back to back
		// would otherwise lock onto the same point of the reconnect slots.
		time.Sleep(rand.N(benchSlotWindow))
		srv.Shutdown()
		time.Sleep(down) // the outage itself: nothing is asserted after it
		srv.Start()
		took, ok := untilDelivered(b, srv.URL(), "bench.x", s.got, time.Now(), benchCap)
		return benchOutcome{took: took, ok: ok, recoverMeasured: true}
	}
}

// 2. Server down until nats.go's benchReconnect attempts are used up (every
// kind gets that MaxReconnects): CLOSED. From server back to delivered.
func benchClosed(b *testing.B, who string) benchOutcome {
	srv := natstest.RunServer(b, natstest.WithoutJetStream())
	defer srv.Shutdown()
	s := newBenchSub(b, who, srv.URL(), benchSubOpts{maxReconnects: benchReconnect}, false)
	defer s.close()
	s.waitWorking(b, srv.URL())
	time.Sleep(rand.N(benchSlotWindow)) // a random moment (see benchRestartFor)
	srv.Shutdown()
	waitGaveUp(b, s)
	time.Sleep(rand.N(benchSlotWindow))
	srv.Start()
	took, ok := untilDelivered(b, srv.URL(), "bench.x", s.got, time.Now(), benchCap)
	return benchOutcome{took: took, ok: ok, recoverMeasured: true}
}

// 3. The agent's password changes (a config reload), with each kind's
// default MaxReconnects: the server disconnects it, nats.go's reconnects
// are refused twice with an authorization violation and it closes the
// connection. From the password back to delivered.
func benchAuthClosed(b *testing.B, who string) benchOutcome {
	var base server.Options
	users := func(pw string) []*server.User {
		return []*server.User{{Username: "agent", Password: pw}, {Username: "sup", Password: "pw"}}
	}
	srv := natstest.RunServer(b, natstest.WithoutJetStream(), natstest.WithOptions(func(o *server.Options) {
		o.Users = users("pw")
		base = *o
	}))
	defer srv.Shutdown()
	reload := func(pw string) {
		o := base
		o.Users = users(pw)
		if err := srv.NATS().ReloadOptions(&o); err != nil {
			b.Fatalf("reload: %v", err)
		}
	}
	sup := nats.UserInfo("sup", "pw")
	s := newBenchSub(b, who, srv.URL(), benchSubOpts{user: "agent", pass: "pw"}, false)
	defer s.close()
	s.waitWorking(b, srv.URL(), sup)
	reload("changed")
	waitGaveUp(b, s)
	time.Sleep(rand.N(benchSlotWindow)) // a random moment (see benchRestartFor)
	reload("pw")
	took, ok := untilDelivered(b, srv.URL(), "bench.x", s.got, time.Now(), benchCap, sup)
	return benchOutcome{took: took, ok: ok, recoverMeasured: true}
}

// 4. A permission change makes the server drop the live subscription
// (natstest.RunPermissionServer); once the subscriber has seen the
// permission error the permission is given back. From then to delivered.
func benchSubDropped(b *testing.B, who string) benchOutcome {
	srv, deny := natstest.RunPermissionServer(b, "bench.x", natstest.WithoutJetStream())
	defer srv.Shutdown()
	sup := nats.UserInfo("sup", "pw")
	s := newBenchSub(b, who, srv.URL(), benchSubOpts{user: "agent", pass: "pw"}, false)
	defer s.close()
	s.waitWorking(b, srv.URL(), sup)
	deny(true)
	select {
	case <-s.perm:
	case <-time.After(benchCap):
		b.Fatal("no permission error seen")
	}
	deny(false)
	took, ok := untilDelivered(b, srv.URL(), "bench.x", s.got, time.Now(), benchCap, sup)
	return benchOutcome{took: took, ok: ok, recoverMeasured: true}
}

// 5. A KV watcher across a server restart: the watcher's ephemeral
// consumer does not survive it. plain and tuned watch with
// jetstream.KeyValue.Watch, tether with Client.WatchKV. From server ready,
// a new value is put every 20 ms; the time is until the watcher delivers
// one written after the restart.
func benchKVWatcher(b *testing.B, who string) benchOutcome {
	srv := natstest.RunServer(b)
	defer srv.Shutdown()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	admin, err := nats.Connect(srv.URL(), tunedOptions()...)
	if err != nil {
		b.Fatal(err)
	}
	defer admin.Close()
	ajs, _ := jetstream.New(admin)
	kv, err := ajs.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "bench", Storage: jetstream.FileStorage})
	if err != nil {
		b.Fatal(err)
	}
	s := newBenchSub(b, who, srv.URL(), benchSubOpts{}, true)
	defer s.close()
	var last atomic.Uint64
	ready := make(chan struct{})
	var readyOnce sync.Once
	onEntry := func(e jetstream.KeyValueEntry) {
		if e == nil {
			readyOnce.Do(func() { close(ready) })
			return
		}
		last.Store(e.Revision())
	}
	if s.client != nil {
		if _, err := s.client.WatchKV("bench", []string{"k"}, onEntry); err != nil {
			b.Fatal(err)
		}
	} else {
		js, _ := jetstream.New(s.nc)
		skv, err := js.KeyValue(ctx, "bench")
		if err != nil {
			b.Fatal(err)
		}
		w, err := skv.Watch(ctx, "k")
		if err != nil {
			b.Fatal(err)
		}
		defer func() { _ = w.Stop() }()
		go func() {
			for e := range w.Updates() {
				onEntry(e)
			}
		}()
	}
	select {
	case <-ready:
	case <-time.After(benchCap):
		b.Fatal("KV watcher not ready")
	}
	before, err := kv.Put(ctx, "k", []byte("before"))
	if err != nil {
		b.Fatal(err)
	}
	natstest.CheckFor(b, benchCap, time.Millisecond, func() error {
		if last.Load() < before {
			return errors.New("watcher has not seen the first put")
		}
		return nil
	})
	srv.Restart()
	start := time.Now()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for time.Since(start) < benchKVCap {
		if last.Load() > before {
			return benchOutcome{took: time.Since(start), ok: true, recoverMeasured: true}
		}
		<-tick.C
		pctx, pcancel := context.WithTimeout(ctx, 200*time.Millisecond)
		_, _ = kv.Put(pctx, "k", []byte("after"))
		pcancel()
	}
	return benchOutcome{took: benchKVCap, recoverMeasured: true}
}

// 6. A black-holed link (natstest.Proxy): detection from the fault; then
// the link heals (new connections pass) and recovery runs from then to
// delivered. A link not detected within benchHoleCap is still held by
// the client, so it cannot heal: it counts as not recovered, unmeasured.
func benchBlackHole(b *testing.B, who string) benchOutcome {
	srv := natstest.RunServer(b, natstest.WithoutJetStream())
	defer srv.Shutdown()
	proxy := natstest.NewProxy(b, srv.URL()[len("nats://"):])
	defer proxy.Close()
	s := newBenchSub(b, who, proxy.URL(), benchSubOpts{}, false)
	defer s.close()
	s.waitWorking(b, srv.URL())
	var out benchOutcome
	start := time.Now()
	proxy.BlackHole()
	select {
	case <-s.down:
		out.detect, out.detectOK = time.Since(start), true
	case <-time.After(benchHoleCap):
		out.detect, out.took = benchHoleCap, benchCap
		return out
	}
	proxy.Pass()
	out.took, out.ok = untilDelivered(b, srv.URL(), "bench.x", s.got, time.Now(), benchCap)
	out.recoverMeasured = true
	return out
}

// waitGaveUp waits until nats.go has closed the subscriber's connection.
func waitGaveUp(b *testing.B, s *benchSub) {
	natstest.CheckFor(b, 2*benchCap, time.Millisecond, func() error {
		if !s.gaveUp() {
			return errors.New("nats.go has not given up yet")
		}
		return nil
	})
}

// reportOutcomes reports the median time (a miss counts as its cap) and
// the recovered fraction of one kind, and logs every iteration.
func reportOutcomes(b *testing.B, fault, who string, rs []benchOutcome, detects bool) {
	med := func(f func(benchOutcome) time.Duration) float64 {
		v := make([]time.Duration, len(rs))
		for i, r := range rs {
			v[i] = f(r)
		}
		slices.Sort(v)
		return float64(v[len(v)/2].Microseconds()) / 1000
	}
	ok, dok := 0, 0
	var row []string
	for _, r := range rs {
		if r.ok {
			ok++
		}
		if r.detectOK {
			dok++
		}
		cell := "never"
		switch {
		case r.ok:
			cell = fmt.Sprint(r.took.Round(time.Millisecond))
		case !r.recoverMeasured:
			cell = "not detected"
		}
		if detects {
			d := "never"
			if r.detectOK {
				d = fmt.Sprint(r.detect.Round(time.Millisecond))
			}
			cell = "detect " + d + ", recover " + cell
		}
		row = append(row, cell)
	}
	b.ReportMetric(med(func(r benchOutcome) time.Duration { return r.took }), who+"-ms")
	worst := time.Duration(0)
	for _, r := range rs {
		worst = max(worst, r.took)
	}
	b.ReportMetric(float64(worst.Microseconds())/1000, who+"-max-ms")
	b.ReportMetric(float64(ok)/float64(len(rs)), who+"-ok")
	if detects {
		b.ReportMetric(med(func(r benchOutcome) time.Duration { return r.detect }), who+"-detect-ms")
		b.ReportMetric(float64(dok)/float64(len(rs)), who+"-detect-ok")
	}
	b.Logf("%s %-6s: %s", fault, who, strings.Join(row, " | "))
}

// untilDelivered publishes to subject every millisecond until a message
// arrives on got, then returns the time since from.
func untilDelivered(b *testing.B, url, subject string, got chan struct{}, from time.Time, limit time.Duration, opts ...nats.Option) (time.Duration, bool) {
	pub, err := nats.Connect(url, opts...)
	if err != nil {
		b.Fatal(err)
	}
	defer pub.Close()
	for len(got) > 0 { // only messages sent from now on count
		<-got
	}
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	deadline := time.After(limit)
	for {
		select {
		case <-got:
			return time.Since(from), true
		case <-deadline:
			return limit, false
		case <-tick.C:
			_ = pub.Publish(subject, nil)
		}
	}
}
