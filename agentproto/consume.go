package agentproto

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/internal/logsample"
	"github.com/tether-dev/tether/kvconfig"
)

// Errors of Consume.
var (
	// ErrInvalidConsumer reports a stream, durable, handler or option that
	// Consume cannot use.
	ErrInvalidConsumer = errors.New("agentproto: invalid consumer")
	// ErrConsumerRestarted is the cause of a handler context cancelled
	// because a supervisor reconnect command restarted the consumer.
	ErrConsumerRestarted = errors.New("agentproto: consumer restarted by a reconnect command")
	// ErrHandlerDeadline is the cause of a handler context whose
	// WithHandlerTimeout passed.
	ErrHandlerDeadline = errors.New("agentproto: task handler deadline passed")
	// ErrHandlerPanic wraps the value a panicking handler threw.
	ErrHandlerPanic = errors.New("agentproto: task handler panicked")
)

// MaxConsumers bounds the consumers one client registers (and a heartbeat
// declares).
const MaxConsumers = 16

// Defaults of the ConsumeOptions.
const (
	DefaultMaxInFlight    = 8
	DefaultHandlerTimeout = 5 * time.Minute
	DefaultNakDelay       = time.Second
	DefaultMaxNakDelay    = time.Minute
	DefaultPullExpiry     = 10 * time.Second
)

// Task is one message of a durable consumer, handed to a TaskHandler.
// Consume acknowledges it from the handler's result; a handler never
// acknowledges it itself.
type Task struct {
	Subject string
	Data    []byte
	Header  nats.Header
	// Stream and Durable name the consumer; StreamSeq is the message's
	// sequence in the stream (an idempotency key for at-least-once
	// delivery); Delivered counts deliveries, 1 the first time; Pending
	// is what the consumer had left when this one was delivered.
	Stream, Durable string
	StreamSeq       uint64
	ConsumerSeq     uint64
	Delivered       uint64
	Pending         uint64
	Time            time.Time

	reply string
	cons  *Consumer
	start time.Time
	ctx   context.Context
	stop  context.CancelCauseFunc
	wpi   time.Time // last in-progress ack
}

// InProgress tells the server the handler is still working, so the ack
// wait restarts. Consume sends it on its own every third of the ack wait
// while the handler runs within its deadline; call it for finer control.
func (t *Task) InProgress() error { return t.cons.ackBody(t.reply, "+WPI") }

// TaskHandler handles one task. Returning nil acknowledges it (+ACK); an
// error naks it for redelivery after a backoff delay growing with its
// deliveries (-NAK {"delay":ns}), unless Classify calls the error
// permanent (MarkPermanent, a 400/403/404/422 service error, invalid
// params), which terminates it (+TERM): it is never redelivered. A panic
// is recovered, logged and naked. ctx ends at the handler deadline, when
// a reconnect command restarts the consumer, and at Close; a handler must
// honour it (Close waits for handlers).
type TaskHandler func(ctx context.Context, t *Task) error

// ConsumeOption configures Consume.
type ConsumeOption func(*consumeOpts) error

type consumeOpts struct {
	maxInFlight    int
	handlerTimeout time.Duration
	nakDelay       time.Duration
	maxNakDelay    time.Duration
	pullExpiry     time.Duration
	pullFailures   int
}

// WithMaxInFlight bounds the tasks handled at once (1..1024, default
// DefaultMaxInFlight); the consumer pulls no more than the free slots.
func WithMaxInFlight(n int) ConsumeOption {
	return func(o *consumeOpts) error {
		if n < 1 || n > 1024 {
			return fmt.Errorf("%w: WithMaxInFlight(%d): want 1..1024", ErrInvalidConsumer, n)
		}
		o.maxInFlight = n
		return nil
	}
}

// WithHandlerTimeout is each handler call's deadline (default
// DefaultHandlerTimeout). Past it the handler's ctx ends and in-progress
// acks stop, so the server redelivers the task after its ack wait even if
// the handler does not return.
func WithHandlerTimeout(d time.Duration) ConsumeOption {
	return func(o *consumeOpts) error {
		if d <= 0 {
			return fmt.Errorf("%w: WithHandlerTimeout(%v) must be positive", ErrInvalidConsumer, d)
		}
		o.handlerTimeout = d
		return nil
	}
}

