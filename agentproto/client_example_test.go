package agentproto_test

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/tether-dev/tether/agentproto"
)

// An agent's whole life: connect (retrying until NATS is there), register
// its subscriptions through the client so they survive reconnects and
// rebuilds, react to config changes, and drain on the way out so the
// supervisor hears a goodbye.
func ExampleConnect() {
	cfg := agentproto.DefaultConfig("a7")
	cfg.URLs = "nats://127.0.0.1:4222"
	cfg.Logger = zerolog.New(os.Stderr)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := agentproto.Connect(ctx, cfg)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()

	c.OnConfigChange(func(r agentproto.Resolved) error {
		fmt.Println("now running", r.Server, "revision", r.Revision)
		return nil // an error reports the revision as not applied
	})
	// Probed: the health loop proves this subscription delivers.
	if _, err := c.Subscribe("tasks.a7", func(m *nats.Msg) { fmt.Println(string(m.Data)) }, agentproto.WithProbe("")); err != nil {
		fmt.Println(err)
		return
	}
	// Tool calls count into the heartbeat through CallStats.
	policy := agentproto.DefaultPolicy()
	policy.Stats = c.CallStats()

	dctx, dcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer dcancel()
	_ = c.Drain(dctx)
}

// Sizing the reconnect window: a fleet of 10,000 agents on one server that
// should see at most 2,500 connects per second when it returns spreads its
// reconnects over 4 s; each agent tries once per window at its own phase,
// so none waits longer than that after the server is back.
func ExampleReconnectWindow() {
	w := agentproto.ReconnectWindow(10000, 2500, agentproto.DefaultReconnectWait, agentproto.DefaultMaxReconnectWait)
	at := time.Unix(1_700_000_000, 0) // the server is back
	d := agentproto.SlotDelay(at, w, agentproto.ReconnectPhase("a7", w))
	fmt.Println(w, d > 0 && d <= w)
	// Output: 4s true
}
