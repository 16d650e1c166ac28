package kvconfig

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/internal/natstest"
)

func openStore(t *testing.T, nc *nats.Conn, onChange func(Change)) (*Store, Buckets) {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := EnsureBuckets(ctx, js, BucketConfig{})
	if err != nil {
		t.Fatal(err)
	}
	log := zerolog.New(zerolog.NewTestWriter(t))
	s, err := OpenStore(StoreConfig{JetStream: js, Buckets: b, OnChange: onChange, CheckInterval: 50 * time.Millisecond, Logger: &log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	if err := s.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	return s, b
}

// newBuckets creates the buckets on a fresh server, before any store opens.
func newBuckets(t *testing.T) (*nats.Conn, Buckets) {
	t.Helper()
	nc := natstest.RunServer(t).Connect()
	js, _ := jetstream.New(nc)
	b, err := EnsureBuckets(context.Background(), js, BucketConfig{})
	if err != nil {
		t.Fatal(err)
	}
	return nc, b
}

func TestStoreLoadsAndFollows(t *testing.T) {
	nc, b := newBuckets(t)
	ctx := context.Background()
	st, _ := b.Configs.Status(ctx)
	if st.History() < MinHistory {
		t.Fatalf("history %d", st.History())
	}
	// Values written before the store opens are the initial load.
	b.Configs.Put(ctx, "global.github", []byte(`{"url":"https://g.example"}`))
	b.Agents.Put(ctx, "a7", []byte(`{"role":"coder"}`))
	s, _ := openStore(t, nc, nil)
	ix := s.Index()
	if r, err := ix.Resolve("a7", "github"); err != nil || r.Scope != "global" || r.Role != "coder" {
		t.Fatalf("initial: %+v %v", r, err)
	}
	// A put is visible to the next resolve within 50 ms.
	rev, _ := b.Configs.Put(ctx, "role.coder.github", []byte(`{"url":"https://r.example"}`))
	start := time.Now()
	natstest.CheckFor(t, time.Second, time.Millisecond, func() error {
		if r, _ := ix.Resolve("a7", "github"); r.Revision != rev {
			return fmt.Errorf("revision %d, want %d", r.Revision, rev)
		}
		return nil
	})
	if d := time.Since(start); d > 50*time.Millisecond {
		t.Errorf("put visible after %v, target 50ms", d)
	}
	t.Logf("put -> visible to resolve: %v", time.Since(start))
	// Delete and purge both count as absent.
	b.Configs.Delete(ctx, "role.coder.github")
	natstest.CheckFor(t, time.Second, time.Millisecond, func() error {
		if r, _ := ix.Resolve("a7", "github"); r.Scope != "global" {
			return fmt.Errorf("scope %s", r.Scope)
		}
		return nil
	})
	b.Configs.Purge(ctx, "global.github")
	natstest.CheckFor(t, time.Second, time.Millisecond, func() error {
		if _, err := ix.Resolve("a7", "github"); !errors.Is(err, ErrNotFound) {
			return fmt.Errorf("want not found, got %v", err)
		}
		return nil
	})
}

func TestStoreSurvivesServerRestart(t *testing.T) {
	srv := natstest.RunServer(t)
	nc := srv.Connect(nats.MaxReconnects(-1), nats.ReconnectWait(10*time.Millisecond))
	var mu sync.Mutex
	var revs []uint64
	s, b := openStore(t, nc, func(c Change) {
		if c.Bucket == BucketConfigs {
			mu.Lock()
			revs = append(revs, c.Revision)
			mu.Unlock()
		}
	})
	ctx := context.Background()
	if _, err := b.Configs.Put(ctx, "global.github", []byte(`{"url":"https://one.example"}`)); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		srv.RestartAwait(nc)
		rev, err := b.Configs.Put(ctx, "global.github", []byte(fmt.Sprintf(`{"url":"https://after%d.example"}`, i)))
		if err != nil {
			t.Fatalf("first put after restart %d: %v", i, err)
		}
		natstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
			r, err := s.Index().Resolve("a7", "github")
			if err != nil || r.Revision != rev {
				return fmt.Errorf("resolve after restart %d: revision %d want %d (%v)", i, r.Revision, rev, err)
			}
			return nil
		})
	}
	mu.Lock()
	defer mu.Unlock()
	for i := 1; i < len(revs); i++ {
		if revs[i] <= revs[i-1] {
			t.Fatalf("revisions out of order: %v", revs)
		}
	}
}

