package agentproto

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/internal/natstest"
	"go.uber.org/goleak"
)

// testConfig is a client config for url with millisecond timings.
func testConfig(t testing.TB, url, agent string) Config {
	c := DefaultConfig(agent)
	c.URLs = url
	c.ReconnectWait, c.MaxReconnectWait = 10*time.Millisecond, 50*time.Millisecond
	c.PingInterval, c.ConnectTimeout = 200*time.Millisecond, 500*time.Millisecond
	c.HealthInterval, c.ProbeTimeout = 100*time.Millisecond, 100*time.Millisecond
	c.HeartbeatInterval, c.KVCheckInterval = 50*time.Millisecond, 100*time.Millisecond
	c.RequestTimeout = 500 * time.Millisecond
	c.ResolvePolicy = Policy{MaxAttempts: 3, BaseDelay: 5 * time.Millisecond, MaxDelay: 20 * time.Millisecond}
	c.SkipInitialResolve = true
	c.Logger = zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.InfoLevel)
	return c
}

func connect(t testing.TB, cfg Config) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Connect(ctx, cfg)
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

// fakeSupervisor collects an agent's heartbeats and can answer them.
type fakeSupervisor struct {
	mu    sync.Mutex
	hbs   []Heartbeat
	reply []string                  // reply subject of each heartbeat
	next  func(*Heartbeat) *Command // answer to the next heartbeat, if set
	nc    *nats.Conn
}

