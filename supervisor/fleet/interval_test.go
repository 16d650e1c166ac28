package fleet

import (
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/tether-dev/tether/agentproto"
)

// beat hands the tracker a heartbeat from id announcing interval, naming
// probeAck.
func (r *clockRig) beat(id string, interval time.Duration, probeAck string) {
	r.t.Helper()
	if r.inst[id] == "" {
		r.inst[id] = id + "-i1"
	}
	r.seq[id]++
	body := fmt.Sprintf(`{"agent":%q,"instance":%q,"seq":%d,"interval_ms":%d,"probe_ack":%q}`, id, r.inst[id], r.seq[id], interval.Milliseconds(), probeAck)
	r.tr.handleHeartbeat(&nats.Msg{Subject: agentproto.Subjects{}.Heartbeat(id), Reply: agentproto.HeartbeatReply(id), Data: []byte(body)})
}

// An agent that honestly heartbeats every 25 s or 50 s (within the
// clamp of a 5 s fleet) and answers each probe on its next heartbeat is
// never a zombie: probes and their deadlines are in its own interval.
// Before, the fixed 10 s probe deadline made it a zombie, then quarantined.
func TestSlowAgentJudgedInItsOwnInterval(t *testing.T) {
	for _, interval := range []time.Duration{25 * time.Second, 50 * time.Second} {
		t.Run(interval.String(), func(t *testing.T) {
			cfg := DefaultConfig() // 5 s heartbeats, probe timings derived
			cfg.MassSilenceMin = 1000
			r := newClockRig(t, cfg)
			latest := ""
			next := time.Duration(0)
			for r.at() < 20*interval {
				if r.at() >= next {
					r.beat("slow", interval, latest)
					next = r.at() + interval
				}
				if n := r.sweep(); len(n) > 0 {
					latest = n[len(n)-1]
				}
				if st := r.state("slow"); st != StateHealthy {
					t.Fatalf("at %v: an honest agent beating every %v is %v", r.at(), interval, st)
				}
				r.clk.advance(cfg.CheckInterval)
			}
		})
	}
}

// With --heartbeat-interval 500ms --probe-interval 500ms a zombie (it
// heartbeats, never answers a probe) is called one within ZombieAfter
// probe intervals plus one heartbeat interval of going deaf; before, the
// fixed 10 s probe deadline made that about 13 s (26 intervals).
func TestZombieDetectedInAgentIntervals(t *testing.T) {
	for _, tc := range []struct{ hb, agent time.Duration }{
		{500 * time.Millisecond, 500 * time.Millisecond},
		{5 * time.Second, 5 * time.Second},
		{5 * time.Second, time.Second}, // a fast agent in a 5 s fleet
	} {
		t.Run(fmt.Sprintf("fleet %v agent %v", tc.hb, tc.agent), func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.HeartbeatInterval, cfg.ProbeInterval = tc.hb, tc.hb
			cfg.CheckInterval = tc.hb / 50
			cfg.MassSilenceMin = 1000
			r := newClockRig(t, cfg)
			latest, next := "", time.Duration(0)
			// Healthy and answering for 10 intervals, then deaf.
			deafAt := 10 * tc.agent
			for {
				if r.at() >= next {
					ack := latest
					if r.at() >= deafAt {
						ack = "" // its command subscription is dead
					}
					r.beat("z", tc.agent, ack)
					next = r.at() + tc.agent
				}
				if n := r.sweep(); len(n) > 0 && r.at() < deafAt {
					latest = n[len(n)-1]
				}
				if r.state("z") == StateZombie {
					break
				}
				if r.at() > deafAt+30*tc.agent {
					t.Fatalf("no zombie %v after it went deaf", r.at()-deafAt)
				}
				r.clk.advance(cfg.CheckInterval)
			}
			took := r.at() - deafAt
			limit := time.Duration(cfg.ZombieAfter)*tc.agent + tc.agent // probe every agent interval
			t.Logf("zombie %v after going deaf (%.1f agent intervals; limit %v)", took, float64(took)/float64(tc.agent), limit)
			if took > limit {
				t.Fatalf("zombie after %v, over ZombieAfter probe intervals + one heartbeat interval = %v", took, limit)
			}
			if took < time.Duration(cfg.ZombieAfter-1)*tc.agent {
				t.Fatalf("zombie after only %v: fewer than %d probes can have gone unanswered", took, cfg.ZombieAfter)
			}
		})
	}
}
