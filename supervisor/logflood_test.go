package supervisor

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/internal/natstest"
)

// A flood of 100,000 bad requests and 100,000 bad heartbeats grows the log
// by a bounded number of lines (each sampled stream passes a burst per
// period) and the drops are reported in summary lines, not lost silently.
func TestLogFloodIsBounded(t *testing.T) {
	const n = 100_000
	srv := natstest.RunServer(t)
	var buf lockedBuffer
	cfg := testConfig(t, srv)
	cfg.HTTPAddr = ""
	cfg.Logger = zerolog.New(&buf).Level(zerolog.InfoLevel)
	cfg.LogSummaryInterval = 100 * time.Millisecond
	s := startSupervisor(t, cfg)
	nc := srv.Connect()
	before := len(buf.String())
	start := time.Now()
	long := strings.Repeat("x", 200)
	for i := range n {
		// A 400 (server id too long) on the agent's own inbox, and a
		// heartbeat that is not JSON from an id nobody registered.
		req := &nats.Msg{Subject: fmt.Sprintf("mcp.v1.resolve.a%d.%s", i%1000, long), Reply: fmt.Sprintf("_INBOX_a%d.r", i%1000)}
		if err := nc.PublishMsg(req); err != nil {
			t.Fatal(err)
		}
		if err := nc.Publish(fmt.Sprintf("mcp.v1.hb.h%d", i), []byte(`{"agent":`+long)); err != nil {
			t.Fatal(err)
		}
		if i%5000 == 0 {
			if err := nc.Flush(); err != nil {
				t.Fatal(err)
			}
		}
	}
	natstest.CheckFor(t, 60*time.Second, 10*time.Millisecond, func() error {
		req, hb := metricSum(t, s, "tether_resolutions_total"), metricSum(t, s, "tether_heartbeats_received_total")
		if req < n || hb < n {
			return fmt.Errorf("handled %v requests and %v heartbeats of %d", req, hb, n)
		}
		return nil
	})
	took := time.Since(start)
	natstest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if !strings.Contains(buf.String()[before:], `"dropped"`) {
			return fmt.Errorf("no summary of dropped lines yet")
		}
		return nil
	})
	out := buf.String()[before:]
	lines := strings.Count(out, "\n")
	// Per second: 20 request lines and 20 bad-heartbeat lines, plus a
	// summary line per stream per report; one period of slack at either
	// end. The bound is a rate: a flood on a slow machine lasts longer.
	periods := int(took/time.Second) + 2
	bound := periods*(20+20) + (int(took/cfg.LogSummaryInterval)+10)*5
	t.Logf("%d requests + %d heartbeats in %v: %d log lines, %d bytes (bound %d lines)", n, n, took.Round(time.Millisecond), lines, len(out), bound)
	if lines > bound {
		t.Fatalf("%d log lines for the flood, over the bound %d", lines, bound)
	}
	// Every line is bounded too: what agents send is truncated.
	if perLine := len(out) / max(lines, 1); perLine > 1024 {
		t.Fatalf("log lines average %d bytes: something agents send is not truncated", perLine)
	}
}
