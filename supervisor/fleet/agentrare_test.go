package fleet

import (
	"fmt"
	"testing"
	"unsafe"

	"github.com/nats-io/nats.go"
	"github.com/tether-dev/tether/agentproto"
)

// agentSizeClass is the Go allocator size class an agent record must fit:
// the tracker holds one per agent, so each size class step (32 B here) is
// 3.2 MB of live heap at 100,000 agents, about twice that in RSS at Go's
// default pacing (BENCHMARKS.md, issue 17).
const agentSizeClass = 288

func TestAgentSizeClass(t *testing.T) {
	if n := unsafe.Sizeof(agent{}); n > agentSizeClass {
		t.Fatalf("agent is %d B, over the %d B size class: every tracked agent pays the next class; "+
			"put a field a healthy agent leaves at zero in agentRare (agentrare.go) instead, or, if it must be here, "+
			"measure BenchmarkSupervisorRSS and update this class with the figures", n, agentSizeClass)
	}
	if n := unsafe.Sizeof(agentRare{}); n > 144 {
		t.Fatalf("agentRare is %d B, over the 144 B size class: an agent that restarted pays it besides the record", n)
	}
}

// rareOf reports whether id's record holds its rare fields.
func (r *clockRig) rareOf(id string) *agentRare {
	sh := r.tr.shard(id)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return sh.m[id].rare
}

// TestAgentRareOnlyWhileUsed: a healthy agent answering probes never
// allocates its rare fields; a command allocates them until it is acked
// and the next sweep; a restart keeps them (the previous instance and the
// restart count).
func TestAgentRareOnlyWhileUsed(t *testing.T) {
	r := newClockRig(t, rigConfig())
	ticks := int(r.cfg.HeartbeatInterval / r.cfg.CheckInterval)
	ack := ""
	r.heartbeat("h1", "")
	for i := 1; i <= 5*ticks; i++ {
		if i%ticks == 0 {
			r.heartbeat("h1", ack)
		}
		if n := r.step(); len(n) > 0 {
			ack = n[len(n)-1]
		}
		r.want("h1", StateHealthy)
		if rare := r.rareOf("h1"); rare != nil {
			t.Fatalf("step %d: a healthy agent holds rare fields %+v", i, *rare)
		}
	}

	sh := r.tr.shard("h1")
	sh.mu.Lock()
	p := r.tr.addPending(sh.m["h1"], agentproto.Command{Type: agentproto.CmdReresolve, Reason: "test"}, false, r.tr.now())
	sh.mu.Unlock()
	if r.rareOf("h1") == nil {
		t.Fatal("a pending command is not held")
	}
	r.seq["h1"]++
	body := fmt.Sprintf(`{"agent":"h1","instance":"h1-i1","seq":%d,"interval_ms":1000,"acks":[%q]}`, r.seq["h1"], p.cmd.ID)
	r.tr.handleHeartbeat(&nats.Msg{Subject: agentproto.Subjects{}.Heartbeat("h1"), Data: []byte(body)})
	if n, _ := r.pendingOf("h1"); n != 0 {
		t.Fatalf("%d pending after the ack", n)
	}
	r.step()
	if rare := r.rareOf("h1"); rare != nil {
		t.Fatalf("after the ack and a sweep: rare fields %+v, want none", *rare)
	}

	r.restart("h1", 2)
	r.step()
	rare := r.rareOf("h1")
	if rare == nil || rare.prevInst != "h1-i1" || rare.restarts != 1 {
		t.Fatalf("after a restart: rare fields %+v, want prevInst h1-i1 and one restart", rare)
	}
}
