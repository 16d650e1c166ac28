package supervisor

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/internal/natstest"
)

// TestResolveAllCarriesFleetSize: resolveall replies say how many agents
// the supervisor tracks, and a Client whose FleetSize is smaller than that
// sizes its reconnect window for the reported fleet (before, a fleet that
// outgrew FleetSize came back all within the configured window).
func TestResolveAllCarriesFleetSize(t *testing.T) {
	srv := natstest.RunServer(t)
	cfg := testConfig(t, srv)
	cfg.HTTPAddr, cfg.Admission = "", AdmitAny
	startSupervisor(t, cfg)
	nc := srv.Connect()
	const fleet = 25
	for i := range fleet {
		id := fmt.Sprintf("h%02d", i)
		body := fmt.Sprintf(`{"agent":%q,"instance":"%s-i1","seq":1,"interval_ms":5000}`, id, id)
		if err := nc.PublishMsg(&nats.Msg{Subject: subj.Heartbeat(id), Reply: agentproto.HeartbeatReply(id), Data: []byte(body)}); err != nil {
			t.Fatal(err)
		}
	}
	natstest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		msg, e := request(t, nc, subj.ResolveAll("h00"), nil)
		if e != nil {
			return fmt.Errorf("resolveall: %+v", e)
		}
		var rep agentproto.ResolveAllReply
		if err := json.Unmarshal(msg.Data, &rep); err != nil {
			return err
		}
		if rep.FleetSize != fleet {
			return fmt.Errorf("fleet_size %d, want %d", rep.FleetSize, fleet)
		}
		return nil
	})

	ac := agentproto.DefaultConfig("h99")
	ac.URLs, ac.Logger = srv.URL(), zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.InfoLevel)
	ac.FleetSize, ac.ConnectRate, ac.ReconnectWait, ac.MaxReconnectWait = 10, 100, 10*time.Millisecond, 5*time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := agentproto.Connect(ctx, ac)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if w := ac.ReconnectWindowOf(); w != 100*time.Millisecond {
		t.Fatalf("configured window %v, want 10 agents / 100 per s = 100 ms", w)
	}
	natstest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		// 25 agents, or 26 once the client's own heartbeat is tracked.
		if w := c.ReconnectWindow(); w != 250*time.Millisecond && w != 260*time.Millisecond {
			return fmt.Errorf("window %v, want the reported fleet's 250 or 260 ms", w)
		}
		return nil
	})
}
