package test

// Issue 15, no silent task loss: tasks consumed through agentproto's
// Consume survive black holes, rebuilds, agent restarts and server
// restarts with none lost; a wedged consumer is found by the supervisor
// as a queue zombie and recovered.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/agentproto"
	agentmcp "github.com/tether-dev/tether/agentproto/mcp"
	"github.com/tether-dev/tether/internal/demoagent"
	"github.com/tether-dev/tether/internal/natstest"
	"github.com/tether-dev/tether/internal/suptest"
	"github.com/tether-dev/tether/kvconfig"
	"github.com/tether-dev/tether/supervisor/fleet"
)

// taskQueue creates stream TASKS_<agent> (work queue on tasks.<agent>) and
// its durable pull consumer <agent>, as an operator would.
func taskQueue(t testing.TB, js jetstream.JetStream, agent string, ackWait time.Duration) jetstream.Consumer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "TASKS_" + agent, Subjects: []string{"tasks." + agent},
		Retention: jetstream.WorkQueuePolicy, Duplicates: time.Minute}); err != nil {
		t.Fatal(err)
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, "TASKS_"+agent, jetstream.ConsumerConfig{Durable: agent,
		AckPolicy: jetstream.AckExplicitPolicy, AckWait: ackWait, MaxDeliver: -1, MaxAckPending: 1000})
	if err != nil {
		t.Fatal(err)
	}
	return cons
}

// queueEmpty reports nil once the durable has acknowledged every message
// of its stream: ack floor at the stream's last sequence, nothing pending
// or unacknowledged (the pending count alone lags a publish, and a naked
// task waiting for redelivery is neither).
func queueEmpty(js jetstream.JetStream, cons jetstream.Consumer) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	ci, err := cons.Info(ctx)
	if err != nil {
		return err
	}
	st, err := js.Stream(ctx, ci.Stream)
	if err != nil {
		return err
	}
	si, err := st.Info(ctx)
	if err != nil {
		return err
	}
	if ci.NumPending != 0 || ci.NumAckPending != 0 || ci.AckFloor.Stream < si.State.LastSeq {
		return fmt.Errorf("pending %d, unacknowledged %d, ack floor %d of %d", ci.NumPending, ci.NumAckPending, ci.AckFloor.Stream, si.State.LastSeq)
	}
	return nil
}

// ledger counts handlings per idempotency key.
type ledger struct {
	mu   sync.Mutex
	n    map[string]int
	done atomic.Int64 // distinct keys handled
}

func (l *ledger) handle(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n == nil {
		l.n = map[string]int{}
	}
	if l.n[key]++; l.n[key] == 1 {
		l.done.Add(1)
	}
}

func (l *ledger) duplicates() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	d := 0
	for _, n := range l.n {
		d += n - 1
	}
	return d
}

