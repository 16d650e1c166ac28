package test

// Leadership gaps (issue 13): a lease holder that cannot take over the
// fleet, and a fleet where no replica can hold the lease.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/internal/natstest"
	"github.com/tether-dev/tether/internal/suptest"
	"github.com/tether-dev/tether/kvconfig"
	"github.com/tether-dev/tether/supervisor"
	"github.com/tether-dev/tether/supervisor/fleet"
	"github.com/tether-dev/tether/supervisor/lease"
)

// gapTTL is the lease TTL of the leadership gap tests.
const gapTTL = 300 * time.Millisecond

// lineCounter counts log lines containing each of its needles, and passes
// every line on to w.
type lineCounter struct {
	w       io.Writer
	mu      sync.Mutex
	needles []string
	counts  map[string]int
}

func (c *lineCounter) Write(p []byte) (int, error) {
	c.mu.Lock()
	for _, n := range c.needles {
		if bytes.Contains(p, []byte(n)) {
			c.counts[n]++
		}
	}
	c.mu.Unlock()
	return c.w.Write(p)
}

func (c *lineCounter) count(needle string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.counts[needle]
}

// readyz fetches /readyz of a supervisor's HTTP server.
func readyz(t *testing.T, s *supervisor.Supervisor) (int, map[string]any) {
	t.Helper()
	resp, err := http.Get("http://" + s.HTTPAddr() + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, body
}

// TestTakeoverBoundResigns: a replica that wins the lease at Start but
// cannot read mcp_fleet resigns the lease after two takeover attempts:
// Start returns just after the bound (before, Start's own takeover and the
// lead goroutine's ran one after the other: twice the bound), HTTP serves,
// and another lease holder takes over while it pauses. The read retries
// with a pause (before: about 1,400 attempts, each a warning, a second).
//
// mcp_fleet admits one consumer. Start's load of mcp_fleet takes it and
// deletes it; the test takes the slot once the server announces that
// deletion, so the server refuses the takeover's read (and the replica's
// forget watcher). The replica's link holds everything the replica sends
// after its delete request until the test has the slot (before, a 30 ms
// latency made the test's request likely, not certain, to come first: on
// a loaded CI machine the replica's forget watcher took the slot).
func TestTakeoverBoundResigns(t *testing.T) {
	const ttl = time.Second
	srv := natstest.RunServer(t)
	link := natstest.NewProxy(t, fmt.Sprintf("127.0.0.1:%d", srv.Port))
	nc := srv.Connect()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// mcp_fleet as a KV stream that admits a single consumer.
	fleetStream := "KV_" + kvconfig.BucketFleet
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name: fleetStream, Subjects: []string{"$KV." + kvconfig.BucketFleet + ".>"},
		MaxMsgsPerSubject: 1, MaxConsumers: 1, Discard: jetstream.DiscardNew, AllowRollup: true,
		DenyDelete: true, AllowDirect: true, Duplicates: 2 * time.Minute, MaxMsgSize: kvconfig.MaxFleetRecordBytes,
	}); err != nil {
		t.Fatal(err)
	}
	loaded := make(chan struct{})
	var once sync.Once
	if _, err := nc.Subscribe("$JS.EVENT.ADVISORY.CONSUMER.DELETED."+fleetStream+".*", func(*nats.Msg) {
		once.Do(func() { close(loaded) })
	}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	link.HoldAfter([]byte("$JS.API.CONSUMER.DELETE." + fleetStream + "."))
	logs := &lineCounter{w: zerolog.NewTestWriter(t), needles: []string{"reading mcp_fleet", "resigning the lease"}, counts: map[string]int{}}
	cfg := suptest.Config(t, link.URL())
	suptest.FastFleet(&cfg)
	cfg.HTTPAddr, cfg.LeaseTTL, cfg.ReplicaID = "127.0.0.1:0", ttl, "stuck"
	cfg.Logger = zerolog.New(logs).Level(zerolog.WarnLevel)
	bound := 2 * fleet.TakeLeadTimeout(ttl)

	type started struct {
		s   *supervisor.Supervisor
		err error
	}
	done := make(chan started, 1)
	start := time.Now()
	go func() {
		s, err := supervisor.Start(ctx, cfg)
		done <- started{s, err}
	}()
	var st started
	returnedToTest := false
	t.Cleanup(func() { // also when the test fails before Start returns: nothing logs after the test
		if !returnedToTest {
			cancel()
			st = <-done
		}
		if st.s != nil {
			st.s.Close()
		}
	})
	select {
	case <-loaded:
	case st = <-done:
		returnedToTest = true
		t.Fatalf("Start returned (%v) before it loaded mcp_fleet", st.err)
	}
	if _, err := js.CreateConsumer(ctx, fleetStream, jetstream.ConsumerConfig{Durable: "slot"}); err != nil {
		t.Fatalf("taking the one consumer slot after the load: %v", err)
	}
	link.Release()
	// Once it holds the lease, a rival campaigns beside it.
	leaderKV := func() jetstream.KeyValue {
		var kv jetstream.KeyValue
		natstest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() (err error) {
			kv, err = js.KeyValue(ctx, lease.Bucket)
			return err
		})
		return kv
	}()
	var won time.Time // when the server stored the replica's winning campaign
	natstest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		e, err := leaderKV.Get(ctx, lease.Key)
		if err != nil || string(e.Value()) != "stuck" {
			return fmt.Errorf("lease not held by the replica yet: %v", err)
		}
		won = e.Created()
		return nil
	})
	rival, err := lease.Start(ctx, lease.Config{JS: js, ID: "rival", TTL: ttl, Logger: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)})
	if err != nil {
		t.Fatal(err)
	}
	defer rival.Close()

	select {
	case st = <-done:
		returnedToTest = true
	case <-ctx.Done():
		t.Fatal("Start did not return")
	}
	returned := time.Now()
	took := returned.Sub(won)
	if st.err != nil {
		t.Fatal(st.err)
	}
	s := st.s
	t.Logf("Start returned %v after the replica won the lease (%v after it began; takeover bound %v); %d 'reading mcp_fleet' warnings",
		took.Round(time.Millisecond), returned.Sub(start).Round(time.Millisecond), bound, logs.count("reading mcp_fleet"))
	if took < bound || took > bound+2*time.Second {
		t.Errorf("Start returned %v after the lease was won, want just over the takeover bound %v", took, bound)
	}
	if n := logs.count("resigning the lease"); n != 1 {
		t.Errorf("%d resignations, want 1", n)
	}
	if s.IsLeader() {
		t.Error("the replica that could not take over commands")
	}
	if code, body := readyz(t, s); code == 0 || body["replica"] != "stuck" {
		t.Errorf("/readyz %d %v", code, body)
	}
	natstest.CheckFor(t, 2*time.Second, 5*time.Millisecond, func() error {
		if !rival.IsLeader() || s.LeaderID() != "rival" {
			return fmt.Errorf("rival leads %v, the replica sees holder %q", rival.IsLeader(), s.LeaderID())
		}
		return nil
	})
	t.Logf("the rival holds the lease %v after Start returned", time.Since(returned).Round(time.Millisecond))
	if n := logs.count("reading mcp_fleet"); n > 100 {
		t.Errorf("%d 'reading mcp_fleet' warnings in %v: the read retries without pause", n, took.Round(time.Millisecond))
	}
}