// WithNakBackoff sets the redelivery delay of a failed task: base doubled
// per earlier delivery, capped at max (defaults DefaultNakDelay,
// DefaultMaxNakDelay). base 0 redelivers at once.
func WithNakBackoff(base, max time.Duration) ConsumeOption {
	return func(o *consumeOpts) error {
		if base < 0 || max < base {
			return fmt.Errorf("%w: WithNakBackoff(%v, %v): want 0 <= base <= max", ErrInvalidConsumer, base, max)
		}
		o.nakDelay, o.maxNakDelay = base, max
		return nil
	}
}

// WithPullExpiry is how long one pull request waits at the server
// (default DefaultPullExpiry); the server sends idle heartbeats every
// fifth of it, and a pull that hears nothing for three of them has failed:
// it is re-bound, and after Config.HealthFailures failures in a row the
// connection is rebuilt. At least 50ms.
func WithPullExpiry(d time.Duration) ConsumeOption {
	return func(o *consumeOpts) error {
		if d < 50*time.Millisecond {
			return fmt.Errorf("%w: WithPullExpiry(%v): at least 50ms", ErrInvalidConsumer, d)
		}
		o.pullExpiry = d
		return nil
	}
}

// nakDelay is the redelivery delay of a task failed at its delivered-th
// delivery: base * 2^(delivered-1), capped at maxDelay.
func nakDelay(base, maxDelay time.Duration, delivered uint64) time.Duration {
	if base <= 0 {
		return 0
	}
	d := base
	for i := uint64(1); i < delivered && d < maxDelay; i++ {
		d *= 2
	}
	return min(d, maxDelay)
}

// ConsumerStats are a Consumer's counters since Consume.
type ConsumerStats struct {
	Handled, Acked, Naked, Termed, Panics uint64
	// Binds counts bindings to the durable (1 + every restore).
	Binds uint64
	// PullFailures counts pulls that heard nothing from the server.
	PullFailures uint64
	// PullsGone counts pulls answered 503 (no responders: the durable or
	// JetStream gone); each ends the binding, bound again with backoff.
	PullsGone uint64
	// Dropped counts messages never handed to the handler: Tether
	// self-probes a stream captured (acked, so a work queue removes them).
	Dropped  uint64
	InFlight int
	// LastAck is when a task was last acknowledged (zero: never).
	LastAck time.Time
}

// Consumer is a durable pull consumer registered with a Client (Consume).
type Consumer struct {
	c               *Client
	stream, durable string
	h               TaskHandler
	o               consumeOpts
	log             zerolog.Logger
	warn            zerolog.Logger // sampled: per-task failures
	ctx             context.Context
	cancel          context.CancelFunc
	done            chan struct{} // closed when the runner returned
	kick            chan struct{} // a slot freed or a restart asked
	slots           chan struct{} // one per handler running, WithMaxInFlight of them

	handled, acked, naked, termed, panics, binds, pullFails atomic.Uint64
	gone, dropped                                           atomic.Uint64
	lastAck                                                 atomic.Int64
	inHand                                                  atomic.Int64 // tasks delivered and not yet acked, naked or given back

	mu         sync.Mutex
	running    map[*Task]struct{}
	restart    bool   // end the session: re-bind
	restartGen uint64 // the connection a restart is replacing: bind again only on a newer one
}