// TestTenThousandTasksThroughFaults publishes 10,000 tasks while the
// agent consumes them, each by a call of its MCP server's echo tool, and,
// one after another, is black-holed (recovered by its watchdog or
// nats.go), told to reconnect (a rebuild that restarts its consumer),
// restarted as a new process, has its MCP server restarted mid-calls, and
// sees its NATS server restart. Every task must be processed: 0 lost;
// duplicates (at least once) are counted by idempotency key — a key
// processed again under the same stream sequence is a redelivery — and
// bounded by what the faults could force (the tasks in flight or
// buffered at each fault).
func TestTenThousandTasksThroughFaults(t *testing.T) {
	const tasks, maxInFlight = 10_000, 16
	srv := natstest.RunServer(t)
	proxy := natstest.NewProxy(t, srv.URL()[len("nats://"):])
	pub := observer(t, srv.URL())
	js, _ := jetstream.New(pub, jetstream.WithPublishAsyncMaxPending(512))
	cons := taskQueue(t, js, "w10k", 500*time.Millisecond)
	// Each task is one call of the agent's MCP server's echo tool; a task
	// counts as processed when the call returned its text.
	echo, err := demoagent.NewEchoServer("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(echo.Stop)
	caller, err := agentmcp.NewToolCaller(agentproto.Resolved{Server: "echo", Key: "global.echo", Revision: 1,
		Config: &kvconfig.ServerConfig{Transport: kvconfig.TransportHTTP, URL: echo.URL()}},
		agentmcp.Options{Policy: &agentproto.Policy{MaxAttempts: 3, BaseDelay: 5 * time.Millisecond, MaxDelay: 20 * time.Millisecond},
			Logger: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.ErrorLevel)})
	if err != nil {
		t.Fatal(err)
	}
	defer caller.Close()
	var l, deliveries ledger // by idempotency key; by key and stream sequence
	var callFailures atomic.Int64
	handler := func(ctx context.Context, tk *agentproto.Task) error {
		key := string(tk.Data)
		res, err := caller.Call(ctx, "echo", map[string]any{"text": key})
		if err == nil && (res.IsError || len(res.Content) == 0) {
			err = fmt.Errorf("echo of %s: tool error", key)
		}
		if err != nil {
			callFailures.Add(1)
			return err // naked: redelivered
		}
		l.handle(key)
		deliveries.handle(key + "@" + strconv.FormatUint(tk.StreamSeq, 10))
		return nil
	}
	cfg := faultConfig(t, proxy.URL(), "w10k")
	start := func() (*agentproto.Client, *agentproto.Consumer) {
		c := startAgent(t, cfg)
		k, err := c.Consume("TASKS_w10k", "w10k", handler, agentproto.WithMaxInFlight(maxInFlight),
			agentproto.WithPullExpiry(500*time.Millisecond), agentproto.WithNakBackoff(0, 0))
		if err != nil {
			t.Fatal(err)
		}
		return c, k
	}
	c, k := start()
	began := time.Now()
	pubDone := make(chan error, 1)
	go func() { pubDone <- publishAll(js, "w10k", tasks) }()
	reached := func(n int64) {
		t.Helper()
		natstest.CheckFor(t, 15*time.Second, time.Millisecond, func() error {
			if d := l.done.Load(); d < n {
				return fmt.Errorf("%d of %d handled", d, n)
			}
			return nil
		})
	}
	reached(tasks / 5) // 1: black hole until the agent notices and recovers
	proxy.BlackHole()
	natstest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if st := c.Stats(); st.HealthFailures == 0 && st.Disconnects == 0 && st.StaleLinks == 0 {
			return errors.New("black hole not noticed yet")
		}
		return nil
	})
	proxy.Pass()
	// The watchdog's health rounds or nats.go's pings find it first: a
	// rebuild or a reconnect, either restores the consumer.
	natstest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if st := c.Stats(); st.Rebuilds == 0 && st.Reconnects == 0 {
			return errors.New("not recovered yet")
		}
		return nil
	})
	reached(2 * tasks / 5) // 2: a reconnect command restarts the consumer and rebuilds
	before := c.Stats().Rebuilds
	cmd, _ := json.Marshal(agentproto.Command{ID: "r-10k", Type: agentproto.CmdReconnect, Reason: "test"})
	if err := pub.Publish(subj.Command("w10k"), cmd); err != nil {
		t.Fatal(err)
	}
	natstest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if c.Stats().Rebuilds == before {
			return errors.New("not rebuilt after the reconnect command")
		}
		return nil
	})
	reached(3 * tasks / 5) // 3: the agent process restarts
	naked, rebuilds := k.Stats().Naked, c.Stats().Rebuilds
	c.Close()
	c, k = start()
	reached(7 * tasks / 10) // 4: the agent's MCP server restarts mid-calls
	echo.Stop()
	natstest.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		if callFailures.Load() == 0 {
			return errors.New("no call has failed yet")
		}
		return nil
	})
	if err := echo.Start(); err != nil {
		t.Fatal(err)
	}
	reached(4 * tasks / 5) // 5: the NATS server restarts
	srv.RestartAwait(pub)
	if err := <-pubDone; err != nil {
		t.Fatal(err)
	}
	natstest.CheckFor(t, 15*time.Second, 5*time.Millisecond, func() error {
		if d := l.done.Load(); d < tasks {
			return fmt.Errorf("%d of %d handled", d, tasks)
		}
		return queueEmpty(js, cons)
	})
	took := time.Since(began)
	naked += k.Stats().Naked
	// A duplicate is a redelivery (the same stream sequence handled again);
	// a task stored twice (a publish retried across the server restart
	// whose first copy was already consumed: a work queue forgets the
	// message ids it deleted) is the publisher's, counted apart.
	lost, dups := tasks-int(l.done.Load()), deliveries.duplicates()
	republished := int(deliveries.done.Load() - l.done.Load())
	t.Logf("%d tasks through 5 faults in %v: lost %d, duplicates %d (redeliveries; naked by restarts %d), stored twice by the publisher %d, agent rebuilds %d, MCP calls failed during its restart %d",
		tasks, took.Round(time.Millisecond), lost, dups, naked, republished, rebuilds, callFailures.Load())
	if lost != 0 {
		t.Fatalf("%d tasks lost", lost)
	}
	// Each fault can force a redelivery of at most what was in flight
	// (maxInFlight running, maxInFlight delivered and waiting for a slot).
	if bound := 5 * 2 * maxInFlight; dups > bound {
		t.Fatalf("%d duplicates, over the %d the faults could force", dups, bound)
	}
}

