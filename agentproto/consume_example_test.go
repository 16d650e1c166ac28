package agentproto_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tether-dev/tether/agentproto"
)

// An agent works through its task queue: the durable tasks_a7 of stream
// TASKS_a7 exists (an operator made it, 'tetherctl agent add a7 --consumer
// TASKS_a7:a7' granted it); Consume binds to it again after every rebuild,
// acks a task when the handler returns nil, naks it with backoff on an
// error and terminates it on a permanent one.
func ExampleClient_Consume() {
	cfg := agentproto.DefaultConfig("a7")
	cfg.URLs = "nats://127.0.0.1:4222"
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := agentproto.Connect(ctx, cfg)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()
	done := map[uint64]bool{} // idempotency: delivery is at least once
	k, err := c.Consume("TASKS_a7", "a7", func(ctx context.Context, t *agentproto.Task) error {
		if done[t.StreamSeq] {
			return nil // a redelivery of a task already done
		}
		if len(t.Data) == 0 {
			return agentproto.MarkPermanent(errors.New("empty task")) // +TERM: never redelivered
		}
		fmt.Printf("task %d: %s\n", t.StreamSeq, t.Data)
		done[t.StreamSeq] = true
		return nil // +ACK
	}, agentproto.WithMaxInFlight(1), agentproto.WithHandlerTimeout(time.Minute))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer k.Stop()
}
