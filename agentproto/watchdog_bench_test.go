package agentproto

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/internal/natstest"
)

// Side by side, one fault per iteration: plain nats.go with its default
// options against a Client with DefaultConfig. Metrics: ms/op is the time
// to recover (or to detect, for the black hole); recovered/op is 1 when it
// recovered within the cap. Plain nats.go never recovers from CLOSED and
// notices a black hole only after ~6 min, so those waits are capped.
//
//	go test -run '^$' -bench BenchmarkRecovery -benchtime 3x ./agentproto/
const (
	benchCap       = 5 * time.Second
	benchHoleCap   = 8 * time.Second
	benchReconnect = 2 // MaxReconnects that forces CLOSED in the closed case
)

func BenchmarkRecovery(b *testing.B) {
	for _, fault := range []string{"restart", "closed", "blackhole"} {
		for _, who := range []string{"plain", "tether"} {
			b.Run(fault+"/"+who, func(b *testing.B) {
				var total time.Duration
				recovered := 0
				for range b.N {
					d, ok := benchFault(b, fault, who == "tether")
					total += d
					if ok {
						recovered++
					}
				}
				b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/op")
				b.ReportMetric(float64(recovered)/float64(b.N), "recovered/op")
			})
		}
	}
}

// benchFault runs one fault and returns the time to recover (detect, for
// the black hole) and whether it happened within the cap.
func benchFault(b *testing.B, fault string, tether bool) (time.Duration, bool) {
	srv := natstest.RunServer(b, natstest.WithoutJetStream())
	defer srv.Shutdown()
	target := srv.URL()
	var proxy *natstest.Proxy
	if fault == "blackhole" {
		proxy = natstest.NewProxy(b, srv.URL()[len("nats://"):])
		defer proxy.Close()
		target = proxy.URL()
	}
	got := make(chan struct{}, 1024)
	detected := make(chan struct{})
	var once sync.Once
	onDown := func() { once.Do(func() { close(detected) }) }
	gaveUp, closeFn := benchSubscriber(b, fault, tether, target, func(*nats.Msg) { got <- struct{}{} }, onDown)
	defer closeFn()
	switch fault {
	case "restart":
		srv.Restart()
	case "closed":
		srv.Shutdown()
		natstest.CheckFor(b, benchCap, time.Millisecond, func() error {
			if !gaveUp() {
				return errors.New("nats.go has not given up yet")
			}
			return nil
		})
		srv.Start()
	case "blackhole":
		start := time.Now()
		proxy.BlackHole()
		select {
		case <-detected:
			return time.Since(start), true
		case <-time.After(benchHoleCap):
			return benchHoleCap, false
		}
	}
	return untilDelivered(b, srv.URL(), "bench.x", got, time.Now(), benchCap)
}

// benchSubscriber subscribes handler to bench.x through a Client with
// DefaultConfig or a plain nats.go connection with default options (both
// with benchReconnect reconnects in the closed case). onDown is called
// when the link is found dead; gaveUp reports that nats.go closed the
// connection.
func benchSubscriber(b *testing.B, fault string, tether bool, url string, handler nats.MsgHandler, onDown func()) (gaveUp func() bool, closeFn func()) {
	if tether {
		cfg := DefaultConfig("bench")
		cfg.URLs, cfg.SkipInitialResolve, cfg.Logger = url, true, zerolog.Nop()
		if fault == "closed" {
			cfg.MaxReconnects = benchReconnect
		}
		cfg.OnEvent = func(e Event) {
			if e.Kind == EventDisconnected || e.Kind == EventRebuildStarted {
				onDown()
			}
		}
		c, err := Connect(context.Background(), cfg)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := c.Subscribe("bench.x", handler); err != nil {
			b.Fatal(err)
		}
		return func() bool { return c.Stats().ConnCloses > 0 }, c.Close
	}
	opts := []nats.Option{nats.DisconnectErrHandler(func(*nats.Conn, error) { onDown() })}
	if fault == "closed" {
		opts = append(opts, nats.MaxReconnects(benchReconnect))
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := nc.Subscribe("bench.x", handler); err != nil {
		b.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		b.Fatal(err)
	}
	return nc.IsClosed, nc.Close
}

// untilDelivered publishes every millisecond until a message arrives.
func untilDelivered(b *testing.B, url, subject string, got chan struct{}, from time.Time, limit time.Duration) (time.Duration, bool) {
	pub, err := nats.Connect(url)
	if err != nil {
		b.Fatal(err)
	}
	defer pub.Close()
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
