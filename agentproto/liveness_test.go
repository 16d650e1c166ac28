package agentproto

import (
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/tether-dev/tether/internal/natstest"
)

func TestStaleLimit(t *testing.T) {
	const ms = time.Millisecond
	grace := linkGrace(400*ms, 900*ms, 2)
	if grace != 3500*ms {
		t.Fatalf("default grace %v, want 2 windows + 2.7 s = 3.5 s", grace)
	}
	for _, tc := range []struct {
		since, want time.Duration
	}{
		{0, 7200 * ms},            // just connected: 4 × 1.8 s
		{3499 * ms, 7200 * ms},    // still within the grace
		{3500 * ms, 1800 * ms},    // grace over: PingInterval × MaxPingsOut
		{time.Hour, 1800 * ms},    // long connected
		{-time.Second, 7200 * ms}, // a clock step back counts as just reconnected
	} {
		if got := staleLimit(tc.since, grace, 900*ms, 2); got != tc.want {
			t.Errorf("staleLimit(%v) = %v, want %v", tc.since, got, tc.want)
		}
	}
	// Outside the grace a black hole is found within BlackHoleBound: the
	// next PING goes out within one interval, then waits the limit.
	if got := DefaultPingInterval + staleLimit(time.Hour, grace, DefaultPingInterval, DefaultMaxPingsOut); got != BlackHoleBound(DefaultPingInterval, DefaultMaxPingsOut) {
		t.Errorf("interval + limit = %v, want BlackHoleBound %v", got, BlackHoleBound(DefaultPingInterval, DefaultMaxPingsOut))
	}
}

// stalenessAgent connects cfg's agent through a proxy and records when its
// link was found stale.
func stalenessAgent(t *testing.T, agent string) (*natstest.Server, *natstest.Proxy, *Client, *atomic.Int64, time.Time) {
	t.Helper()
	srv := natstest.RunServer(t, natstest.WithoutJetStream())
	proxy := natstest.NewProxy(t, srv.URL()[len("nats://"):])
	cfg := testConfig(t, proxy.URL(), agent)
	// Stale limit 200 ms, 800 ms within the grace; a 1 s reconnect window
	// makes the grace 2 × 1 s + 300 ms, far from the limit either way.
	cfg.PingInterval = 100 * time.Millisecond
	cfg.FleetSize, cfg.ConnectRate, cfg.MaxReconnectWait = 1000, 1000, 2*time.Second
	// No heartbeats or probes in the test's span: their "no responders"
	// answers and echoes are messages from the server, which prove the link.
	// The probe kicked by a reconnect comes back within its timeout, so
	// the health loop does not turn suspicious and probe every tick.
	cfg.HeartbeatInterval, cfg.HealthInterval, cfg.ProbeTimeout = time.Minute, 2*time.Second, 2*time.Second
	var stale atomic.Int64
	cfg.OnEvent = func(e Event) {
		if e.Kind == EventLinkStale {
			stale.CompareAndSwap(0, e.Time.UnixNano())
		}
	}
	began := time.Now()
	return srv, proxy, connect(t, cfg), &stale, began
}

// A link whose PONGs come back later than the stale limit but within the
// stretched one is kept while a reconnect is young, and dropped once the
// grace is over: never before reconnect + grace + limit.
func TestLateLinkKeptWithinGraceAfterReconnect(t *testing.T) {
	_, proxy, c, stale, _ := stalenessAgent(t, "lv1")
	reconnects := c.Stats().Reconnects
	cut := time.Now()
	proxy.Cut()
	proxy.Pass()
	natstest.CheckFor(t, 5*time.Second, 2*time.Millisecond, func() error {
		if c.Stats().Reconnects == reconnects {
			return errors.New("not reconnected yet")
		}
		return nil
	})
	proxy.SetLatency(150 * time.Millisecond) // PONG after ~300 ms: over 200, under 800
	natstest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if stale.Load() == 0 {
			return errors.New("not found stale yet")
		}
		return nil
	})
	at := time.Unix(0, stale.Load()).Sub(cut)
	first := c.grace() + staleLimit(time.Hour, c.grace(), c.cfg.PingInterval, c.cfg.MaxPingsOut)
	t.Logf("stale %v after the cut (grace %v, earliest %v)", at.Round(time.Millisecond), c.grace(), first)
	if at < first {
		t.Fatalf("found stale %v after the reconnect, before the grace and one limit (%v) were over", at, first)
	}
}