// Consume binds to the existing durable pull consumer durable of stream
// and handles its messages with h until Stop or the client's end, across
// reconnects and rebuilds: after each, the same durable is bound again on
// the new connection, so every unacknowledged message is redelivered and
// none is lost (delivery is at least once: key idempotency on
// Task.StreamSeq or a message id). The durable must exist with explicit
// acks and no deliver subject (create it with 'nats consumer add' or
// jetstream.CreateOrUpdateConsumer): under per-agent grants an agent may
// use it but not create it. A literal bind failure (no such durable) is
// logged and retried with backoff. The consumer is declared in every
// heartbeat (Heartbeat.Consumers), so the supervisor can find a queue
// that piles up while the agent looks alive.
func (c *Client) Consume(stream, durable string, h TaskHandler, opts ...ConsumeOption) (*Consumer, error) {
	if err := kvconfig.ValidateID("stream", stream); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidConsumer, err)
	}
	if err := kvconfig.ValidateID("durable", durable); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidConsumer, err)
	}
	if h == nil {
		return nil, fmt.Errorf("%w: nil handler for %s/%s", ErrInvalidConsumer, stream, durable)
	}
	o := consumeOpts{maxInFlight: DefaultMaxInFlight, handlerTimeout: DefaultHandlerTimeout,
		nakDelay: DefaultNakDelay, maxNakDelay: DefaultMaxNakDelay, pullExpiry: DefaultPullExpiry,
		pullFailures: c.cfg.HealthFailures}
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	k := &Consumer{c: c, stream: stream, durable: durable, h: h, o: o,
		done: make(chan struct{}), kick: make(chan struct{}, 1), running: map[*Task]struct{}{},
		slots: make(chan struct{}, o.maxInFlight)}
	k.log = c.log.With().Str("stream", stream).Str("durable", durable).Logger()
	k.warn = logsample.New("task failures", 20, time.Second).Logger(k.log)
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.closing:
		return nil, ErrClosed
	case len(c.consumers) >= MaxConsumers:
		return nil, fmt.Errorf("%w: at most %d consumers per client", ErrInvalidConsumer, MaxConsumers)
	}
	for o := range c.consumers {
		if o.stream == stream && o.durable == durable {
			return nil, fmt.Errorf("%w: %s/%s is consumed already", ErrInvalidConsumer, stream, durable)
		}
	}
	c.consumers[k] = struct{}{}
	k.ctx, k.cancel = context.WithCancel(c.ctx)
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		defer close(k.done)
		k.run()
	}()
	return k, nil
}

// Stream and Durable name the consumer.
func (k *Consumer) Stream() string  { return k.stream }
func (k *Consumer) Durable() string { return k.durable }

// Stop ends the consumer: no more pulls; handlers running get their ctx
// cancelled and their tasks are naked. It waits for them. Safe twice.
func (k *Consumer) Stop() {
	k.cancel()
	<-k.done
	k.c.mu.Lock()
	delete(k.c.consumers, k)
	k.c.mu.Unlock()
}

// Stats returns the consumer's counters.
func (k *Consumer) Stats() ConsumerStats {
	k.mu.Lock()
	n := len(k.running)
	k.mu.Unlock()
	s := ConsumerStats{Handled: k.handled.Load(), Acked: k.acked.Load(), Naked: k.naked.Load(),
		Termed: k.termed.Load(), Panics: k.panics.Load(), Binds: k.binds.Load(),
		PullFailures: k.pullFails.Load(), PullsGone: k.gone.Load(), Dropped: k.dropped.Load(), InFlight: n}
	if t := k.lastAck.Load(); t != 0 {
		s.LastAck = time.Unix(0, t)
	}
	return s
}

// status is the consumer's heartbeat entry.
func (k *Consumer) status(now time.Time) ConsumerStatus {
	s := k.Stats()
	st := ConsumerStatus{Stream: k.stream, Durable: k.durable, Handled: s.Handled, Acked: s.Acked,
		Naked: s.Naked, InFlight: uint64(s.InFlight)}
	if !s.LastAck.IsZero() {
		ago := max(0, now.Sub(s.LastAck).Milliseconds())
		st.LastAckMSAgo = &ago
	}
	return st
}

// consumerStatuses are the heartbeat's consumers, sorted.
func (c *Client) consumerStatuses() []ConsumerStatus {
	c.mu.Lock()
	ks := make([]*Consumer, 0, len(c.consumers))
	for k := range c.consumers {
		ks = append(ks, k)
	}
	c.mu.Unlock()
	if len(ks) == 0 {
		return nil
	}
	now := time.Now()
	out := make([]ConsumerStatus, 0, len(ks))
	for _, k := range ks {
		out = append(out, k.status(now))
	}
	sortConsumers(out)
	return out
}

