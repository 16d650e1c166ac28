package agentproto

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/tether-dev/tether/internal/natstest"
)

func TestNakDelay(t *testing.T) {
	for _, tc := range []struct {
		base, max time.Duration
		delivered uint64
		want      time.Duration
	}{
		{0, time.Minute, 5, 0},
		{time.Second, time.Minute, 0, time.Second},
		{time.Second, time.Minute, 1, time.Second},
		{time.Second, time.Minute, 2, 2 * time.Second},
		{time.Second, time.Minute, 4, 8 * time.Second},
		{time.Second, time.Minute, 7, time.Minute},
		{time.Second, time.Minute, 1 << 60, time.Minute},
		{time.Second, time.Second, 9, time.Second},
	} {
		if got := nakDelay(tc.base, tc.max, tc.delivered); got != tc.want {
			t.Errorf("nakDelay(%v, %v, %d) = %v, want %v", tc.base, tc.max, tc.delivered, got, tc.want)
		}
	}
}

func TestPullEnded(t *testing.T) {
	for _, tc := range []struct {
		out           int
		code, pending string
		want          int
	}{
		{16, "100", "", 16},
		{16, "408", "16", 0},
		{24, "408", "8", 16},
		{4, "408", "9", 0},
		{16, "409", "", 0},
		{16, "408", "x", 0},
		{16, "404", "3", 0},
	} {
		if got := pullEnded(tc.out, tc.code, tc.pending); got != tc.want {
			t.Errorf("pullEnded(%d, %s, %q) = %d, want %d", tc.out, tc.code, tc.pending, got, tc.want)
		}
	}
}

func TestParseAckReply(t *testing.T) {
	tk, ok := parseAckReply("$JS.ACK.TASKS_a1.a1.2.17.9.1700000000000000000.5")
	if !ok || tk.Stream != "TASKS_a1" || tk.Durable != "a1" || tk.Delivered != 2 || tk.StreamSeq != 17 ||
		tk.ConsumerSeq != 9 || tk.Pending != 5 || tk.Time.UnixNano() != 1700000000000000000 {
		t.Fatalf("v1 form: %+v %v", tk, ok)
	}
	tk, ok = parseAckReply("$JS.ACK.dom.ACCHASH.S.D.1.3.4.5.6.rand")
	if !ok || tk.Stream != "S" || tk.Durable != "D" || tk.StreamSeq != 3 || tk.Pending != 6 {
		t.Fatalf("v2 form: %+v %v", tk, ok)
	}
	for _, bad := range []string{"", "_INBOX.x", "$JS.ACK.S.D.1.x.3.4.5", "$JS.ACK..D.1.2.3.4.5"} {
		if _, ok := parseAckReply(bad); ok {
			t.Errorf("parseAckReply(%q) accepted", bad)
		}
	}
}

// taskStream creates stream TASKS_<agent> on tasks.<agent> and the durable
// pull consumer <agent> with explicit acks and the given ack wait.
func taskStream(t testing.TB, srv *natstest.Server, agent string, ackWait time.Duration) (jetstream.JetStream, jetstream.Consumer) {
	t.Helper()
	nc := srv.Connect()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "TASKS_" + agent, Subjects: []string{"tasks." + agent},
		Retention: jetstream.WorkQueuePolicy}); err != nil {
		t.Fatal(err)
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, "TASKS_"+agent, jetstream.ConsumerConfig{Durable: agent,
		AckPolicy: jetstream.AckExplicitPolicy, AckWait: ackWait, MaxDeliver: -1})
	if err != nil {
		t.Fatal(err)
	}
	return js, cons
}

func publishTasks(t testing.TB, js jetstream.JetStream, agent string, bodies ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, b := range bodies {
		if _, err := js.Publish(ctx, "tasks."+agent, []byte(b)); err != nil {
			t.Fatal(err)
		}
	}
}

// drained waits until the consumer has nothing pending or unacknowledged.
func drained(t testing.TB, js jetstream.JetStream, cons jetstream.Consumer, within time.Duration) {
	t.Helper()
	natstest.CheckFor(t, within, 10*time.Millisecond, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		return ackedAll(ctx, js, cons)
	})
}

// ackedAll reports nil once cons has acknowledged every message of its
// stream: its ack floor is the stream's last sequence and nothing is
// pending or unacknowledged. (Its pending count alone lags a publish, and
// a naked task waiting for redelivery is neither pending nor
// unacknowledged.)
func ackedAll(ctx context.Context, js jetstream.JetStream, cons jetstream.Consumer) error {
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
		return fmt.Errorf("pending %d, ack pending %d, ack floor %d of %d", ci.NumPending, ci.NumAckPending, ci.AckFloor.Stream, si.State.LastSeq)
	}
	return nil
}

