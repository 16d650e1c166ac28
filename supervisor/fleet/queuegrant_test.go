package fleet

import (
	"strings"
	"testing"
	"time"
)

// A declared consumer its agent is not granted (here: no mcp_agents record
// at all) is never picked for a read, and what was read of it is dropped:
// a queue zombie stuck on it stops being one, its backlog is gone from
// the status, which shows the error and a warning instead.
func TestUngrantedQueueIsNotReadAndForgotten(t *testing.T) {
	cfg := rigConfig()
	cfg.ProbeInterval = time.Hour // queue judgement only
	cfg.QueueZombieAfter = 1
	r := newClockRig(t, cfg)
	iv := cfg.HeartbeatInterval
	r.queueHeartbeat("q1")
	r.queueRead("q1", 5, 10)
	r.clk.advance(iv)
	r.queueHeartbeat("q1")
	r.queueRead("q1", 5, 10)
	r.tr.sweepOnce()
	r.want("q1", StateZombie)
	q := &queueState{bucket: newTokenBucket(100, 64, r.tr.now())}
	g := r.tr.pickQueues(q, r.tr.now(), 64)
	if len(q.due) != 0 || g.states[QueueUnknown] != 1 || g.backlog != 0 {
		t.Fatalf("ungranted consumer picked for a read: due %+v, gauges %+v", q.due, g)
	}
	st, _ := r.tr.lookup("q1")
	if st.QueueZombie || st.Backlog != 0 || len(st.Consumers) != 1 || st.Consumers[0].State != QueueUnknown ||
		st.Consumers[0].Error != errUngranted || len(st.Warnings) != 1 || !strings.Contains(st.Warnings[0], "S:D") {
		t.Fatalf("status %+v", st)
	}
	r.clk.advance(cfg.CheckInterval)
	r.queueHeartbeat("q1")
	r.tr.sweepOnce()
	r.want("q1", StateHealthy)
	if g := r.tr.pickQueues(q, r.tr.now(), 64); len(q.due) != 0 || g.states[QueueUnknown] != 1 {
		t.Fatalf("second round: due %+v", q.due)
	}
}