// After the first connect there is no grace: a link that answers late
// from the start is stale after one limit (a black hole right after
// Connect is found as fast as at any other time).
func TestNoGraceAfterFirstConnect(t *testing.T) {
	_, proxy, c, stale, began := stalenessAgent(t, "lv3")
	proxy.SetLatency(150 * time.Millisecond)
	natstest.CheckFor(t, 5*time.Second, 2*time.Millisecond, func() error {
		if stale.Load() == 0 {
			return errors.New("not found stale yet")
		}
		return nil
	})
	at := time.Unix(0, stale.Load()).Sub(began)
	t.Logf("stale %v after Connect began (grace %v not applied)", at.Round(time.Millisecond), c.grace())
	if at >= c.grace()+staleLimit(time.Hour, c.grace(), c.cfg.PingInterval, c.cfg.MaxPingsOut) {
		t.Fatalf("stale only %v after the first connect: a grace was applied", at)
	}
	if st := c.Stats(); st.StaleLinks < 1 {
		t.Fatalf("stats %+v", st)
	}
}

// A link that keeps delivering messages is alive however late its PONGs
// are (nats.go's rule drops it); once the messages stop, it is stale.
func TestLinkThatDeliversIsNotStale(t *testing.T) {
	srv, proxy, c, stale, _ := stalenessAgent(t, "lv2")
	got := make(chan struct{}, 1024)
	if _, err := c.Subscribe("work.lv2", func(*nats.Msg) {
		select {
		case got <- struct{}{}:
		default:
		}
	}); err != nil {
		t.Fatal(err)
	}
	pub := srv.Connect()
	proxy.SetLatency(150 * time.Millisecond)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for end := time.Now().Add(1500 * time.Millisecond); time.Now().Before(end); <-tick.C {
		if err := pub.Publish("work.lv2", nil); err != nil {
			t.Fatal(err)
		}
	}
	if s := stale.Load(); s != 0 {
		t.Fatalf("a link delivering every 20 ms was found stale (PONGs ~300 ms late, limit 200 ms)")
	}
	if len(got) == 0 {
		t.Fatal("nothing was delivered through the slow link")
	}
	stopped := time.Now()
	natstest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if stale.Load() == 0 {
			return fmt.Errorf("not stale %v after the messages stopped", time.Since(stopped))
		}
		return nil
	})
	t.Logf("stale %v after the messages stopped", time.Unix(0, stale.Load()).Sub(stopped).Round(time.Millisecond))
}

// A black hole that starts while messages are arriving is found within
// BlackHoleBound of its start at the default pings (before, a message
// that arrived during a PING's wait restarted the judgement from the next
// PING: up to 2 × 1.8 s).
func TestBlackHoleWithTrafficWithinBound(t *testing.T) {
	srv := natstest.RunServer(t, natstest.WithoutJetStream())
	proxy := natstest.NewProxy(t, srv.URL()[len("nats://"):])
	cfg := testConfig(t, proxy.URL(), "lv4")
	cfg.PingInterval, cfg.MaxPingsOut = DefaultPingInterval, DefaultMaxPingsOut
	cfg.HeartbeatInterval, cfg.HealthInterval, cfg.ProbeTimeout = time.Minute, 2*time.Second, 2*time.Second
	var holed, stale atomic.Int64
	cfg.OnEvent = func(e Event) {
		if e.Kind == EventLinkStale && holed.Load() != 0 {
			stale.CompareAndSwap(0, e.Time.UnixNano())
		}
	}
	c := connect(t, cfg)
	if _, err := c.Subscribe("work.lv4", func(*nats.Msg) {}); err != nil {
		t.Fatal(err)
	}
	pub := srv.Connect()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	// Traffic through the link for a while, so the black hole starts at a
	// random point of the PING cycle, with messages arriving until then.
	for end := time.Now().Add(1500 * time.Millisecond); time.Now().Before(end); <-tick.C {
		if err := pub.Publish("work.lv4", nil); err != nil {
			t.Fatal(err)
		}
	}
	holed.Store(time.Now().UnixNano())
	proxy.BlackHole()
	natstest.CheckFor(t, 10*time.Second, 2*time.Millisecond, func() error {
		if stale.Load() == 0 {
			return errors.New("black hole not found yet")
		}
		return nil
	})
	took := time.Duration(stale.Load() - holed.Load())
	bound := BlackHoleBound(cfg.PingInterval, cfg.MaxPingsOut)
	t.Logf("black hole after traffic found in %v (bound %v)", took.Round(time.Millisecond), bound)
	// The 3 s target; the bound is 2.7 s, the rest is scheduling headroom.
	if took > 3*time.Second {
		t.Fatalf("found after %v, over 3 s (bound %v)", took, bound)
	}
}