// seen counts deliveries per body.
type seen struct {
	mu sync.Mutex
	n  map[string]int
}

func (s *seen) add(b string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.n == nil {
		s.n = map[string]int{}
	}
	s.n[b]++
	return s.n[b]
}

func (s *seen) get(b string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n[b]
}

// Each outcome: nil acks; an error naks and the task comes back; a
// permanent error terms it (delivered once, never again); a panic is
// recovered and naked.
func TestConsumeOutcomes(t *testing.T) {
	srv := natstest.RunServer(t)
	js, cons := taskStream(t, srv, "a1", 5*time.Second)
	c := connect(t, testConfig(t, srv.URL(), "a1"))
	var s seen
	k, err := c.Consume("TASKS_a1", "a1", func(_ context.Context, tk *Task) error {
		b := string(tk.Data)
		n := s.add(b)
		switch {
		case b == "fail" && n == 1:
			return errors.New("transient trouble")
		case b == "perm":
			return MarkPermanent(errors.New("bad task"))
		case b == "panic" && n == 1:
			panic("boom")
		}
		return nil
	}, WithNakBackoff(10*time.Millisecond, 50*time.Millisecond), WithPullExpiry(500*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	publishTasks(t, js, "a1", "ok", "fail", "perm", "panic")
	drained(t, js, cons, 5*time.Second)
	for b, want := range map[string]int{"ok": 1, "fail": 2, "perm": 1, "panic": 2} {
		if got := s.get(b); got != want {
			t.Errorf("%s handled %d times, want %d", b, got, want)
		}
	}
	st := k.Stats()
	if st.Acked != 3 || st.Naked != 2 || st.Termed != 1 || st.Panics != 1 || st.Handled != 6 || st.LastAck.IsZero() {
		t.Errorf("stats %+v", st)
	}
	k.Stop()
	k.Stop()
}

// A handler running for several ack waits is kept alive by in-progress
// acks: delivered exactly once.
func TestConsumeInProgressKeepsLongTask(t *testing.T) {
	srv := natstest.RunServer(t)
	js, cons := taskStream(t, srv, "a2", 150*time.Millisecond)
	c := connect(t, testConfig(t, srv.URL(), "a2"))
	var s seen
	if _, err := c.Consume("TASKS_a2", "a2", func(ctx context.Context, tk *Task) error {
		s.add(string(tk.Data))
		select {
		case <-time.After(700 * time.Millisecond): // almost five ack waits
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}, WithPullExpiry(500*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	publishTasks(t, js, "a2", "long")
	drained(t, js, cons, 5*time.Second)
	if n := s.get("long"); n != 1 {
		t.Fatalf("long task delivered %d times, want 1 (in-progress acks kept it)", n)
	}
}

// Past its deadline a handler's ctx ends with ErrHandlerDeadline and the
// task is naked and redelivered.
func TestConsumeHandlerDeadline(t *testing.T) {
	srv := natstest.RunServer(t)
	js, cons := taskStream(t, srv, "a3", 5*time.Second)
	c := connect(t, testConfig(t, srv.URL(), "a3"))
	var s seen
	var cause atomic.Value
	if _, err := c.Consume("TASKS_a3", "a3", func(ctx context.Context, tk *Task) error {
		if s.add(string(tk.Data)) == 1 {
			<-ctx.Done()
			cause.Store(context.Cause(ctx))
			return ctx.Err()
		}
		return nil
	}, WithHandlerTimeout(50*time.Millisecond), WithNakBackoff(0, 0), WithPullExpiry(500*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	publishTasks(t, js, "a3", "slow")
	drained(t, js, cons, 5*time.Second)
	if n := s.get("slow"); n != 2 {
		t.Errorf("delivered %d times, want 2", n)
	}
	if got, _ := cause.Load().(error); !errors.Is(got, ErrHandlerDeadline) {
		t.Errorf("cause %v, want ErrHandlerDeadline", got)
	}
}

// No more than WithMaxInFlight handlers run at once.
func TestConsumeBoundedInFlight(t *testing.T) {
	srv := natstest.RunServer(t)
	js, cons := taskStream(t, srv, "a4", 5*time.Second)
	c := connect(t, testConfig(t, srv.URL(), "a4"))
	var cur, peak atomic.Int64
	if _, err := c.Consume("TASKS_a4", "a4", func(context.Context, *Task) error {
		n := cur.Add(1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		time.Sleep(5 * time.Millisecond)
		cur.Add(-1)
		return nil
	}, WithMaxInFlight(3), WithPullExpiry(500*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	bodies := make([]string, 60)
	for i := range bodies {
		bodies[i] = strconv.Itoa(i)
	}
	publishTasks(t, js, "a4", bodies...)
	drained(t, js, cons, 10*time.Second)
	if p := peak.Load(); p < 2 || p > 3 {
		t.Fatalf("peak in flight %d, want 2..3", p)
	}
}

// After a rebuild (a new nats.Conn) the same durable is bound again and
// every task is handled; a task in flight across the rebuild is acked on
// the new connection.
func TestConsumeRestoredAfterRebuild(t *testing.T) {
	srv := natstest.RunServer(t)
	js, cons := taskStream(t, srv, "a5", 5*time.Second)
	c := connect(t, testConfig(t, srv.URL(), "a5"))
	var s seen
	release := make(chan struct{})
	k, err := c.Consume("TASKS_a5", "a5", func(ctx context.Context, tk *Task) error {
		s.add(string(tk.Data))
		if string(tk.Data) == "across" {
			<-release
		}
		return nil
	}, WithPullExpiry(500*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	publishTasks(t, js, "a5", "across")
	natstest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if s.get("across") == 0 {
			return errors.New("not delivered yet")
		}
		return nil
	})
	_, gen := c.conn()
	c.requestRebuild(gen, "test")
	natstest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if c.Stats().Rebuilds == 0 {
			return errors.New("not rebuilt yet")
		}
		return nil
	})
	close(release)
	publishTasks(t, js, "a5", "after")
	drained(t, js, cons, 5*time.Second)
	if s.get("across") != 1 || s.get("after") != 1 {
		ci, err := cons.Info(context.Background())
		t.Fatalf("across %d, after %d: want 1 each; consumer %+v %v", s.get("across"), s.get("after"), ci, err)
	}
	if k.Stats().Binds < 2 {
		t.Errorf("binds %d, want a second one after the rebuild", k.Stats().Binds)
	}
}

// A durable deleted under the consumer stops answering pulls: the
// consumer notices (its pulls hear nothing), binds again once it is back,
// and handles what was published meanwhile.
func TestConsumeRebindsWhenPullsStop(t *testing.T) {
	srv := natstest.RunServer(t)
	js, _ := taskStream(t, srv, "a6", 5*time.Second)
	c := connect(t, testConfig(t, srv.URL(), "a6"))
	var s seen
	k, err := c.Consume("TASKS_a6", "a6", func(_ context.Context, tk *Task) error {
		s.add(string(tk.Data))
		return nil
	}, WithPullExpiry(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	natstest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if k.Stats().Binds == 0 {
			return errors.New("not bound")
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := js.DeleteConsumer(ctx, "TASKS_a6", "a6"); err != nil {
		t.Fatal(err)
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, "TASKS_a6", jetstream.ConsumerConfig{Durable: "a6", AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatal(err)
	}
	publishTasks(t, js, "a6", "x")
	drained(t, js, cons, 5*time.Second)
	if s.get("x") != 1 {
		t.Fatalf("x handled %d times", s.get("x"))
	}
}

// A reconnect command restarts the consumer: a handler in flight is
// cancelled with ErrConsumerRestarted and its task redelivered.
func TestReconnectCommandRestartsConsumer(t *testing.T) {
	srv := natstest.RunServer(t)
	js, cons := taskStream(t, srv, "a7", 30*time.Second)
	sup := watchHeartbeats(t, srv, "a7")
	c := connect(t, testConfig(t, srv.URL(), "a7"))
	var s seen
	var cause atomic.Value
	if _, err := c.Consume("TASKS_a7", "a7", func(ctx context.Context, tk *Task) error {
		if s.add(string(tk.Data)) == 1 {
			<-ctx.Done() // wedged until the restart
			cause.Store(context.Cause(ctx))
			return ctx.Err()
		}
		return nil
	}, WithPullExpiry(500*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	publishTasks(t, js, "a7", "wedged")
	hb := sup.waitHB(t, 0, func(hb Heartbeat) bool { return len(hb.Consumers) == 1 && hb.Consumers[0].InFlight == 1 })
	if st := hb.Consumers[0]; st.Stream != "TASKS_a7" || st.Durable != "a7" || st.LastAckMSAgo != nil {
		t.Fatalf("declared %+v", st)
	}
	sup.send(t, "a7", Command{ID: "r1", Type: CmdReconnect, Reason: "queue zombie"})
	drained(t, js, cons, 5*time.Second)
	if got, _ := cause.Load().(error); !errors.Is(got, ErrConsumerRestarted) {
		t.Errorf("cause %v, want ErrConsumerRestarted", got)
	}
	hb = sup.waitHB(t, 0, func(hb Heartbeat) bool { return len(hb.Consumers) == 1 && hb.Consumers[0].Acked == 1 })
	if st := hb.Consumers[0]; st.Naked != 1 || st.Handled != 2 || st.LastAckMSAgo == nil {
		t.Errorf("declared after %+v", st)
	}
}

func TestConsumeRejectsBadInput(t *testing.T) {
	srv := natstest.RunServer(t)
	c := connect(t, testConfig(t, srv.URL(), "a8"))
	h := func(context.Context, *Task) error { return nil }
	for name, f := range map[string]func() error{
		"stream":   func() error { _, err := c.Consume("TASKS.a8", "a8", h); return err },
		"durable":  func() error { _, err := c.Consume("S", "", h); return err },
		"handler":  func() error { _, err := c.Consume("S", "D", nil); return err },
		"inflight": func() error { _, err := c.Consume("S", "D", h, WithMaxInFlight(0)); return err },
		"timeout":  func() error { _, err := c.Consume("S", "D", h, WithHandlerTimeout(0)); return err },
		"backoff":  func() error { _, err := c.Consume("S", "D", h, WithNakBackoff(time.Second, 0)); return err },
		"expiry":   func() error { _, err := c.Consume("S", "D", h, WithPullExpiry(time.Millisecond)); return err },
	} {
		if err := f(); !errors.Is(err, ErrInvalidConsumer) {
			t.Errorf("%s: %v, want ErrInvalidConsumer", name, err)
		}
	}
	k, err := c.Consume("S", "D", h)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Consume("S", "D", h); !errors.Is(err, ErrInvalidConsumer) {
		t.Errorf("second consumer of S/D: %v", err)
	}
	k.Stop()
}

// The self-probe of the consumer path: pulls that hear nothing from the
// server (here: the server refuses the agent's pull requests, while the
// connection and every subscription stay healthy) bind again, and after
// HealthFailures failed pulls in a row the connection is rebuilt; once
// pulls work again the waiting task is handled.
func TestConsumeRebuildsWhenPullsHearNothing(t *testing.T) {
	const next = "$JS.API.CONSUMER.MSG.NEXT.TASKS_a9.a9"
	users := func(deny bool) []*server.User {
		p := &server.Permissions{Publish: &server.SubjectPermission{Allow: []string{">"}},
			Subscribe: &server.SubjectPermission{Allow: []string{">"}}}
		if deny {
			p.Publish.Deny = []string{next}
		}
		return []*server.User{{Username: "agent", Password: "pw", Permissions: p}, {Username: "sup", Password: "pw"}}
	}
	var base server.Options
	srv := natstest.RunServer(t, natstest.WithOptions(func(o *server.Options) {
		o.Users = users(false)
		base = *o
	}))
	deny := func(d bool) {
		o := base
		o.Users = users(d)
		if err := srv.NATS().ReloadOptions(&o); err != nil {
			t.Fatal(err)
		}
	}
	opNC := natstest.Connect(t, srv.URL(), nats.UserInfo("sup", "pw"))
	js, _ := jetstream.New(opNC)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "TASKS_a9", Subjects: []string{"tasks.a9"}}); err != nil {
		t.Fatal(err)
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, "TASKS_a9", jetstream.ConsumerConfig{Durable: "a9", AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t, srv.URL(), "a9")
	cfg.User, cfg.Password = "agent", "pw"
	var reasons sync.Map
	cfg.OnEvent = func(e Event) {
		if e.Kind == EventRebuildStarted {
			reasons.Store(e.Reason, true)
		}
	}
	c := connect(t, cfg)
	var s seen
	k, err := c.Consume("TASKS_a9", "a9", func(_ context.Context, tk *Task) error {
		s.add(string(tk.Data))
		return nil
	}, WithPullExpiry(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	natstest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if k.Stats().Binds == 0 {
			return errors.New("not bound")
		}
		return nil
	})
	deny(true)
	natstest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if st := k.Stats(); st.PullFailures < uint64(c.cfg.HealthFailures) || c.Stats().Rebuilds == 0 {
			return fmt.Errorf("pull failures %d, rebuilds %d", st.PullFailures, c.Stats().Rebuilds)
		}
		return nil
	})
	if _, ok := reasons.Load("consumer TASKS_a9/a9: 3 pulls in a row heard nothing"); !ok {
		t.Errorf("no rebuild for the consumer's pulls; rebuild reasons: %v", func() (r []any) {
			reasons.Range(func(k, _ any) bool { r = append(r, k); return true })
			return r
		}())
	}
	publishTasks(t, js, "a9", "waiting")
	deny(false)
	drained(t, js, cons, 10*time.Second)
	if s.get("waiting") != 1 {
		t.Fatalf("waiting handled %d times", s.get("waiting"))
	}
}