// publishAll publishes task-0..task-n-1 with their key as message id (a
// publish retried across the server restart is deduplicated), in
// batches awaited for acks.
func publishAll(js jetstream.JetStream, agent string, n int) error {
	const batch = 250
	for from := 0; from < n; from += batch {
		for try := 0; ; try++ {
			err := publishBatch(js, agent, from, min(from+batch, n))
			if err == nil {
				break
			}
			if try == 200 {
				return fmt.Errorf("tasks %d..: %w", from, err)
			}
			time.Sleep(20 * time.Millisecond) // the server is restarting: bounded retries
		}
	}
	return nil
}

func publishBatch(js jetstream.JetStream, agent string, from, to int) error {
	futures := make([]jetstream.PubAckFuture, 0, to-from)
	for i := from; i < to; i++ {
		key := "task-" + strconv.Itoa(i)
		f, err := js.PublishAsync("tasks."+agent, []byte(key), jetstream.WithMsgID(key))
		if err != nil {
			return err
		}
		futures = append(futures, f)
	}
	timeout := time.After(5 * time.Second)
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return err
		case <-timeout:
			return errors.New("no publish ack within 5s")
		}
	}
	return nil
}

// TestQueueZombieDetectedAndRecovered: an agent whose handler wedges keeps
// heartbeating and answering probes; its queue piles up. The supervisor
// reads the declared consumer's info, finds the ack floor still for
// QueueZombieAfter intervals, shows the agent as a queue zombie with its
// backlog, and sends a reconnect: the agent restarts its consumer, the
// wedged task is redelivered and the backlog drains. Before the wedge, a
// backlog that drains slowly (one task per half interval) is never
// flagged.
func TestQueueZombieDetectedAndRecovered(t *testing.T) {
	srv := natstest.RunServer(t)
	cfg := suptest.Config(t, srv.URL())
	suptest.FastFleet(&cfg)
	s := suptest.Start(t, cfg)
	suptest.RegisterConsumers(t, s, "worker", "qz1", "TASKS_qz1:qz1")
	interval, after := cfg.Fleet.HeartbeatInterval, cfg.Fleet.QueueZombieAfter
	js, _ := jetstream.New(observer(t, srv.URL()))
	cons := taskQueue(t, js, "qz1", 30*time.Second)
	var wedgedAt atomic.Int64
	var l ledger
	c := startAgent(t, faultConfig(t, srv.URL(), "qz1"))
	k, err := c.Consume("TASKS_qz1", "qz1", func(ctx context.Context, tk *agentproto.Task) error {
		key := string(tk.Data)
		switch {
		case key == "wedge" && tk.Delivered == 1:
			wedgedAt.Store(time.Now().UnixNano())
			<-ctx.Done() // wedged until recovery restarts the consumer
			return ctx.Err()
		case key[0] == 's':
			time.Sleep(interval / 2) // slow, but progressing
		}
		l.handle(key)
		return nil
	}, agentproto.WithMaxInFlight(1), agentproto.WithPullExpiry(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	// Bound, declared, and read once by the supervisor before any task.
	natstest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if st, ok := s.Fleet().Agent("qz1"); k.Stats().Binds == 0 || !ok || len(st.Consumers) != 1 || st.Consumers[0].State != fleet.QueueIdle {
			return fmt.Errorf("qz1 not bound and read yet: %+v", st.Consumers)
		}
		return nil
	})
	slow := make([]string, 12) // six intervals of backlog, with progress
	for i := range slow {
		slow[i] = "s" + strconv.Itoa(i)
	}
	if err := publishKeys(js, "qz1", slow...); err != nil {
		t.Fatal(err)
	}
	natstest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if st, ok := s.Fleet().Agent("qz1"); !ok || st.State != fleet.StateHealthy || st.QueueZombie {
			return fmt.Errorf("qz1 while slow: %+v", st)
		}
		return queueEmpty(js, cons)
	})
	if n := suptest.Value(suptest.Gather(s), "tether_fleet_transitions_total", map[string]string{"to": "zombie"}); n != 0 {
		st, _ := s.Fleet().Agent("qz1")
		t.Fatalf("a slowly draining queue was flagged %v times: %+v", n, st)
	}
	backlog := []string{"wedge"}
	for i := range 20 {
		backlog = append(backlog, "b"+strconv.Itoa(i))
	}
	published := time.Now()
	if err := publishKeys(js, "qz1", backlog...); err != nil {
		t.Fatal(err)
	}
	var zst fleet.AgentStatus
	natstest.CheckFor(t, 10*time.Second, time.Millisecond, func() error {
		st, _ := s.Fleet().Agent("qz1")
		if !st.QueueZombie || st.State != fleet.StateZombie {
			return fmt.Errorf("qz1: %s, queue zombie %v", st.State, st.QueueZombie)
		}
		zst = st
		return nil
	})
	detected := float64(time.Now().UnixNano()-wedgedAt.Load()) / float64(interval)
	t.Logf("queue zombie detected %.2f intervals after the handler wedged, %.2f after the backlog was published (QueueZombieAfter %d, interval %v); status: backlog %d, %+v",
		detected, float64(time.Since(published))/float64(interval), after, interval, zst.Backlog, zst.Consumers)
	// As last read: the ack floor still at the last task before the wedge;
	// the backlog is what waits or is unacknowledged (recovery may have
	// begun by the time the status is read).
	if q := zst.Consumers; len(q) != 1 || q[0].State != fleet.QueueStalled || q[0].AckFloorSeq != uint64(len(slow)) ||
		zst.Backlog == 0 || zst.Backlog != q[0].NumPending+q[0].NumAckPending || q[0].NumAckPending == 0 {
		t.Errorf("status of the queue zombie: backlog %d, consumers %+v", zst.Backlog, zst.Consumers)
	}
	// Never before the rule allows: the backlog appeared between two reads
	// (at most interval+CheckInterval apart), the earlier of which counts
	// as the last progress. The exact threshold is asserted under an
	// injected clock (fleet's TestQueueZombieAtExactIntervals); here the
	// wall-clock figure is measured and logged.
	readPeriod := float64(interval+cfg.Fleet.CheckInterval) / float64(interval)
	if lo := float64(after) - readPeriod; detected < lo {
		t.Errorf("detected after %.2f intervals, before the %.2f the rule allows", detected, lo)
	}
	natstest.CheckFor(t, 5*time.Second, time.Millisecond, func() error { // the gauges follow within a round
		if v := suptest.Value(suptest.Gather(s), "tether_queue_zombies", nil); v != 1 {
			return fmt.Errorf("tether_queue_zombies %v, want 1", v)
		}
		return nil
	})
	natstest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if err := queueEmpty(js, cons); err != nil {
			return err
		}
		if st, _ := s.Fleet().Agent("qz1"); st.State != fleet.StateHealthy || st.QueueZombie || st.Backlog != 0 {
			return fmt.Errorf("qz1 after recovery: %s, queue zombie %v, backlog %d", st.State, st.QueueZombie, st.Backlog)
		}
		return nil
	})
	if l.done.Load() != int64(len(slow)+len(backlog)) {
		t.Fatalf("%d of %d tasks handled", l.done.Load(), len(slow)+len(backlog))
	}
	// One reconnect recovers it; a machine starved for longer than the
	// recovery takes (a few intervals of 50 ms) may see a second episode,
	// but never more than the restart intensity allows: it ended healthy,
	// not quarantined.
	v := suptest.Value(suptest.Gather(s), "tether_commands_sent_total", map[string]string{"type": "reconnect", "route": "subject"})
	if v < 1 || v > float64(cfg.Fleet.QuarantineAfter) {
		t.Errorf("%v reconnect commands sent, want 1..%d", v, cfg.Fleet.QuarantineAfter)
	}
	t.Logf("%v reconnect command(s) sent", v)
	natstest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if v := suptest.Value(suptest.Gather(s), "tether_queue_zombies", nil); v != 0 {
			return fmt.Errorf("tether_queue_zombies %v", v)
		}
		return nil
	})
}

