package fleet

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/tether-dev/tether/agentproto"
)

func TestQueueStalled(t *testing.T) {
	iv := time.Second
	for _, tc := range []struct {
		backlog         uint64
		progressAt, now int64
		after           int
		want            bool
	}{
		{0, 0, int64(10 * time.Second), 3, false},                 // nothing waiting
		{5, 0, int64(3*time.Second) - 1, 3, false},                // one ns short of 3 intervals
		{5, 0, int64(3 * time.Second), 3, true},                   // exactly 3 intervals
		{5, int64(time.Second), int64(3 * time.Second), 3, false}, // progress 2 intervals ago
		{1, 0, int64(time.Second), 1, true},
		{1, 0, int64(time.Hour), 0, false}, // rule off
	} {
		if got := queueStalled(tc.backlog, tc.progressAt, tc.now, iv, tc.after); got != tc.want {
			t.Errorf("queueStalled(%+v) = %v, want %v", tc, got, tc.want)
		}
	}
}

func TestUpdateQueuesKeepsReads(t *testing.T) {
	a := &agent{}
	updateQueues(a, []consumerIn{{Stream: "S", Durable: "A"}, {Stream: "S", Durable: "B"}})
	a.queues()[1].read, a.queues()[1].pending, a.queues()[1].progressAt = true, 7, 42
	updateQueues(a, []consumerIn{{Stream: "S", Durable: "A", Acked: 3}, {Stream: "S", Durable: "B", Acked: 4}})
	if a.queues()[0].decl.Acked != 3 || !a.queues()[1].read || a.queues()[1].pending != 7 || a.queues()[1].decl.Acked != 4 {
		t.Fatalf("same declaration: %+v", a.queues())
	}
	updateQueues(a, []consumerIn{{Stream: "S", Durable: "B", Acked: 5}, {Stream: "T", Durable: "C"}})
	if len(a.queues()) != 2 || a.queues()[0].decl.Durable != "B" || a.queues()[0].progressAt != 42 || a.queues()[1].read {
		t.Fatalf("changed declaration: %+v", a.queues())
	}
	a.qzombie = true
	updateQueues(a, nil)
	if a.queues() != nil || a.qzombie {
		t.Fatalf("no declaration: %+v %v", a.queues(), a.qzombie)
	}
}

func TestQueueState(t *testing.T) {
	iv := time.Second
	r := queueRec{}
	if s := r.state(0, iv); s != QueueUnknown {
		t.Errorf("unread: %s", s)
	}
	r.read = true
	if s := r.state(0, iv); s != QueueIdle {
		t.Errorf("empty: %s", s)
	}
	r.pending = 3
	if s := r.state(int64(iv)-1, iv); s != QueueBusy {
		t.Errorf("backlog, progress within an interval: %s", s)
	}
	if s := r.state(int64(iv), iv); s != QueueStalled {
		t.Errorf("backlog, no progress for an interval: %s", s)
	}
	r.err = "consumer not found"
	if s := r.state(int64(iv), iv); s != QueueUnknown {
		t.Errorf("unreadable: %s", s)
	}
}

func TestProgressTime(t *testing.T) {
	wall := time.Date(2026, 1, 1, 0, 0, 10, 0, time.UTC)
	now, prev := int64(10*time.Second), int64(9*time.Second)
	for _, tc := range []struct {
		name    string
		prev    int64
		lastAck time.Time
		want    int64
	}{
		{"first read", 0, wall.Add(-300 * time.Millisecond), now},
		{"no ack time", prev, time.Time{}, now},
		{"server time within the reads", prev, wall.Add(-300 * time.Millisecond), now - int64(300*time.Millisecond)},
		{"server clock behind: clamped to the previous read", prev, wall.Add(-time.Hour), prev},
		{"server clock ahead: clamped to now", prev, wall.Add(time.Hour), now},
	} {
		if got := progressTime(tc.prev, now, wall, tc.lastAck); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, time.Duration(got), time.Duration(tc.want))
		}
	}
}

