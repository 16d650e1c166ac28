package fleet

import (
	"strconv"
	"testing"
	"time"

	"github.com/tether-dev/tether/agentproto"
)

// A gone agent owes nothing (issue 16): the dashboard showed a gone
// agent's pending commands as live work, because the tracker kept them.

// pendingOf is the agent's pending commands and whether its record must be
// written again.
func (r *clockRig) pendingOf(id string) (n int, dirty bool) {
	sh := r.tr.shard(id)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	a := sh.m[id]
	if a == nil {
		r.t.Fatalf("agent %s not tracked", id)
	}
	now, wall := r.tr.times()
	if got := len(r.tr.record(a, now, wall).PendingCommands); got != len(a.pending()) {
		r.t.Fatalf("record lists %d pending commands, the tracker %d", got, len(a.pending()))
	}
	return len(a.pending()), a.dirty&dirtyOther != 0
}

func TestTrackerClockGoneDropsPendingCommands(t *testing.T) {
	cfg := rigConfig()
	cfg.ProbeInterval = time.Hour // liveness only
	cfg.GoneAfter = 10 * time.Second
	r := newClockRig(t, cfg)
	r.heartbeat("g1", "")
	r.sweep()
	// An operator's command, as Fleet.Send queues it.
	sh := r.tr.shard("g1")
	sh.mu.Lock()
	r.tr.addPending(sh.m["g1"], agentproto.Command{Type: agentproto.CmdReconnect, Reason: "operator"}, false, r.tr.now())
	sh.mu.Unlock()

	r.clk.advance(cfg.LostWindow())
	r.sweep()
	r.want("g1", StateLost)
	if n, _ := r.pendingOf("g1"); n != 1 {
		t.Fatalf("lost: %d pending, want 1 (a lost agent may come back for it)", n)
	}
	r.clk.advance(cfg.GoneAfter - cfg.LostWindow() - time.Nanosecond)
	r.sweep()
	r.want("g1", StateLost)
	r.clk.advance(time.Nanosecond)
	r.sweep()
	r.want("g1", StateGone)
	st, _ := r.tr.lookup("g1")
	n, dirty := r.pendingOf("g1")
	if n != 0 || st.Pending != 0 || st.ProbesUnacked != 0 {
		t.Fatalf("gone: %d pending (status %d, probes %d), want none", n, st.Pending, st.ProbesUnacked)
	}
	if !dirty {
		t.Errorf("gone: the record is not written again without its pending commands")
	}

	// Back from gone: re-resolved in full as a recovery, not the old command.
	r.clk.advance(cfg.HeartbeatInterval)
	r.heartbeat("g1", "")
	r.want("g1", StateHealthy)
	sh.mu.Lock()
	var types []string
	for _, p := range sh.m["g1"].pending() {
		types = append(types, p.cmd.Type+" servers="+itoa(len(p.cmd.Servers))+" recovery="+strconv.FormatBool(p.recovery))
	}
	sh.mu.Unlock()
	if len(types) != 1 || types[0] != "reresolve servers=0 recovery=true" {
		t.Errorf("back from gone: pending %v, want one full re-resolve (a recovery)", types)
	}
}

func TestTrackerGoneRecordRestoredWithoutPendingCommands(t *testing.T) {
	r := newClockRig(t, rigConfig())
	_, wall := r.tr.times()
	cmd := PendingCommand{Command: agentproto.Command{ID: "c-1", Type: agentproto.CmdReresolve}, Created: wall}
	for _, tc := range []struct {
		id      string
		live    State
		pending int
	}{{"gone-1", StateGone, 0}, {"lost-1", StateLost, 1}} {
		rec := Record{AgentStatus: AgentStatus{Agent: tc.id, State: tc.live, Instance: tc.id + "-i1", LastHeard: wall.Add(-2 * time.Hour)},
			Liveness: tc.live, PendingCommands: []PendingCommand{cmd}}
		r.tr.restore(&rec)
		n, dirty := r.pendingOf(tc.id)
		if n != tc.pending {
			t.Errorf("%s restored with %d pending, want %d", tc.id, n, tc.pending)
		}
		if dirty != (tc.pending == 0) {
			t.Errorf("%s: record to be written again %v, want %v", tc.id, dirty, tc.pending == 0)
		}
	}
	// A new leader merging a gone agent's older record takes over nothing.
	r.tr.merge(&Record{AgentStatus: AgentStatus{Agent: "gone-1", Instance: "gone-1-i1"}, PendingCommands: []PendingCommand{cmd}})
	if n, _ := r.pendingOf("gone-1"); n != 0 {
		t.Errorf("merge gave a gone agent %d pending commands", n)
	}
}