// TestWatcherRecreatedWhenConsumerDies deletes the watcher's consumer on the
// server, the way a watcher silently dies, and checks that no later update
// is missed: every revision arrives, in order.
func TestWatcherRecreatedWhenConsumerDies(t *testing.T) {
	srv := natstest.RunServer(t)
	nc := srv.Connect()
	var mu sync.Mutex
	var revs []uint64
	s, b := openStore(t, nc, func(c Change) {
		if c.Bucket == BucketConfigs {
			mu.Lock()
			revs = append(revs, c.Revision)
			mu.Unlock()
		}
	})
	ctx := context.Background()
	js, _ := jetstream.New(nc)
	stream, err := js.Stream(ctx, "KV_"+BucketConfigs)
	if err != nil {
		t.Fatal(err)
	}
	names := stream.ConsumerNames(ctx)
	for n := range names.Name() {
		if err := stream.DeleteConsumer(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	var last uint64
	for i := 0; i < 5; i++ {
		last, err = b.Configs.Put(ctx, "global.s"+fmt.Sprint(i), []byte(`{"url":"https://x.example"}`))
		if err != nil {
			t.Fatal(err)
		}
	}
	natstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(revs) != 5 || revs[4] != last {
			return fmt.Errorf("revisions seen %v, want 5 ending at %d (restarts %d)", revs, last, s.Restarts())
		}
		return nil
	})
}