// queueHeartbeat hands the rig's tracker a heartbeat of id declaring
// consumer S/D.
func (r *clockRig) queueHeartbeat(id string) {
	r.t.Helper()
	if r.inst[id] == "" {
		r.inst[id] = id + "-i1"
	}
	r.seq[id]++
	body := fmt.Sprintf(`{"agent":%q,"instance":%q,"seq":%d,"interval_ms":%d,"consumers":[{"stream":"S","durable":"D","handled":1,"acked":1,"naked":0,"in_flight":1}]}`,
		id, r.inst[id], r.seq[id], r.cfg.HeartbeatInterval.Milliseconds())
	r.tr.handleHeartbeat(&nats.Msg{Subject: agentproto.Subjects{}.Heartbeat(id), Reply: agentproto.HeartbeatReply(id), Data: []byte(body)})
}

// queueRead applies one consumer info of id's S/D: pending and ack floor.
func (r *clockRig) queueRead(id string, pending, floor uint64) {
	r.tr.applyQueue(&queueRead{agent: id, stream: "S", durable: "D",
		info: jsConsumerInfo{NumPending: pending, NumAckPending: 1, AckFloor: jsSeqInfo{Stream: floor}}}, r.tr.now())
}

// reconnects counts the reconnect commands on the rig's command subscription.
func (r *clockRig) reconnects() int {
	r.t.Helper()
	if err := r.nc.Flush(); err != nil {
		r.t.Fatal(err)
	}
	n := 0
	for {
		m, err := r.cmds.NextMsg(0)
		if err != nil {
			return n
		}
		var c agentproto.Command
		if json.Unmarshal(m.Data, &c) == nil && c.Type == agentproto.CmdReconnect {
			n++
		}
	}
}

// A backlog whose ack floor stays still makes a heartbeating agent a queue
// zombie at exactly QueueZombieAfter intervals (not a nanosecond before);
// it gets one reconnect; progress ends it. A queue that stays stuck makes
// a new episode every QueueZombieAfter intervals, each counted by the
// restart intensity, until the agent is quarantined: never looped.
func TestQueueZombieAtExactIntervals(t *testing.T) {
	cfg := rigConfig()
	cfg.ProbeInterval = time.Hour // queue judgement only
	cfg.QueueZombieAfter = 3
	r := newClockRig(t, cfg)
	iv := cfg.HeartbeatInterval
	r.queueHeartbeat("q1")
	r.queueRead("q1", 5, 10)
	r.tr.sweepOnce()
	r.want("q1", StateHealthy)
	beat := func(d time.Duration) { // heartbeats every interval while the clock moves d
		for d > 0 {
			step := min(d, iv)
			r.clk.advance(step)
			d -= step
			r.queueHeartbeat("q1")
		}
	}
	beat(3*iv - time.Nanosecond)
	r.queueRead("q1", 7, 10)
	r.tr.sweepOnce()
	r.want("q1", StateHealthy)
	if n := r.reconnects(); n != 0 {
		t.Fatalf("%d reconnects before the threshold", n)
	}
	r.clk.advance(time.Nanosecond)
	r.queueRead("q1", 7, 10)
	r.tr.sweepOnce()
	r.want("q1", StateZombie)
	st, _ := r.tr.lookup("q1")
	if !st.QueueZombie || st.Backlog != 8 || len(st.Consumers) != 1 || st.Consumers[0].State != QueueStalled ||
		st.Consumers[0].StalledMS != (3*iv).Milliseconds() {
		t.Fatalf("status %+v", st)
	}
	if n := r.reconnects(); n != 1 {
		t.Fatalf("%d reconnects, want 1", n)
	}
	r.clk.advance(cfg.CheckInterval)
	r.queueRead("q1", 6, 11) // the floor moves: over
	r.tr.sweepOnce()
	r.want("q1", StateHealthy)
	if st, _ := r.tr.lookup("q1"); st.QueueZombie {
		t.Fatal("still a queue zombie after progress")
	}
	// Stuck for good: an episode every 3 intervals, then quarantine.
	for episode := 2; episode <= cfg.QuarantineAfter+1; episode++ {
		beat(3 * iv)
		r.queueRead("q1", 6, 11)
		r.tr.sweepOnce()
	}
	r.want("q1", StateQuarantined)
	if st, _ := r.tr.lookup("q1"); st.Recoveries != cfg.QuarantineAfter+1 {
		t.Fatalf("recoveries %d", st.Recoveries)
	}
}