func sortConsumers(s []ConsumerStatus) {
	for i := 1; i < len(s); i++ { // at most MaxConsumers
		for j := i; j > 0 && s[j].Stream+"/"+s[j].Durable < s[j-1].Stream+"/"+s[j-1].Durable; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

// restartConsumers is a supervisor reconnect command's effect on the
// consumers: handlers running are cancelled (ErrConsumerRestarted) and
// naked for redelivery, and every consumer binds again once connection
// generation gen is replaced (a pull parked on the old one would take
// tasks into a connection about to close).
func (c *Client) restartConsumers(gen uint64, reason string) {
	c.mu.Lock()
	ks := make([]*Consumer, 0, len(c.consumers))
	for k := range c.consumers {
		ks = append(ks, k)
	}
	c.mu.Unlock()
	for _, k := range ks {
		k.mu.Lock()
		n := len(k.running)
		for t := range k.running {
			t.stop(ErrConsumerRestarted)
		}
		k.restart, k.restartGen = true, gen
		k.mu.Unlock()
		k.wake()
		k.log.Warn().Int("in_flight", n).Str("reason", reason).Msg("agentproto: consumer restarted; tasks in flight cancelled and naked")
	}
}

func (k *Consumer) wake() {
	select {
	case k.kick <- struct{}{}:
	default:
	}
}

// ackBody publishes an acknowledgement on the client's current
// connection: acks are plain publishes to the message's reply subject, so
// a task that outlives a rebuild is still acknowledged. While the
// connection is being rebuilt it waits for the new one, up to
// ackRebuildWait; an ack that cannot be sent makes the server redeliver
// the task after its ack wait (a duplicate, never a loss).
func (k *Consumer) ackBody(reply, body string) error {
	deadline := time.Now().Add(ackRebuildWait(k.c.cfg.RequestTimeout))
	for {
		nc := k.c.Conn()
		if nc != nil {
			err := nc.Publish(reply, []byte(body))
			if err == nil {
				return nil
			}
			if !errors.Is(err, nats.ErrConnectionClosed) || time.Now().After(deadline) {
				return fmt.Errorf("agentproto: ack %s/%s: %w", k.stream, k.durable, err)
			}
			// closed by a rebuild between Conn and Publish: the next one takes it
		}
		if k.c.isClosing() || time.Now().After(deadline) {
			return fmt.Errorf("agentproto: ack %s/%s: no connection: %w", k.stream, k.durable, ErrClosed)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// ackRebuildWait is how long an ack waits for a rebuilt connection.
func ackRebuildWait(requestTimeout time.Duration) time.Duration {
	return max(time.Second, 2*requestTimeout)
}

// parseAckReply reads a JetStream ack subject: $JS.ACK.<stream>.<durable>.
// <delivered>.<sseq>.<cseq>.<ns>.<pending>, or the form with domain and
// account hash after $JS.ACK (12 or more tokens). It does not allocate.
func parseAckReply(reply string) (t Task, ok bool) {
	var tok [12]string
	n := 0
	for rest := reply; n < len(tok); n++ {
		i := strings.IndexByte(rest, '.')
		if i < 0 {
			tok[n] = rest
			n++
			break
		}
		tok[n], rest = rest[:i], rest[i+1:]
	}
	var f []string
	switch {
	case n == 9 && tok[0] == "$JS" && tok[1] == "ACK":
		f = tok[2:9]
	case n >= 12 && tok[0] == "$JS" && tok[1] == "ACK":
		f = tok[4:11]
	default:
		return t, false
	}
	if f[0] == "" || f[1] == "" {
		return t, false
	}
	var v [5]uint64
	for i := range v {
		x, err := strconv.ParseUint(f[2+i], 10, 64)
		if err != nil {
			return t, false
		}
		v[i] = x
	}
	t.Stream, t.Durable = f[0], f[1]
	t.Delivered, t.StreamSeq, t.ConsumerSeq, t.Pending = v[0], v[1], v[2], v[4]
	t.Time = time.Unix(0, int64(min(v[3], 1<<62)))
	return t, true
}