func watchHeartbeats(t testing.TB, srv *natstest.Server, agent string) *fakeSupervisor {
	t.Helper()
	f := &fakeSupervisor{nc: srv.Connect()}
	_, err := f.nc.Subscribe(Subjects{}.Heartbeat(agent), func(m *nats.Msg) {
		var hb Heartbeat
		if err := json.Unmarshal(m.Data, &hb); err != nil {
			t.Errorf("heartbeat is not JSON: %v: %s", err, m.Data)
			return
		}
		f.mu.Lock()
		f.hbs, f.reply = append(f.hbs, hb), append(f.reply, m.Reply)
		answer := f.next
		f.next = nil
		f.mu.Unlock()
		if answer != nil {
			if cmd := answer(&hb); cmd != nil {
				data, _ := json.Marshal(cmd)
				_ = m.Respond(data)
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return f
}

// last returns the latest heartbeat and how many arrived.
func (f *fakeSupervisor) last() (Heartbeat, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.hbs) == 0 {
		return Heartbeat{}, 0
	}
	return f.hbs[len(f.hbs)-1], len(f.hbs)
}

// waitHB waits for a heartbeat after the first `after` that satisfies ok.
func (f *fakeSupervisor) waitHB(t testing.TB, after int, ok func(Heartbeat) bool) Heartbeat {
	t.Helper()
	var got Heartbeat
	natstest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		f.mu.Lock()
		defer f.mu.Unlock()
		for _, hb := range f.hbs[min(after, len(f.hbs)):] {
			if ok(hb) {
				got = hb
				return nil
			}
		}
		return errors.New("no matching heartbeat yet")
	})
	return got
}

func (f *fakeSupervisor) send(t testing.TB, agent string, cmd Command) {
	t.Helper()
	data, _ := json.Marshal(cmd)
	if err := f.nc.Publish(Subjects{}.Command(agent), data); err != nil {
		t.Fatal(err)
	}
}

func TestClientHeartbeats(t *testing.T) {
	srv := natstest.RunServer(t, natstest.WithoutJetStream())
	sup := watchHeartbeats(t, srv, "a1")
	c := connect(t, testConfig(t, srv.URL(), "a1"))
	hb := sup.waitHB(t, 0, func(hb Heartbeat) bool { return hb.Seq >= 3 })
	if hb.Agent != "a1" || hb.Instance != c.Instance() || hb.IntervalMS != 50 || hb.Conn.State != ConnConnected ||
		hb.Calls == nil || hb.SentAt == "" || hb.Goodbye {
		t.Fatalf("heartbeat = %+v", hb)
	}
	if _, err := time.Parse(time.RFC3339Nano, hb.SentAt); err != nil {
		t.Errorf("sent_at %q: %v", hb.SentAt, err)
	}
	sup.mu.Lock()
	reply := sup.reply[0]
	sup.mu.Unlock()
	if reply != HeartbeatReply("a1") {
		t.Errorf("reply subject %q, want %q", reply, HeartbeatReply("a1"))
	}
	if c.State() != StateConnected || c.Conn() == nil || c.Agent() != "a1" {
		t.Errorf("state %v", c.State())
	}
	natstest.CheckFor(t, 2*time.Second, 5*time.Millisecond, func() error {
		if c.RTT() <= 0 {
			return errors.New("no RTT measured yet")
		}
		return nil
	})
	t.Logf("heartbeats: %d in flight so far, rtt %v", hb.Seq, c.RTT())
}

func TestClientSubscribeDrainGoodbye(t *testing.T) {
	srv := natstest.RunServer(t, natstest.WithoutJetStream())
	sup := watchHeartbeats(t, srv, "a2")
	c := connect(t, testConfig(t, srv.URL(), "a2"))
	got := make(chan string, 10)
	s, err := c.Subscribe("work.a2", func(m *nats.Msg) { got <- string(m.Data) }, WithProbe(""))
	if err != nil {
		t.Fatal(err)
	}
	pub := srv.Connect()
	if err := pub.Publish("work.a2", []byte("hello")); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-got:
		if m != "hello" {
			t.Fatalf("got %q", m)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("message not delivered")
	}
	// Handled counts completed handler calls: it moves just after the
	// handler has sent on got.
	natstest.CheckFor(t, time.Second, time.Millisecond, func() error {
		if s.Handled() != 1 || s.Subject() != "work.a2" {
			return fmt.Errorf("handled %d subject %s", s.Handled(), s.Subject())
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := c.Drain(ctx); err != nil {
		t.Fatalf("Drain: %v", err)
	}
	sup.waitHB(t, 0, func(hb Heartbeat) bool { return hb.Goodbye })
	if c.State() != StateClosed || c.Conn() != nil {
		t.Errorf("after Drain: state %v", c.State())
	}
	if err := c.Drain(ctx); err != nil {
		t.Errorf("second Drain: %v", err)
	}
	c.Close()
	if _, err := c.Subscribe("work.x", func(*nats.Msg) {}); !errors.Is(err, ErrClosed) {
		t.Errorf("Subscribe after close: %v", err)
	}
	if _, err := c.WatchKV("b", nil, func(jetstream.KeyValueEntry) {}); !errors.Is(err, ErrClosed) {
		t.Errorf("WatchKV after close: %v", err)
	}
}

func TestClientCloseLeaksNothing(t *testing.T) {
	srv := natstest.RunServer(t, natstest.WithoutJetStream())
	before := goleak.IgnoreCurrent()
	c := connect(t, testConfig(t, srv.URL(), "a3"))
	if _, err := c.Subscribe("work.>", func(*nats.Msg) {}); err != nil {
		t.Fatal(err)
	}
	c.Close()
	c.Close() // safe twice
	if c.State() != StateClosed {
		t.Fatalf("state %v", c.State())
	}
	goleak.VerifyNone(t, before)
}

func TestClientRejects(t *testing.T) {
	srv := natstest.RunServer(t, natstest.WithoutJetStream())
	if _, err := Connect(context.Background(), Config{Agent: "bad agent"}); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("bad agent: %v", err)
	}
	c := connect(t, testConfig(t, srv.URL(), "a4"))
	for _, subj := range []string{"", "a..b", "a.>.b", "a b", "a.b*"} {
		if _, err := c.Subscribe(subj, func(*nats.Msg) {}); !errors.Is(err, ErrInvalidSubject) {
			t.Errorf("Subscribe(%q) = %v", subj, err)
		}
	}
	if _, err := c.QueueSubscribe("work.q", "g", func(*nats.Msg) {}, WithProbe("")); !errors.Is(err, ErrInvalidSubject) {
		t.Errorf("probe on a queue subscription: %v", err)
	}
	if _, err := c.Subscribe("work.*", func(*nats.Msg) {}, WithProbe("")); !errors.Is(err, ErrInvalidSubject) {
		t.Errorf("probe of a wildcard subject without a probe subject: %v", err)
	}
	if _, err := c.Subscribe("work.*", func(*nats.Msg) {}, WithProbe("other.x")); !errors.Is(err, ErrInvalidSubject) {
		t.Errorf("probe subject outside the subscription: %v", err)
	}
	if _, err := c.Subscribe("work.*", func(*nats.Msg) {}, WithProbe("work.probe")); err != nil {
		t.Errorf("probe subject inside a wildcard: %v", err)
	}
	if _, err := c.WatchKV("a.b", nil, func(jetstream.KeyValueEntry) {}); !errors.Is(err, ErrInvalidSubject) {
		t.Errorf("bad bucket: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	cfg := testConfig(t, "nats://127.0.0.1:1", "a5")
	if _, err := Connect(ctx, cfg); err == nil {
		t.Error("Connect to nothing succeeded")
	}
}

func TestSubjectHelpers(t *testing.T) {
	for _, tc := range []struct {
		pattern, subj string
		valid, match  bool
	}{
		{"a.b", "a.b", true, true},
		{"a.*", "a.b", true, true},
		{"a.*", "a.b.c", true, false},
		{"a.>", "a.b.c", true, true},
		{"a.>", "a", true, false},
		{">", "x", true, true},
		{"a.b", "a.c", true, false},
		{"a.*.c", "a.b.c", true, true},
		{"a.>.c", "a.b.c", false, false},
		{"a..b", "a.b", false, false},
	} {
		if got := validSubject(tc.pattern); got != tc.valid {
			t.Errorf("validSubject(%q) = %v", tc.pattern, got)
		}
		if tc.valid {
			if got := subjectMatches(tc.pattern, tc.subj); got != tc.match {
				t.Errorf("subjectMatches(%q, %q) = %v", tc.pattern, tc.subj, got)
			}
		}
	}
}
