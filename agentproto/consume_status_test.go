package agentproto

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/tether-dev/tether/internal/natstest"
)

// A stream that captures a subject the agent also subscribes to stores
// that subscription's self-probes: Consume never hands one to the handler
// as a task; it acks it (the work queue drops it) and counts it.
func TestConsumeDropsCapturedSelfProbes(t *testing.T) {
	srv := natstest.RunServer(t)
	js, cons := taskStream(t, srv, "p1", 5*time.Second)
	c := connect(t, testConfig(t, srv.URL(), "p1"))
	var subGot, probes atomic.Int64
	if _, err := c.Subscribe("tasks.p1", func(*nats.Msg) { subGot.Add(1) }); err != nil {
		t.Fatal(err)
	}
	var s seen
	k, err := c.Consume("TASKS_p1", "p1", func(_ context.Context, tk *Task) error {
		if tk.Header.Get(HeaderProbe) != "" || len(tk.Data) == 0 {
			probes.Add(1)
		}
		s.add(string(tk.Data))
		return nil
	}, WithPullExpiry(500*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	natstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if d := k.Stats().Dropped; d < 3 {
			return fmt.Errorf("%d self-probes dropped, want 3", d)
		}
		return nil
	})
	publishTasks(t, js, "p1", "t1", "t2")
	drained(t, js, cons, 5*time.Second)
	if n := probes.Load(); n != 0 {
		t.Fatalf("the handler was handed %d self-probes as tasks", n)
	}
	if s.get("t1") != 1 || s.get("t2") != 1 {
		t.Fatalf("tasks handled t1=%d t2=%d, want 1 each", s.get("t1"), s.get("t2"))
	}
	if st := k.Stats(); st.Handled != 2 || st.Acked != 2 {
		t.Fatalf("stats %+v: want 2 handled and acked", st)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, "TASKS_p1")
	if err != nil {
		t.Fatal(err)
	}
	natstest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		si, err := st.Info(ctx)
		if err != nil {
			return err
		}
		// A probe published after the last ack may be stored and not yet
		// pulled: at most one round's worth are left.
		if si.State.Msgs > 2 {
			return fmt.Errorf("work queue holds %d messages: probes not acked", si.State.Msgs)
		}
		return nil
	})
	if subGot.Load() < 2 {
		t.Fatalf("the subscription got %d tasks, want 2", subGot.Load())
	}
}

// A pull answered 503 (no responders: the durable deleted under a running
// Consume) ends the session and binds again with backoff: the agent's
// connection publishes a bounded number of messages (pulls, binds,
// heartbeats) over 2 s instead of a hot loop of pulls; once the durable is
// back, consumption resumes.
func TestConsumePullNoRespondersBacksOff(t *testing.T) {
	srv := natstest.RunServer(t)
	js, _ := taskStream(t, srv, "g1", 5*time.Second)
	cfg := testConfig(t, srv.URL(), "g1")
	cfg.ReconnectWait, cfg.MaxReconnectWait = 50*time.Millisecond, 400*time.Millisecond
	cfg.HeartbeatInterval = 250 * time.Millisecond
	c := connect(t, cfg)
	var s seen
	k, err := c.Consume("TASKS_g1", "g1", func(_ context.Context, tk *Task) error {
		s.add(string(tk.Data))
		return nil
	}, WithPullExpiry(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	natstest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if k.Stats().Binds == 0 {
			return errors.New("not bound")
		}
		return nil
	})
	cid, err := c.Conn().GetClientID()
	if err != nil {
		t.Fatal(err)
	}
	sent := func() int64 {
		cz, err := srv.NATS().Connz(&server.ConnzOptions{CID: cid})
		if err != nil || len(cz.Conns) != 1 {
			t.Fatalf("connz of the agent: %v %+v", err, cz)
		}
		return cz.Conns[0].InMsgs
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := js.DeleteConsumer(ctx, "TASKS_g1", "g1"); err != nil {
		t.Fatal(err)
	}
	before, start := sent(), time.Now()
	natstest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if time.Since(start) < 2*time.Second {
			return errors.New("measuring")
		}
		return nil
	})
	// Backoff 50 ms doubling to 400 ms: about 8 binds and pulls in 2 s,
	// plus 8 heartbeats and a few self-probes.
	if n := sent() - before; n > 40 {
		t.Fatalf("the agent published %d messages in 2 s without a durable: pulls spin", n)
	}
	// Usually the parked pull ends with 409 (consumer deleted) and the next
	// one is answered 503; a pull in flight as the durable goes can instead
	// be dropped by the server unanswered, and that session ends as a
	// failed pull (silence): either way it binds again with backoff.
	if st := k.Stats(); st.PullsGone+st.PullFailures == 0 {
		t.Fatalf("stats %+v: want the session ended by a 503 or a failed pull", st)
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, "TASKS_g1", jetstream.ConsumerConfig{Durable: "g1", AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatal(err)
	}
	publishTasks(t, js, "g1", "x")
	drained(t, js, cons, 5*time.Second)
	if s.get("x") != 1 {
		t.Fatalf("x handled %d times", s.get("x"))
	}
}

// A 503 ends the session's pulls without counting as hearing from the
// server; any other status is heard. A status is a Status header without
// an ack subject: a stored message with a Status header is a task.
func TestPullStateNoResponders(t *testing.T) {
	var p pullState
	p.requested(4)
	_, heard, _ := p.snapshot()
	p.arrived("100", "")
	if out, h, gone := p.snapshot(); out != 4 || !h.After(heard) || gone {
		t.Fatalf("after 100: %d %v %v", out, h, gone)
	}
	_, heard, _ = p.snapshot()
	p.arrived("503", "")
	if out, h, gone := p.snapshot(); out != 0 || !h.Equal(heard) || !gone {
		t.Fatalf("after 503: outstanding %d, heard moved %v, gone %v", out, !h.Equal(heard), gone)
	}
	for _, tc := range []struct {
		reply, status string
		want          bool
	}{
		{"", "100", true}, {"_INBOX_a.x", "503", true}, {"$JS.ACK.S.D.1.2.3.4.5", "503", false}, {"", "", false},
	} {
		m := &nats.Msg{Reply: tc.reply, Header: nats.Header{}}
		if tc.status != "" {
			m.Header.Set("Status", tc.status)
		}
		if got := isStatus(m); got != tc.want {
			t.Errorf("isStatus(reply %q, Status %q) = %v", tc.reply, tc.status, got)
		}
	}
}
