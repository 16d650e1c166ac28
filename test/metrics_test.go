package test

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/tether-dev/tether/internal/natstest"
	"github.com/tether-dev/tether/internal/suptest"
)

// scrape fetches /metrics and parses it with the Prometheus text parser.
func scrape(t *testing.T, addr string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return fams
}

// value sums a family's samples whose labels include all of want.
func value(fams map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	return suptest.Value(fams, name, want)
}

// TestMetricsMove scrapes /metrics with the Prometheus text parser before
// and after real traffic (resolves, an invalid entry, a config push, a real
// agent heartbeating and answering probes, a server restart) and asserts
// that the counters and gauges moved.
func TestMetricsMove(t *testing.T) {
	srv := natstest.RunServer(t)
	cfg := suptest.Config(t, srv.URL())
	cfg.HTTPAddr = "127.0.0.1:0"
	suptest.FastFleet(&cfg)
	sup := suptest.Start(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	before := scrape(t, sup.HTTPAddr())
	if v := value(before, "tether_resolutions_total", nil); v > 0 {
		t.Fatalf("resolutions before any traffic: %v", v)
	}
	if v := value(before, "tether_build_info", nil); v != 1 || len(before["tether_build_info"].GetMetric()) != 1 {
		t.Errorf("tether_build_info: %v in %d series, want 1 in one", v, len(before["tether_build_info"].GetMetric()))
	}

	b := sup.Buckets()
	rev, _ := b.Configs.Put(ctx, "global.github", []byte(`{"url":"https://g.example/mcp"}`))
	b.Configs.Put(ctx, "global.broken", []byte(`{"url":"https://g.example/mcp","timout":"1s"}`))
	// A put is visible once the supervisor's watch delivers it (there is no
	// read-your-writes promise), and a change is pushed to the agents the
	// supervisor knows: wait for both before relying on them.
	natstest.CheckFor(t, 5*time.Second, 2*time.Millisecond, func() error {
		if r, err := sup.Index().Resolve("m1", "github"); err != nil || r.Revision != rev {
			return fmt.Errorf("index: %+v %v", r, err)
		}
		return nil
	})
	suptest.Register(t, sup, "dev", "m1")
	agentCfg := faultConfig(t, srv.URL(), "m1")
	agentCfg.SkipInitialResolve = false
	agent := startAgent(t, agentCfg)
	if _, err := agent.Resolve(ctx, "github"); err != nil {
		t.Fatal(err)
	}
	nc := observer(t, srv.URL())
	nc.Request(subj.Resolve("m1", "nothing"), nil, time.Second)
	natstest.CheckFor(t, 5*time.Second, 2*time.Millisecond, func() error {
		if _, ok := sup.Fleet().Agent("m1"); !ok {
			return fmt.Errorf("m1 not tracked yet")
		}
		return nil
	})
	b.Configs.Put(ctx, "global.github", []byte(`{"url":"https://g2.example/mcp"}`)) // pushed to m1

	checks := []struct {
		name   string
		labels map[string]string
		min    float64
	}{
		{"tether_resolutions_total", map[string]string{"scope": "global", "outcome": "ok"}, 1},
		{"tether_resolutions_total", map[string]string{"outcome": "not_found"}, 1},
		{"tether_resolve_duration_seconds", nil, 2},
		{"tether_kv_changes_total", map[string]string{"bucket": "mcp_configs"}, 3},
		{"tether_kv_invalid_entries_total", map[string]string{"bucket": "mcp_configs"}, 1},
		{"tether_heartbeats_received_total", nil, 3},
		{"tether_fleet_agents", map[string]string{"state": "healthy"}, 1},
		{"tether_probes_sent_total", nil, 1},
		{"tether_commands_sent_total", map[string]string{"type": "reresolve"}, 1},
		{"tether_commands_acked_total", nil, 1},
		{"tether_config_pushes_total", nil, 1},
		{"tether_config_push_agents_total", nil, 1},
		{"tether_fleet_kv_writes_total", map[string]string{"outcome": "ok"}, 1},
	}
	natstest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		now := scrape(t, sup.HTTPAddr())
		for _, c := range checks {
			if v := value(now, c.name, c.labels); v < c.min {
				return fmt.Errorf("%s%v = %v, want >= %v", c.name, c.labels, v, c.min)
			}
		}
		return nil
	})

	// The supervisor's own reconnects are counted.
	srv.Restart()
	natstest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if v := value(scrape(t, sup.HTTPAddr()), "tether_nats_reconnects_total", nil); v < 1 {
			return fmt.Errorf("reconnects %v", v)
		}
		return nil
	})
}