func publishKeys(js jetstream.JetStream, agent string, keys ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, k := range keys {
		if _, err := js.Publish(ctx, "tasks."+agent, []byte(k)); err != nil {
			return err
		}
	}
	return nil
}

// TestConsumerGrantIsExactlyOneDurable: 'tetherctl agent add g1 --consumer
// TASKS_g1:g1' lets g1 consume its durable through Consume (and the
// supervisor read its info with its own permissions), and nothing else of
// JetStream: another agent's durable (pull, info, ack), stream and
// consumer create, delete, purge, message get, account info are refused.
func TestConsumerGrantIsExactlyOneDurable(t *testing.T) {
	dir := t.TempDir()
	cfg := suptest.Embedded(t, dir)
	suptest.FastFleet(&cfg)
	s := suptest.Start(t, cfg)
	url := s.ClientURL()
	creds := filepath.Join(t.TempDir(), "g1.creds")
	if code, out := tetherctlRun(t, "--nats-url", url, "--data-dir", dir, "agent", "add", "g1", "--role", "worker",
		"--consumer", "TASKS_g1:g1", "--out", creds); code != 0 || !strings.Contains(out, "may consume durable g1 of stream TASKS_g1") {
		t.Fatalf("agent add: exit %d: %s", code, out)
	}
	for _, bad := range []string{"TASKS.g1:g1", "TASKS_g1", "TASKS_g1:>", ":g1", "TASKS_g1:g 1"} {
		if code, out := tetherctlRun(t, "--nats-url", url, "--data-dir", dir, "agent", "add", "g9", "--role", "worker",
			"--consumer", bad, "--out", filepath.Join(t.TempDir(), "g9.creds")); code == 0 {
			t.Errorf("--consumer %q accepted: %s", bad, out)
		}
	}
	js, _ := jetstream.New(operatorConn(t, url, dir))
	taskQueue(t, js, "g1", 5*time.Second)
	other := taskQueue(t, js, "g2", 5*time.Second)
	if err := publishKeys(js, "g2", "not-for-g1"); err != nil {
		t.Fatal(err)
	}
	ac := faultConfig(t, url, "g1")
	ac.CredsFile = creds
	c := startAgent(t, ac)
	got := make(chan string, 4)
	if _, err := c.Consume("TASKS_g1", "g1", func(_ context.Context, tk *agentproto.Task) error {
		got <- string(tk.Data)
		return nil
	}, agentproto.WithPullExpiry(500*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if err := publishKeys(js, "g1", "for-g1"); err != nil {
		t.Fatal(err)
	}
	select {
	case k := <-got:
		if k != "for-g1" {
			t.Fatalf("g1 handled %q", k)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("g1 never handled its task")
	}
	natstest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		st, _ := s.Fleet().Agent("g1")
		if len(st.Consumers) != 1 || st.Consumers[0].State != fleet.QueueIdle || st.Consumers[0].Error != "" {
			return fmt.Errorf("the supervisor cannot read g1's consumer: %+v", st.Consumers)
		}
		return nil
	})

	var mu sync.Mutex
	var denied []string
	raw := natstest.Connect(t, url, nats.UserCredentials(creds), nats.CustomInboxPrefix("_INBOX_g1"),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			mu.Lock()
			denied = append(denied, err.Error())
			mu.Unlock()
		}))
	attempts := []string{
		"$JS.API.CONSUMER.MSG.NEXT.TASKS_g2.g2", "$JS.API.CONSUMER.INFO.TASKS_g2.g2", "$JS.ACK.TASKS_g2.g2.1.1.1.1.0",
		"$JS.API.STREAM.CREATE.EVIL", "$JS.API.STREAM.DELETE.TASKS_g1", "$JS.API.STREAM.PURGE.TASKS_g1",
		"$JS.API.STREAM.UPDATE.TASKS_g1", "$JS.API.STREAM.MSG.GET.TASKS_g1", "$JS.API.STREAM.INFO.TASKS_g1",
		"$JS.API.CONSUMER.DELETE.TASKS_g1.g1", "$JS.API.CONSUMER.CREATE.TASKS_g1.x", "$JS.API.CONSUMER.DURABLE.CREATE.TASKS_g1.x",
		"$JS.API.CONSUMER.CREATE.TASKS_g1.g1", "$JS.API.CONSUMER.LIST.TASKS_g1", "$JS.API.INFO", "$JS.API.DIRECT.GET.TASKS_g1",
		"$JS.API.CONSUMER.MSG.NEXT.TASKS_g1.other", "tasks.g2",
	}
	for _, subject := range attempts {
		if err := raw.PublishRequest(subject, "_INBOX_g1.x", []byte(`{"batch":1}`)); err != nil {
			t.Fatal(err)
		}
	}
	natstest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		mu.Lock()
		defer mu.Unlock()
		for _, subject := range attempts {
			if !slices.ContainsFunc(denied, func(e string) bool { return strings.Contains(e, `"`+subject+`"`) }) {
				return fmt.Errorf("no permission violation for %s (of %d)", subject, len(denied))
			}
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if ci, err := other.Info(ctx); err != nil || ci.NumPending != 1 {
		t.Fatalf("g2's task: %+v %v", ci, err)
	}
	if _, err := js.Stream(ctx, "TASKS_g1"); err != nil {
		t.Fatalf("TASKS_g1: %v", err)
	}
	if v := suptest.Value(suptest.Gather(s), "tether_nats_permission_errors_total", nil); v != 0 {
		t.Fatalf("NATS refused %v of the supervisor's operations", v)
	}
	t.Logf("g1 consumed its own durable; %d JetStream operations outside its grant refused", len(attempts))
}
