package fleet

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/agentproto"
)

// FuzzHeartbeat feeds arbitrary heartbeat bodies to the tracker: nothing
// panics, every heartbeat is either counted as discarded or applied, and
// what is applied stays within the bounds and encodes as JSON (a +Inf
// once made fleet.status and the dashboard fail for the whole fleet).
func FuzzHeartbeat(f *testing.F) {
	for _, seed := range []string{
		`{"agent":"f1","instance":"i1","seq":1,"interval_ms":5000}`,
		`{"agent":"f1","instance":"i1","seq":2,"conn":{"state":"connected","reconnects":1,"rtt_ms":0.4},"configs":{"github":{"revision":3,"applied":true}},"calls":{"ok":1}}`,
		`{"agent":"f1","instance":"i1","seq":3,"probe_ack":"x-p9","acks":["c-1","c-2"]}`,
		`{"agent":"f1","instance":"i2","seq":1,"goodbye":true}`,
		`{"agent":"f1","instance":"i1","seq":4,"conn":{"rtt_ms":1e308}}`,
		`{"agent":"f1","instance":"i1","seq":9007199254740993}`,
		`{"agent":"other","instance":"i1","seq":5}`,
		`{"agent":"f1","instance":"i1","seq":6,"sent_at":"2026-01-01T00:00:00Z","interval_ms":-1}`,
		`{"agent":"f1","instance":"i1","seq":7,"configs":{"a b":{"revision":1},"ok":{"revision":1.5}}}`,
		`{"agent":"f1","instance":"` + strings.Repeat("i", 200) + `","seq":8}`,
		`{"agent":"f1","instance":"i1","seq":11,"servers":{"echo":{"ok":1,"retried":2,"failed":3,"outcome_unknown":1,"state":"failing","last_error_class":"transient","last_failure":"refused","restarts":0}}}`,
		`{"agent":"f1","instance":"i1","seq":12,"servers":{"echo":{"state":"bogus"},"a b":{"state":"ok"}}}`,
		`not json`, `{}`, `[]`, `{"seq":"1"}`, `{"agent":"f1","instance":"i1","seq":10,"acks":null,"configs":null}`,
	} {
		f.Add([]byte(seed))
	}
	m := NewMetrics(prometheus.NewRegistry(), nil)
	cmd, err := newDispatcher(nil, nil, "mcp", nil, zerolog.Nop(), m)
	if err != nil {
		f.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.MaxAgents = 1000
	tr := newTracker(cfg, "mcp", cmd, zerolog.Nop(), m)
	discarded := func() float64 {
		sum := 0.0
		for _, r := range []string{DiscardSubject, DiscardTooLarge, DiscardJSON, DiscardOutOfBounds, DiscardSpoofed,
			DiscardInstance, DiscardOldSeq, DiscardUnregistered, DiscardFull} {
			sum += counterValue(m.hbDiscarded.WithLabelValues(r))
		}
		return sum
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		before := discarded()
		tr.handleHeartbeat(&nats.Msg{Subject: agentproto.Subjects{}.Heartbeat("f1"), Reply: agentproto.HeartbeatReply("f1"), Data: body})
		st, ok := tr.lookup("f1")
		if discarded() == before {
			// Applied: the record exists (and is checked below).
			if !ok {
				t.Fatalf("heartbeat %q neither discarded nor applied", body)
			}
		} else if d := discarded() - before; d != 1 {
			t.Fatalf("one heartbeat counted %v times", d)
		}
		if !ok {
			return
		}
		if len(st.Instance) > MaxInstanceBytes || len(st.Configs) > MaxConfigEntries || len(st.Servers) > MaxServerEntries {
			t.Fatalf("over-bound record applied: instance %d bytes, %d configs", len(st.Instance), len(st.Configs))
		}
		if _, err := json.Marshal(st); err != nil {
			t.Fatalf("status of f1 does not encode after %q: %v", body, err)
		}
		if rec, err := encodeRecord(&Record{AgentStatus: st, Liveness: StateHealthy}); err != nil || len(rec) == 0 {
			t.Fatalf("record of f1 does not encode: %v", err)
		}
	})
}
