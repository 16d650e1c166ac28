package fleet

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/kvconfig"
)

func TestMinIntervalMS(t *testing.T) {
	for _, tc := range []struct {
		configured time.Duration
		want       int64
	}{{5 * time.Second, 100}, {time.Second, 100}, {500 * time.Millisecond, 50}, {20 * time.Millisecond, 2}, {time.Millisecond, 1}} {
		if got := minIntervalMS(tc.configured); got != tc.want {
			t.Errorf("minIntervalMS(%v) = %d, want %d", tc.configured, got, tc.want)
		}
	}
}

func TestCheckBounds(t *testing.T) {
	configs := func(n int) string {
		var b strings.Builder
		b.WriteString("{")
		for i := range n {
			if i > 0 {
				b.WriteString(",")
			}
			fmt.Fprintf(&b, `"s%d":{"revision":1,"applied":true}`, i)
		}
		return b.String() + "}"
	}
	acks := func(n int) string {
		a := make([]string, n)
		for i := range a {
			a[i] = fmt.Sprintf("c%d", i)
		}
		b, _ := json.Marshal(a)
		return string(b)
	}
	consumers := func(n int, stream string, counter uint64) string {
		var b strings.Builder
		b.WriteString("[")
		for i := range n {
			if i > 0 {
				b.WriteString(",")
			}
			fmt.Fprintf(&b, `{"stream":%q,"durable":"d%d","handled":%d,"acked":1,"naked":0,"in_flight":0}`, stream, i, counter)
		}
		return b.String() + "]"
	}
	for _, tc := range []struct {
		name, extra string
		ok          bool
	}{
		{"plain", ``, true},
		{"instance at 128", `,"instance":"` + strings.Repeat("i", 128) + `"`, true},
		{"instance over 128", `,"instance":"` + strings.Repeat("i", 129) + `"`, false},
		{"256 configs", `,"configs":` + configs(256), true},
		{"257 configs", `,"configs":` + configs(257), false},
		{"256 acks", `,"acks":` + acks(256), true},
		{"257 acks", `,"acks":` + acks(257), false},
		{"string over 1 KiB", `,"probe_ack":"` + strings.Repeat("p", 1025) + `"`, false},
		{"seq at 2^53-1", `,"seq":9007199254740991`, true},
		{"seq over 2^53-1", `,"seq":9007199254740992`, false},
		{"rtt 1e308", `,"conn":{"state":"connected","rtt_ms":1e308}`, false},
		{"rtt negative", `,"conn":{"state":"connected","rtt_ms":-1}`, false},
		{"interval 99", `,"interval_ms":99`, false},
		{"interval 3600000", `,"interval_ms":3600000`, true},
		{"interval 3600001", `,"interval_ms":3600001`, false},
		{"counter over 2^53-1", `,"calls":{"ok":9007199254740992}`, false},
		{"config revision over 2^53-1", `,"configs":{"s":{"revision":9007199254740992}}`, false},
		{"16 consumers", `,"consumers":` + consumers(16, "S", 1), true},
		{"17 consumers", `,"consumers":` + consumers(17, "S", 1), false},
		{"consumer counter over 2^53-1", `,"consumers":` + consumers(1, "S", 9007199254740992), false},
		{"consumer stream with a dot", `,"consumers":` + consumers(1, "S.>", 1), false},
		{"consumer stream of 65 bytes", `,"consumers":` + consumers(1, strings.Repeat("s", 65), 1), false},
		{"consumer declared twice", `,"consumers":[{"stream":"S","durable":"D"},{"stream":"S","durable":"D"}]`, false},
		{"consumer last ack over 2^53-1", `,"consumers":[{"stream":"S","durable":"D","last_ack_ms_ago":9007199254740992}]`, false},
	} {
		body := `{"agent":"a1"` + tc.extra + `}`
		if !strings.Contains(tc.extra, `"instance"`) {
			body = `{"agent":"a1","instance":"i1"` + tc.extra + `}`
		}
		var hb hbIn
		if err := decodeHeartbeat([]byte(body), &hb); err != nil {
			t.Fatalf("%s: decode: %v", tc.name, err)
		}
		err := checkBounds(&hb, minIntervalMS(DefaultHeartbeatInterval))
		if err == nil {
			_, err = decodeApplied(hb.Configs) // configs are bounded where they are decoded
		}
		if (err == nil) != tc.ok {
			t.Errorf("%s: checkBounds = %v, want ok %v", tc.name, err, tc.ok)
		}
	}
}

