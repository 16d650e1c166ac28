package test

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/internal/natstest"
	"github.com/tether-dev/tether/internal/suptest"
	"github.com/tether-dev/tether/supervisor/fleet"
)

// A hostile agent that declares another agent's durable in its heartbeats
// (here by calling Consume on it: its credentials refuse the bind, the
// declaration goes out all the same) gets no consumer info read for it:
// fleet.status never shows the victim's backlog as its own, the consumer
// is unknown with a "not granted" error and a warning, and it is counted;
// an agent granted its durable ('tetherctl agent add --consumer', recorded
// in mcp_agents) is read as before.
func TestUngrantedConsumerIsNotRead(t *testing.T) {
	dir := t.TempDir()
	cfg := suptest.Embedded(t, dir)
	suptest.FastFleet(&cfg)
	s := suptest.Start(t, cfg)
	url := s.ClientURL()
	add := func(id string, extra ...string) string {
		creds := filepath.Join(t.TempDir(), id+".creds")
		args := append([]string{"--nats-url", url, "--data-dir", dir, "agent", "add", id, "--role", "worker", "--out", creds}, extra...)
		if code, out := tetherctlRun(t, args...); code != 0 {
			t.Fatalf("agent add %s: exit %d: %s", id, code, out)
		}
		return creds
	}
	gCreds, hCreds := add("g1", "--consumer", "TASKS_g1:g1"), add("h1")
	js, _ := jetstream.New(operatorConn(t, url, dir))
	taskQueue(t, js, "g1", 5*time.Second)
	taskQueue(t, js, "v1", 5*time.Second)
	if err := publishKeys(js, "v1", "v-a", "v-b", "v-c"); err != nil { // the victim's backlog: 3
		t.Fatal(err)
	}
	consume := func(id, creds, stream, durable string) {
		ac := faultConfig(t, url, id)
		ac.CredsFile = creds
		c := startAgent(t, ac)
		if _, err := c.Consume(stream, durable, func(context.Context, *agentproto.Task) error { return nil },
			agentproto.WithPullExpiry(500*time.Millisecond)); err != nil {
			t.Fatal(err)
		}
	}
	consume("h1", hCreds, "TASKS_v1", "v1")
	consume("g1", gCreds, "TASKS_g1", "g1")
	if err := publishKeys(js, "g1", "g-x"); err != nil {
		t.Fatal(err)
	}
	natstest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		st, _ := s.Fleet().Agent("g1")
		if len(st.Consumers) != 1 || st.Consumers[0].State != fleet.QueueIdle || st.Consumers[0].Error != "" ||
			st.Consumers[0].AckFloorSeq != 1 || len(grantWarnings(st.Warnings)) != 0 {
			return fmt.Errorf("g1's granted consumer not read: %+v %v", st.Consumers, st.Warnings)
		}
		return nil
	})
	natstest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		st, _ := s.Fleet().Agent("h1")
		if len(st.Consumers) != 1 || !strings.Contains(st.Consumers[0].Error, "not granted") ||
			len(grantWarnings(st.Warnings)) != 1 || !strings.Contains(grantWarnings(st.Warnings)[0], "TASKS_v1:v1") {
			return fmt.Errorf("h1's ungranted consumer: %+v %v", st.Consumers, st.Warnings)
		}
		return nil
	})
	// Over several intervals (each declared consumer due once per interval)
	// h1 never shows the victim's backlog, while g1's is read again and again.
	interval := cfg.Fleet.HeartbeatInterval
	g0, _ := s.Fleet().Agent("g1")
	before := suptest.Value(suptest.Gather(s), "tether_queue_info_requests_total", map[string]string{"result": "ok"})
	for end := time.Now().Add(5 * interval); time.Now().Before(end); time.Sleep(interval / 5) {
		st, _ := s.Fleet().Agent("h1")
		if st.Backlog != 0 || st.QueueZombie || len(st.Consumers) != 1 || st.Consumers[0].State != fleet.QueueUnknown ||
			st.Consumers[0].NumPending != 0 || st.Consumers[0].CheckedMSAgo != 0 {
			t.Fatalf("the supervisor read another agent's consumer for h1: %+v (backlog %d)", st.Consumers, st.Backlog)
		}
	}
	natstest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		after := suptest.Value(suptest.Gather(s), "tether_queue_info_requests_total", map[string]string{"result": "ok"})
		if after < before+2 {
			return fmt.Errorf("consumer info reads %v → %v: g1 not read again (status %+v)", before, after, g0.Consumers)
		}
		return nil
	})
	if n := suptest.Value(suptest.Gather(s), "tether_queue_ungranted_total", nil); n != 1 {
		t.Fatalf("tether_queue_ungranted_total = %v, want 1", n)
	}
}

// grantWarnings are the "not granted" warnings of a status.
func grantWarnings(ws []string) []string {
	var out []string
	for _, w := range ws {
		if strings.Contains(w, "not granted") {
			out = append(out, w)
		}
	}
	return out
}
