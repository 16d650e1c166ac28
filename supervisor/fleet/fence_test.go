package fleet

import (
	"context"
	"errors"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/internal/natstest"
	"github.com/tether-dev/tether/kvconfig"
)

// mcp_fleet writes are compare-and-swap: a deposed leader's late write
// (made with the revision it last knew) has no effect, and a record a
// deposed leader wrote before the new leader's first write is detected
// and written over. Before, last writer won.
func TestFleetWritesAreCompareAndSwap(t *testing.T) {
	nc := natstest.RunServer(t).Connect()
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	b, err := kvconfig.EnsureBuckets(ctx, js, kvconfig.BucketConfig{})
	if err != nil {
		t.Fatal(err)
	}
	m := NewMetrics(prometheus.NewRegistry(), nil)
	newD := func() *dispatcher {
		d, err := newDispatcher(nc, b.Fleet, "mcp", nil, zerolog.New(zerolog.NewTestWriter(t)), m)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	deposed, leader := newD(), newD()

	// The deposed leader wrote revision r1 and still believes it current.
	res := deposed.write([]fleetWrite{{agent: "a1", data: []byte(`{"by":"deposed"}`)}})
	if len(res) != 1 || res[0].err != nil {
		t.Fatalf("first write: %+v", res)
	}
	r1 := res[0].rev
	// The new leader read r1 at takeover and writes its picture.
	res = leader.write([]fleetWrite{{agent: "a1", data: []byte(`{"by":"leader"}`), rev: r1}})
	if res[0].err != nil {
		t.Fatalf("leader's write: %+v", res)
	}
	// The deposed leader's late write, on r1, is refused.
	res = deposed.write([]fleetWrite{{agent: "a1", data: []byte(`{"by":"deposed, late"}`), rev: r1}})
	if !errors.Is(res[0].err, errConflict) || res[0].current == 0 {
		t.Fatalf("late write: %+v, want a conflict naming the current revision", res)
	}
	if e, _ := b.Fleet.Get(ctx, "a1"); string(e.Value()) != `{"by":"leader"}` {
		t.Fatalf("record %s: the deposed leader's late write landed", e.Value())
	}
	// A record written by someone else since the leader's last write: the
	// leader's CAS fails, it learns the current revision, and its next
	// write (the next flush) goes over it.
	if _, err := b.Fleet.Put(ctx, "a1", []byte(`{"by":"stale"}`)); err != nil {
		t.Fatal(err)
	}
	res = leader.write([]fleetWrite{{agent: "a1", data: []byte(`{"by":"leader 2"}`), rev: r1 + 1}})
	if !errors.Is(res[0].err, errConflict) {
		t.Fatalf("write over a changed record: %+v, want a conflict", res)
	}
	res = leader.write([]fleetWrite{{agent: "a1", data: []byte(`{"by":"leader 2"}`), rev: res[0].current}})
	if res[0].err != nil {
		t.Fatalf("rewrite: %+v", res)
	}
	if e, _ := b.Fleet.Get(ctx, "a1"); string(e.Value()) != `{"by":"leader 2"}` {
		t.Fatalf("record %s", e.Value())
	}
	if got := counterValue(m.kvWrites.WithLabelValues("conflict")); got != 2 {
		t.Errorf("conflict writes %v, want 2", got)
	}
}
