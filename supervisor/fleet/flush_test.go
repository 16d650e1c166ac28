package fleet

import (
	"context"
	"fmt"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/internal/natstest"
	"github.com/tether-dev/tether/kvconfig"
)

// A flush after many agents joined writes every record, but never more
// than flushChunk encoded and in flight at once. Before, one flush built,
// encoded and published all of them together: after 100,000 agents joined
// that batch (~85 MB of JSON plus its publishes) set the supervisor's
// peak RSS (BenchmarkSupervisorRSS).
func TestFlushWritesInBoundedChunks(t *testing.T) {
	nc := natstest.RunServer(t).Connect()
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	b, err := kvconfig.EnsureBuckets(ctx, js, kvconfig.BucketConfig{})
	if err != nil {
		t.Fatal(err)
	}
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	d, err := newDispatcher(nc, b.Fleet, "mcp", nil, log, NewMetrics(prometheus.NewRegistry(), nil))
	if err != nil {
		t.Fatal(err)
	}
	tr := newTracker(DefaultConfig(), "mcp", d, log, nil)
	const n = 2*flushChunk + 100
	for i := range n {
		id := fmt.Sprintf("a-%04d", i)
		tr.handleHeartbeat(&nats.Msg{Subject: "mcp.v1.hb." + id, Reply: "_INBOX_" + id + ".hb",
			Data: []byte(`{"agent":"` + id + `","instance":"i1","seq":1,"interval_ms":5000,"conn":{"state":"connected"}}`)})
	}
	tr.flush()
	st, err := js.Stream(ctx, "KV_"+kvconfig.BucketFleet)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != n {
		t.Fatalf("mcp_fleet holds %d records after one flush, want %d", info.State.Msgs, n)
	}
	if got, want := d.batches.Load(), int64(3); got != want {
		t.Errorf("%d write batches for %d records, want %d", got, n, want)
	}
	if got := d.largest.Load(); got != flushChunk {
		t.Errorf("largest write batch %d, want flushChunk (%d)", got, flushChunk)
	}
	// Every record is clean: the next flush writes nothing.
	tr.flush()
	if got := d.batches.Load(); got != 3 {
		t.Errorf("a second flush wrote again (%d batches)", got)
	}
}