// TestWatcherQuietAfterCompaction: `nats kv compact` (PurgeDeletes) removes
// delete markers, so the stream's last sequence stays above the newest
// revision any watcher can deliver. A freshly started watcher must not take
// that for a stall: no re-creation, healthy at every check.
func TestWatcherQuietAfterCompaction(t *testing.T) {
	nc, b := newBuckets(t)
	ctx := context.Background()
	for _, k := range []string{"global.a", "global.b", "global.c"} {
		if _, err := b.Configs.Put(ctx, k, []byte(`{"url":"https://x.example"}`)); err != nil {
			t.Fatal(err)
		}
	}
	for _, k := range []string{"global.b", "global.c"} {
		if err := b.Configs.Delete(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Configs.PurgeDeletes(ctx, jetstream.DeleteMarkersOlderThan(-1)); err != nil {
		t.Fatal(err)
	}
	s, _ := openStore(t, nc, nil) // checks every 50 ms
	for i := range 20 {           // 1 s: ten stall-check pairs
		if !s.Healthy() || s.Restarts() != 0 {
			t.Fatalf("after %d ms: healthy %v, restarts %d", i*50, s.Healthy(), s.Restarts())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := s.Index().Resolve("x", "a"); err != nil {
		t.Fatalf("global.a: %v", err)
	}
}

// TestWatcherFollowsRecreatedBucket: a bucket deleted and re-created is a
// new epoch. Once the new bucket has passed the old one's revision the index
// must hold exactly the new bucket's keys — none of the dead bucket's, and
// the new bucket's first keys too.
func TestWatcherFollowsRecreatedBucket(t *testing.T) {
	srv := natstest.RunServer(t)
	nc := srv.Connect()
	s, b := openStore(t, nc, nil)
	ctx := context.Background()
	js, _ := jetstream.New(nc)
	for i := range 3 {
		if _, err := b.Configs.Put(ctx, fmt.Sprint("global.old", i), []byte(`{"url":"https://old.example"}`)); err != nil {
			t.Fatal(err)
		}
	}
	natstest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		_, err := s.Index().Resolve("x", "old2")
		return err
	})
	if err := js.DeleteKeyValue(ctx, BucketConfigs); err != nil {
		t.Fatal(err)
	}
	b2, err := EnsureBuckets(ctx, js, BucketConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var last uint64
	for i := range 5 { // past the old bucket's revision 3
		if last, err = b2.Configs.Put(ctx, fmt.Sprint("global.new", i), []byte(`{"url":"https://new.example"}`)); err != nil {
			t.Fatal(err)
		}
	}
	natstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		for i := range 5 {
			if r, err := s.Index().Resolve("x", fmt.Sprint("new", i)); err != nil || r.Revision != uint64(i+1) {
				return fmt.Errorf("new%d: %+v %v", i, r, err)
			}
		}
		for i := range 3 {
			if _, err := s.Index().Resolve("x", fmt.Sprint("old", i)); !errors.Is(err, ErrNotFound) {
				return fmt.Errorf("old%d from the deleted bucket still resolves (%v)", i, err)
			}
		}
		return nil
	})
	if last != 5 {
		t.Fatalf("new bucket at revision %d", last)
	}
}

// mcp_fleet gets a max value size and max bytes, also when it already
// existed without them (created by an older version, or by hand).
func TestEnsureBucketsBoundsTheFleetBucket(t *testing.T) {
	nc := natstest.RunServer(t).Connect()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: BucketFleet}); err != nil {
		t.Fatal(err)
	}
	const maxBytes = 1000 * MaxFleetRecordBytes
	if _, err := EnsureBuckets(ctx, js, BucketConfig{FleetMaxBytes: maxBytes}); err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(ctx, "KV_"+BucketFleet)
	if err != nil {
		t.Fatal(err)
	}
	sc := st.CachedInfo().Config
	if sc.MaxMsgSize != MaxFleetRecordBytes || sc.MaxBytes != maxBytes {
		t.Fatalf("mcp_fleet max value %d, max bytes %d; want %d and %d", sc.MaxMsgSize, sc.MaxBytes, MaxFleetRecordBytes, maxBytes)
	}
	kv, _ := js.KeyValue(ctx, BucketFleet)
	if _, err := kv.Put(ctx, "big", make([]byte, MaxFleetRecordBytes+1)); err == nil {
		t.Fatal("a value over the max value size was stored")
	}
}

// A deleted mcp_configs is re-created (with the configured settings) and
// nothing is answered from the dead bucket's keys meanwhile; before, the
// index kept serving them and the bucket was never re-created.
func TestStoreRecreatesADeletedBucket(t *testing.T) {
	nc := natstest.RunServer(t).Connect()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	b, err := EnsureBuckets(ctx, js, BucketConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	events := map[string]int{}
	log := zerolog.New(zerolog.NewTestWriter(t))
	s, err := OpenStore(StoreConfig{JetStream: js, Buckets: b, CheckInterval: 50 * time.Millisecond, Logger: &log,
		Recreate: &BucketConfig{History: 7},
		OnBucket: func(bucket, what string) { mu.Lock(); events[bucket+" "+what]++; mu.Unlock() }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	if err := s.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	natstest.KVPut(t, b.Configs, "global.github", `{"url":"https://old.example/mcp"}`)
	natstest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		_, err := s.Index().Resolve("a7", "github")
		return err
	})
	epochBefore := s.Index().AsOf().Epoch
	if err := js.DeleteKeyValue(ctx, BucketConfigs); err != nil {
		t.Fatal(err)
	}
	natstest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if r, err := s.Index().Resolve("a7", "github"); err == nil {
			return fmt.Errorf("still answering %s from the deleted bucket", r.Key)
		}
		kv, err := js.KeyValue(ctx, BucketConfigs)
		if err != nil {
			return fmt.Errorf("not re-created: %w", err)
		}
		st, err := kv.Status(ctx)
		if err != nil || st.History() != 7 {
			return fmt.Errorf("re-created with history %v (%v), want 7", st, err)
		}
		return nil
	})
	natstest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if ep := s.Index().AsOf().Epoch; ep == epochBefore || !s.Index().Ready() {
			return fmt.Errorf("epoch %q (ready %v): the re-created bucket is not loaded yet", ep, s.Index().Ready())
		}
		return nil
	})
	kv, _ := js.KeyValue(ctx, BucketConfigs)
	natstest.KVPut(t, kv, "global.github", `{"url":"https://new.example/mcp"}`)
	natstest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		r, err := s.Index().Resolve("a7", "github")
		if err != nil || !strings.Contains(r.Config.URL, "new.example") {
			return fmt.Errorf("after re-creation: %+v %v", r, err)
		}
		return nil
	})
	mu.Lock()
	defer mu.Unlock()
	if events[BucketConfigs+" re-created"] != 1 {
		t.Fatalf("bucket events %v", events)
	}
}