// Heartbeats over the bounds are discarded and counted by reason and
// change nothing; a stale heartbeat's probe_ack and a probe_ack naming a
// probe never sent answer nothing.
func TestBoundsAndStaleAcksChangeNothing(t *testing.T) {
	cfg := rigConfig()
	cfg.ZombieAfter = 1
	r := newClockRig(t, cfg)
	r.heartbeat("b1", "")
	send := func(body string) {
		r.tr.handleHeartbeat(&nats.Msg{Subject: agentproto.Subjects{}.Heartbeat("b1"), Reply: agentproto.HeartbeatReply("b1"), Data: []byte(body)})
	}
	before, _ := r.tr.lookup("b1")
	send(`{"agent":"b1","instance":"b1-i1","seq":99,"padding":"` + strings.Repeat("x", MaxHeartbeatBytes) + `"}`)
	send(`{"agent":"b1","instance":"` + strings.Repeat("i", 200) + `","seq":99}`)
	send(`{"agent":"b1","instance":"b1-i1","seq":99,"conn":{"rtt_ms":1e308}}`)
	var many strings.Builder
	for i := range MaxConfigEntries + 1 {
		fmt.Fprintf(&many, `,"s%d":{"revision":1}`, i)
	}
	send(`{"agent":"b1","instance":"b1-i1","seq":99,"configs":{` + many.String()[1:] + `}}`)
	after, _ := r.tr.lookup("b1")
	if after.Seq != before.Seq || after.Instance != before.Instance || after.Conn.RTTMS != before.Conn.RTTMS {
		t.Fatalf("an over-bound heartbeat changed the record: %+v -> %+v", before, after)
	}
	if got := counterValue(r.metrics.hbDiscarded.WithLabelValues(DiscardTooLarge)); got != 1 {
		t.Errorf("too_large discards %v, want 1", got)
	}
	if got := counterValue(r.metrics.hbDiscarded.WithLabelValues(DiscardOutOfBounds)); got != 3 {
		t.Errorf("out_of_bounds discards %v, want 3", got)
	}

	// A probe goes out; b1 never answers it. Neither a stale heartbeat
	// naming it nor a made-up later nonce may answer it.
	var nonce string
	for i := 0; nonce == "" && i < 100; i++ {
		if n := r.step(); len(n) > 0 {
			nonce = n[0]
		}
		if i%10 == 9 {
			r.heartbeat("b1", "")
		}
	}
	if nonce == "" {
		t.Fatal("no probe sent")
	}
	unacked := func(what string) {
		t.Helper()
		sh := r.tr.shard("b1")
		sh.mu.Lock()
		n := len(sh.m["b1"].probes)
		sh.mu.Unlock()
		if n != 1 {
			t.Fatalf("after %s: %d probes outstanding, want the 1 sent", what, n)
		}
	}
	unacked("the probe")
	send(fmt.Sprintf(`{"agent":"b1","instance":"b1-i1","seq":1,"probe_ack":%q}`, nonce)) // seq 1 is long past
	unacked("a stale heartbeat naming it")
	prefix := nonce[:strings.LastIndex(nonce, "p")+1]
	r.seq["b1"]++
	send(fmt.Sprintf(`{"agent":"b1","instance":"b1-i1","seq":%d,"probe_ack":%q}`, r.seq["b1"], prefix+"zzzzzz"))
	unacked("a probe_ack naming a probe never sent")
	for i := 0; r.state("b1") != StateZombie; i++ {
		if i > 100 {
			t.Fatalf("b1 never became a zombie: the stale or made-up probe_ack answered its probe (%v)", r.state("b1"))
		}
		if i%10 == 9 {
			r.heartbeat("b1", "")
		}
		r.step()
	}
}

// A record over mcp_fleet's max value size is written trimmed (no configs,
// no recovery times) rather than failing every write.
func TestEncodeRecordTrimsOversizedRecords(t *testing.T) {
	r := Record{AgentStatus: AgentStatus{Agent: "big", State: StateHealthy, Configs: map[string]ConfigStatus{}}, Liveness: StateHealthy}
	for i := range 2000 {
		r.Configs[fmt.Sprintf("server-%04d", i)] = ConfigStatus{Error: strings.Repeat("e", 200)}
	}
	data, err := encodeRecord(&r)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) > kvconfig.MaxFleetRecordBytes {
		t.Fatalf("record is %d bytes, over %d", len(data), kvconfig.MaxFleetRecordBytes)
	}
	var back Record
	if err := json.Unmarshal(data, &back); err != nil || !back.Trimmed || back.Agent != "big" || len(back.Configs) != 0 {
		t.Fatalf("trimmed record %+v %v", back, err)
	}
	small := Record{AgentStatus: AgentStatus{Agent: "small"}}
	if data, _ := encodeRecord(&small); strings.Contains(string(data), "trimmed") {
		t.Fatalf("a small record was trimmed: %s", data)
	}
}
