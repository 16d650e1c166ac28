package agentproto

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/tether-dev/tether/internal/natstest"
)

// BenchmarkBacklogDrain drains a backlog of b.N tasks (published before
// the timer starts) from a work-queue stream with explicit acks, through
// Consume and, as the reference in the same run, through a bare
// jetstream pull consumer (Consume with PullMaxMessages = the same batch,
// acking each message in its handler) on the same server. The handler does
// nothing: what is measured is the consumer path. Reported: tasks/s.
func BenchmarkBacklogDrain(b *testing.B) {
	srv := natstest.RunServer(b)
	pub := srv.Connect()
	js, err := jetstream.New(pub, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		b.Fatal(err)
	}
	c := connect(b, testConfig(b, srv.URL(), "bench"))
	seq := 0
	for _, batch := range []int{1, 16, 64} {
		b.Run("consume/batch="+strconv.Itoa(batch), func(b *testing.B) {
			seq++
			stream, cons := benchBacklog(b, js, seq, b.N)
			var done atomic.Int64
			all := make(chan struct{})
			b.ResetTimer()
			start := time.Now()
			k, err := c.Consume(stream, "d", func(context.Context, *Task) error {
				if done.Add(1) == int64(b.N) {
					close(all)
				}
				return nil
			}, WithMaxInFlight(batch), WithPullExpiry(time.Second))
			if err != nil {
				b.Fatal(err)
			}
			<-all
			benchDrained(b, js, cons)
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "tasks/s")
			b.StopTimer()
			k.Stop()
		})
		b.Run("jetstream/batch="+strconv.Itoa(batch), func(b *testing.B) {
			seq++
			_, cons := benchBacklog(b, js, seq, b.N)
			nc := srv.Connect()
			bjs, _ := jetstream.New(nc)
			bc, err := bjs.Consumer(context.Background(), "BENCH"+strconv.Itoa(seq), "d")
			if err != nil {
				b.Fatal(err)
			}
			var done atomic.Int64
			all := make(chan struct{})
			b.ResetTimer()
			start := time.Now()
			cc, err := bc.Consume(func(m jetstream.Msg) {
				_ = m.Ack()
				if done.Add(1) == int64(b.N) {
					close(all)
				}
			}, jetstream.PullMaxMessages(batch), jetstream.PullExpiry(time.Second))
			if err != nil {
				b.Fatal(err)
			}
			<-all
			benchDrained(b, js, cons)
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "tasks/s")
			b.StopTimer()
			cc.Stop()
			nc.Close()
		})
	}
}

// benchBacklog makes stream BENCH<seq> with durable d (explicit acks) and
// n messages waiting in it.
func benchBacklog(b *testing.B, js jetstream.JetStream, seq, n int) (string, jetstream.Consumer) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	name := "BENCH" + strconv.Itoa(seq)
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{"bench." + strconv.Itoa(seq)},
		Retention: jetstream.WorkQueuePolicy, Storage: jetstream.MemoryStorage}); err != nil {
		b.Fatal(err)
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, name, jetstream.ConsumerConfig{Durable: "d", AckPolicy: jetstream.AckExplicitPolicy,
		AckWait: 30 * time.Second, MaxAckPending: 10_000})
	if err != nil {
		b.Fatal(err)
	}
	body := []byte(`{"task":"resize","id":0}`)
	for i := range n {
		if _, err := js.PublishAsync("bench."+strconv.Itoa(seq), body); err != nil {
			b.Fatal(err)
		}
		if i%4000 == 3999 {
			<-js.PublishAsyncComplete()
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-ctx.Done():
		b.Fatal("backlog not stored")
	}
	b.Cleanup(func() { _ = js.DeleteStream(context.Background(), name) })
	return name, cons
}

// benchDrained waits until the server has every ack (the work queue is empty).
func benchDrained(b *testing.B, js jetstream.JetStream, cons jetstream.Consumer) {
	b.Helper()
	natstest.CheckFor(b, time.Minute, time.Millisecond, func() error {
		return ackedAll(context.Background(), js, cons)
	})
}