// A configs bucket keeping fewer than MinHistory revisions is flagged.
func TestStoreFlagsShortHistory(t *testing.T) {
	nc := natstest.RunServer(t).Connect()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: BucketConfigs, History: 1}); err != nil {
		t.Fatal(err)
	}
	b, err := EnsureBuckets(ctx, js, BucketConfig{})
	if err != nil {
		t.Fatal(err)
	}
	s, err := OpenStore(StoreConfig{JetStream: js, Buckets: b, CheckInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	if err := s.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	natstest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if p := s.Problems(); len(p) != 1 || !strings.Contains(p[0], "keeps 1 revisions") {
			return fmt.Errorf("problems %q", p)
		}
		return nil
	})
}

// The watermark comes from the stream, not from the keys that remain:
// after `nats kv compact` (delete markers purged) and a restart it does
// not go backwards, so agents do not refuse every answer.
func TestWatermarkSurvivesCompactionAndRestart(t *testing.T) {
	nc, b := newBuckets(t)
	natstest.KVPut(t, b.Agents, "a7", `{"role":"coder"}`)
	natstest.KVPut(t, b.Agents, "a8", `{"role":"coder"}`)
	if err := b.Agents.Delete(context.Background(), "a8"); err != nil {
		t.Fatal(err)
	}
	s1, _ := openStore(t, nc, nil)
	before := s1.Index().AsOf()
	s1.Close()
	if err := b.Agents.PurgeDeletes(context.Background(), jetstream.DeleteMarkersOlderThan(-1)); err != nil {
		t.Fatal(err)
	}
	s2, _ := openStore(t, nc, nil)
	after := s2.Index().AsOf()
	if !after.Covers(before) || after.Epoch != before.Epoch {
		t.Fatalf("watermark went backwards after compaction and a restart: %+v -> %+v", before, after)
	}
}

func TestAsOfCoversWithinOneEpoch(t *testing.T) {
	for _, tc := range []struct {
		a, b AsOf
		want bool
	}{
		{AsOf{Configs: 5, Agents: 2, Epoch: "x"}, AsOf{Configs: 4, Agents: 2, Epoch: "x"}, true},
		{AsOf{Configs: 3, Agents: 2, Epoch: "x"}, AsOf{Configs: 4, Agents: 2, Epoch: "x"}, false},
		{AsOf{Configs: 1, Agents: 1, Epoch: "y"}, AsOf{Configs: 40, Agents: 9, Epoch: "x"}, true}, // re-created buckets
		{AsOf{Configs: 1}, AsOf{Configs: 4, Epoch: "x"}, false},                                   // no epoch: revisions compare
	} {
		if got := tc.a.Covers(tc.b); got != tc.want {
			t.Errorf("%+v.Covers(%+v) = %v, want %v", tc.a, tc.b, got, tc.want)
		}
	}
}
