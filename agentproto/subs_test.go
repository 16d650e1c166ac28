package agentproto

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/tether-dev/tether/internal/natstest"
)

// A handler that never returns swallows its subscription's probes: the
// subscription is re-created and takes messages again, without a rebuild.
func TestWedgedHandlerRestored(t *testing.T) {
	srv := natstest.RunServer(t, natstest.WithoutJetStream())
	cfg := testConfig(t, srv.URL(), "w1")
	c := connect(t, cfg)
	release := make(chan struct{})
	defer close(release) // before the client's Close (a t.Cleanup) waits for handlers
	got := make(chan string, 10)
	s, err := c.Subscribe("work.w1", func(m *nats.Msg) {
		if string(m.Data) == "wedge" {
			<-release
		}
		got <- string(m.Data)
	}, WithProbe(""))
	if err != nil {
		t.Fatal(err)
	}
	pub := srv.Connect()
	if err := pub.Publish("work.w1", []byte("wedge")); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	natstest.CheckFor(t, 5*time.Second, 2*time.Millisecond, func() error {
		if s.Restores() < 1 {
			return errors.New("wedged subscription not restored yet")
		}
		return nil
	})
	detect := time.Since(start)
	publishUntil(t, pub, "work.w1", "after", got)
	// Its turn in the probe rotation (the command, heartbeat-reply and
	// health subscriptions and this one, each ProbeInterval + 10 %), then
	// HealthFailures lost probes, each waited for twice (ProbeTimeout,
	// a flush, ProbeTimeout again) and up to a tick apart.
	probeEvery := cfg.withDefaults().ProbeInterval * 11 / 10
	perLoss := 2*cfg.ProbeTimeout + cfg.HealthInterval
	bound := 4*probeEvery + time.Duration(cfg.HealthFailures)*perLoss + cfg.HealthInterval
	t.Logf("wedged handler detected and subscription restored in %v (bound %v); rebuilds %d", detect, bound, c.Stats().Rebuilds)
	if detect > bound+200*time.Millisecond || c.Stats().Rebuilds != 0 {
		t.Fatalf("detect %v (bound %v), rebuilds %d", detect, bound, c.Stats().Rebuilds)
	}
}

// A subscription closed under the client (as an auto-unsubscribe does) is
// re-created by the next health round.
func TestInvalidSubscriptionRestored(t *testing.T) {
	srv := natstest.RunServer(t, natstest.WithoutJetStream())
	c := connect(t, testConfig(t, srv.URL(), "w2"))
	got := make(chan string, 10)
	s, err := c.Subscribe("work.w2", func(m *nats.Msg) { got <- string(m.Data) })
	if err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	if err := s.sub.AutoUnsubscribe(1); err != nil {
		t.Fatal(err)
	}
	s.mu.Unlock()
	pub := srv.Connect()
	_ = pub.Publish("work.w2", []byte("last")) // the auto-unsubscribe's one message
	<-got
	natstest.CheckFor(t, 3*time.Second, 2*time.Millisecond, func() error {
		if s.Restores() < 1 {
			return errors.New("not restored yet")
		}
		return nil
	})
	publishUntil(t, pub, "work.w2", "again", got)
	if err := s.Unsubscribe(); err != nil || s.Unsubscribe() != nil {
		t.Fatalf("Unsubscribe: %v", err)
	}
}

// A KV watcher whose consumer disappears is re-created from its revision
// (by the progress check or by nats.go's ordered consumer) with no update
// missed.
func TestKVWatchSurvivesDeletedConsumer(t *testing.T) {
	srv := natstest.RunServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	js, kv := bucket(ctx, t, srv, "cfg")
	c := connect(t, testConfig(t, srv.URL(), "k1"))
	var (
		mu    sync.Mutex
		seen  []uint64
		vals  []string
		ready = make(chan struct{})
	)
	w, err := c.WatchKV("cfg", []string{"k"}, func(e jetstream.KeyValueEntry) {
		if e == nil {
			close(ready)
			return
		}
		mu.Lock()
		seen, vals = append(seen, e.Revision()), append(vals, string(e.Value()))
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	<-ready
	put := func(i int) {
		if _, err := kv.Put(ctx, "k", []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	put(1)
	waitVals(t, &mu, &vals, 1)
	stream, err := js.Stream(ctx, "KV_cfg")
	if err != nil {
		t.Fatal(err)
	}
	for name := range stream.ConsumerNames(ctx).Name() {
		if err := stream.DeleteConsumer(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	for i := 2; i <= 10; i++ {
		put(i)
	}
	waitVals(t, &mu, &vals, 10)
	t.Logf("watcher recovered from a deleted consumer in %v; restarts %d", time.Since(start), w.Restarts())
	mu.Lock()
	defer mu.Unlock()
	for i, v := range vals {
		if v != fmt.Sprint(i+1) || i > 0 && seen[i] <= seen[i-1] {
			t.Fatalf("values %v revisions %v: not continuous", vals, seen)
		}
	}
	w.Stop()
	w.Stop()
}

func waitVals(t *testing.T, mu *sync.Mutex, vals *[]string, n int) {
	t.Helper()
	natstest.CheckFor(t, 10*time.Second, 2*time.Millisecond, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(*vals) < n {
			return fmt.Errorf("%d of %d values", len(*vals), n)
		}
		return nil
	})
}

// publishUntil publishes data on subject every few milliseconds until it
// arrives on got (core NATS is at most once: a publish that races a new
// subscription may be lost).
func publishUntil(t *testing.T, pub *nats.Conn, subject, data string, got chan string) {
	t.Helper()
	natstest.CheckFor(t, 3*time.Second, 5*time.Millisecond, func() error {
		if err := pub.Publish(subject, []byte(data)); err != nil {
			return err
		}
		select {
		case m := <-got:
			if m == data {
				return nil
			}
			return fmt.Errorf("got %q", m)
		case <-time.After(5 * time.Millisecond):
			return errors.New("restored subscription delivers nothing")
		}
	})
}

// bucket creates KV bucket name with the longest history.
func bucket(ctx context.Context, t *testing.T, srv *natstest.Server, name string) (jetstream.JetStream, jetstream.KeyValue) {
	t.Helper()
	js, err := jetstream.New(srv.Connect())
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: name, History: 64})
	if err != nil {
		t.Fatal(err)
	}
	return js, kv
}
