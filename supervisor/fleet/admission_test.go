package fleet

import (
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Admission: a new id is tracked only when Config.Admit says so; the
// others are discarded and counted, and nothing about them is kept.
func TestAdmissionRefusesUnregisteredIDs(t *testing.T) {
	cfg := rigConfig()
	registered := map[string]bool{"ok-1": true}
	cfg.Admit = func(id string) bool { return registered[id] }
	r := newClockRig(t, cfg)
	for i := range 5 {
		r.heartbeat(fmt.Sprintf("fake-%d", i), "")
	}
	r.heartbeat("ok-1", "")
	r.want("ok-1", StateHealthy)
	if n := r.tr.size.Load(); n != 1 {
		t.Fatalf("%d agents tracked, want only the registered one", n)
	}
	if _, ok := r.tr.lookup("fake-0"); ok {
		t.Fatal("an unregistered id is tracked")
	}
	if got := counterValue(r.metrics.hbDiscarded.WithLabelValues(DiscardUnregistered)); got != 5 {
		t.Errorf("unregistered discards %v, want 5", got)
	}
	// Registering later admits the next heartbeat.
	registered["fake-0"] = true
	r.heartbeat("fake-0", "")
	r.want("fake-0", StateHealthy)
}

// MaxAgents bounds the fleet: past it new ids are discarded (fleet_full,
// with the gauge up) while known agents go on being tracked, and room
// comes back when gone agents are forgotten.
func TestMaxAgentsBoundsTheFleet(t *testing.T) {
	cfg := rigConfig()
	cfg.MaxAgents = 3
	cfg.GoneAfter = 10 * time.Second
	cfg.ForgetAfter = 20 * time.Second
	r := newClockRig(t, cfg)
	for i := range 5 {
		r.heartbeat(fmt.Sprintf("m%d", i), "")
	}
	if n := r.tr.size.Load(); n != 3 {
		t.Fatalf("%d agents tracked, want MaxAgents 3", n)
	}
	if got := counterValue(r.metrics.hbDiscarded.WithLabelValues(DiscardFull)); got != 2 {
		t.Errorf("fleet_full discards %v, want 2", got)
	}
	if g := gaugeValue(r.metrics.fleetFullG); g != 1 {
		t.Errorf("tether_fleet_full %v, want 1", g)
	}
	r.heartbeat("m0", "") // a known agent is never refused
	// m1 and m2 go silent until forgotten; m0 keeps heartbeating.
	for r.at() < cfg.ForgetAfter+time.Second {
		r.clk.advance(500 * time.Millisecond)
		r.heartbeat("m0", "")
		r.sweep()
	}
	if n := r.tr.size.Load(); n != 1 {
		t.Fatalf("%d agents tracked after the silent ones were forgotten, want 1", n)
	}
	if g := gaugeValue(r.metrics.fleetFullG); g != 0 {
		t.Errorf("tether_fleet_full %v after forgetting, want 0", g)
	}
	r.heartbeat("m3", "")
	r.want("m3", StateHealthy)
}

// One-shot ids (heard once, then silent) must not make a mass silence and
// freeze judgement of the fleet; the same number of established agents
// going silent at once does.
func TestMassSilenceCountsOnlyEstablishedAgents(t *testing.T) {
	for _, established := range []bool{false, true} {
		t.Run(fmt.Sprintf("established=%v", established), func(t *testing.T) {
			cfg := rigConfig()
			cfg.MassSilenceMin = 20
			r := newClockRig(t, cfg)
			ids := make([]string, 25)
			for i := range ids {
				ids[i] = fmt.Sprintf("s%02d", i)
				r.heartbeat(ids[i], "")
			}
			if established {
				for r.at() < time.Duration(cfg.EstablishedAfter)*cfg.HeartbeatInterval {
					r.clk.advance(cfg.HeartbeatInterval / 2)
					for _, id := range ids {
						r.heartbeat(id, "")
					}
					r.sweep()
				}
			}
			last := r.at()
			for r.at()-last < cfg.LostWindow()+time.Second {
				r.step()
			}
			if got := r.tr.mass.Load(); got != established {
				t.Fatalf("mass silence %v, want %v", got, established)
			}
			if !established {
				r.want(ids[0], StateLost) // judged on its own: nothing froze
			}
		})
	}
}

func gaugeValue(g prometheus.Gauge) float64 {
	var m dto.Metric
	if err := g.Write(&m); err != nil {
		return -1
	}
	return m.GetGauge().GetValue()
}