// TestReadyNoLeader: two replicas whose lease writes the server refuses
// (an operator's permission change) hold no lease: after 2x the TTL both
// report not ready, saying no replica leads, on Ready, /readyz and the
// metrics; once the writes are allowed again one leads and both are ready.
func TestReadyNoLeader(t *testing.T) {
	users := func(deny bool) []*server.User {
		p := &server.Permissions{Publish: &server.SubjectPermission{Allow: []string{">"}}, Subscribe: &server.SubjectPermission{Allow: []string{">"}}}
		if deny {
			p.Publish.Deny = []string{"$KV." + lease.Bucket + ".>"}
		}
		return []*server.User{{Username: "sup", Password: "pw", Permissions: p}}
	}
	srv := natstest.RunServer(t, natstest.WithOptions(func(o *server.Options) { o.Users = users(false) }))
	// The lease bucket as the supervisor creates it, but read through the
	// stream API instead of direct gets: in nats-server v2.15.2 a direct
	// get reads the server's options without their lock, a data race with
	// the config reloads below (getDirectRequest, stream.go).
	js, _ := jetstream.New(srv.Connect(nats.UserInfo("sup", "pw")))
	if _, err := js.CreateStream(context.Background(), jetstream.StreamConfig{
		Name: "KV_" + lease.Bucket, Subjects: []string{"$KV." + lease.Bucket + ".>"}, MaxMsgsPerSubject: 1,
		MaxAge: gapTTL, Duplicates: gapTTL, Discard: jetstream.DiscardNew, AllowRollup: true, DenyDelete: true,
	}); err != nil {
		t.Fatal(err)
	}
	sups := make([]*supervisor.Supervisor, 2)
	for i := range sups {
		cfg := suptest.Config(t, srv.URL())
		suptest.FastFleet(&cfg)
		cfg.User, cfg.Password = "sup", "pw"
		cfg.HTTPAddr, cfg.LeaseTTL, cfg.ReplicaID = "127.0.0.1:0", gapTTL, fmt.Sprint("r", i)
		sups[i] = suptest.Start(t, cfg)
	}
	ready := func(want bool, reason string) func() error {
		return func() error {
			for i, s := range sups {
				ok, why := s.Ready()
				if ok != want || !strings.Contains(why, reason) {
					return fmt.Errorf("replica %d: ready %v %q, want %v %q", i, ok, why, want, reason)
				}
			}
			return nil
		}
	}
	natstest.CheckFor(t, 5*time.Second, 5*time.Millisecond, ready(true, "ready"))
	if l := leaders(sups, -1); len(l) != 1 {
		t.Fatalf("leaders %v", l)
	}

	deny := time.Now()
	srv.Reload(func(o *server.Options) { o.Users = users(true) })
	natstest.CheckFor(t, 5*time.Second, 5*time.Millisecond, ready(false, "no leader for"))
	t.Logf("not ready (no leader) %v after the lease writes were refused (TTL %v)", time.Since(deny).Round(time.Millisecond), gapTTL)
	for i, s := range sups {
		if s.IsLeader() {
			t.Errorf("replica %d commands without a lease", i)
		}
		code, body := readyz(t, s)
		if why, _ := body["reason"].(string); code != http.StatusServiceUnavailable || !strings.Contains(why, "no leader for") {
			t.Errorf("replica %d /readyz %d %v", i, code, body)
		}
		fams := suptest.Gather(s)
		if gap := suptest.Value(fams, "tether_no_leader_seconds", nil); gap <= 2*gapTTL.Seconds() {
			t.Errorf("replica %d tether_no_leader_seconds %v", i, gap)
		}
		if v := suptest.Value(fams, "tether_leader", nil); v != 0 {
			t.Errorf("replica %d tether_leader %v", i, v)
		}
	}

	allow := time.Now()
	srv.Reload(func(o *server.Options) { o.Users = users(false) })
	natstest.CheckFor(t, 5*time.Second, 5*time.Millisecond, ready(true, "ready"))
	t.Logf("ready again %v after the lease writes were allowed", time.Since(allow).Round(time.Millisecond))
	natstest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if l := leaders(sups, -1); len(l) != 1 {
			return fmt.Errorf("leaders %v after the writes were allowed, want one", l)
		}
		return nil
	})
	for i, s := range sups {
		if code, _ := readyz(t, s); code != http.StatusOK {
			t.Errorf("replica %d /readyz %d", i, code)
		}
	}
}
