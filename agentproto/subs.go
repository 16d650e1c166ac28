package agentproto

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
)

// HeaderProbe marks a self-probe: a message the client publishes to a
// subject it subscribes to, to prove that subscription still delivers. Its
// value is "<instance>.<n>". A subscription registered with the client
// takes such messages out before its handler sees them; other receivers
// of the subject should ignore messages that carry it.
const HeaderProbe = "Tether-Probe"

// subSeq numbers subscriptions across the process.
var subSeq atomic.Uint64

// Subscription is a subscription registered with a Client: restored on
// every rebuild, re-created when the server drops it (a permission change,
// an auto-unsubscribe) and, if probed, when its self-probe stops coming
// back (a wedged handler). Messages pending in a subscription that is
// re-created are lost, as they are in core NATS on any reconnect.
type Subscription struct {
	id       uint64 // order of registration: the probe rotation's order
	c        *Client
	subject  string
	queue    string
	probeSub string // "" when not probed
	handler  nats.MsgHandler

	handled  atomic.Uint64 // handler calls completed
	restores atomic.Uint64

	mu       sync.Mutex
	sub      *nats.Subscription
	removed  bool
	noProbe  bool // WithoutProbe
	denied   bool // the server refused or dropped it (permissions)
	probeOff bool // publishing the probe is not permitted
	fails    int  // failed probe rounds in a row
	tok      string
	back     chan struct{} // closed when the probe tok came back
	atSend   uint64        // handled when tok was sent
	seen     uint64        // handled at the last round: traffic since proves delivery
	// restoring is set by a re-creation until the server is seen to
	// accept it (its probe back, or a round without a refusal): only then
	// does Restores count it.
	restoring      bool
	restoreStarted time.Time
	restoreReason  string
	restoreGen     uint64
	confirmed      bool // a restore was just confirmed: judge reports it
}

// SubOption configures Subscribe.
type SubOption func(*Subscription) error

// WithProbe has the health loop publish a self-probe (an empty message with
// the HeaderProbe header) to subject when this subscription's turn comes
// (one probe per Config.ProbeInterval, in rotation over the probed
// subscriptions; skipped when it received a message since its last turn;
// every health tick while a probe is lost) and expect it back through this
// subscription; a probe lost Config.HealthFailures times in a row while
// the handler makes no progress re-creates the subscription. subject
// must be a literal subject the subscription matches; empty means the
// subscription's own (literal) subject. Use it only when no one else
// minds the probes on that subject, and with handlers that return
// promptly: a handler that runs for longer than HealthFailures rounds
// looks wedged. Not allowed with a queue group (a probe reaches one
// member only).
func WithProbe(subject string) SubOption {
	return func(s *Subscription) error {
		if subject == "" {
			subject = s.subject
		}
		if s.queue != "" {
			return fmt.Errorf("%w: WithProbe on queue subscription %q: a probe reaches only one member", ErrInvalidSubject, s.subject)
		}
		if !literalSubject(subject) || !subjectMatches(s.subject, subject) {
			return fmt.Errorf("%w: probe subject %q must be literal and match %q", ErrInvalidSubject, subject, s.subject)
		}
		s.probeSub = subject
		return nil
	}
}

// WithoutProbe turns off the self-probe a subscription to a literal subject
// gets by default: for subjects where others would see the probes (they
// carry the HeaderProbe header, which Tether's own receivers ignore) or
// whose handlers may run for longer than HealthFailures rounds.
func WithoutProbe() SubOption {
	return func(s *Subscription) error {
		s.noProbe, s.probeSub = true, ""
		return nil
	}
}

// Subscribe registers handler for subject. The subscription lives until
// Unsubscribe or the client's end, across reconnects and rebuilds. When
// Subscribe returns on a connected client, the server has it. A literal
// subject is self-probed by default (WithProbe(""); WithoutProbe opts
// out); a round in which the handler received a message skips the probe,
// since that traffic proved delivery. Handlers of
// one subscription run one at a time, in order; a panic in one is logged
// and counted, not fatal. A handler must not call Close or Drain (they
// wait for handlers).
func (c *Client) Subscribe(subject string, handler nats.MsgHandler, opts ...SubOption) (*Subscription, error) {
	return c.subscribe(subject, "", handler, opts)
}

// QueueSubscribe is Subscribe as a member of queue group queue.
func (c *Client) QueueSubscribe(subject, queue string, handler nats.MsgHandler, opts ...SubOption) (*Subscription, error) {
	if queue == "" || strings.ContainsAny(queue, " \t\r\n") {
		return nil, fmt.Errorf("%w: queue group %q", ErrInvalidSubject, queue)
	}
	return c.subscribe(subject, queue, handler, opts)
}

func (c *Client) subscribe(subject, queue string, handler nats.MsgHandler, opts []SubOption) (*Subscription, error) {
	if !validSubject(subject) {
		return nil, fmt.Errorf("%w: %q", ErrInvalidSubject, subject)
	}
	if handler == nil {
		return nil, fmt.Errorf("%w: nil handler for %q", ErrInvalidSubject, subject)
	}
	s := &Subscription{id: subSeq.Add(1), c: c, subject: subject, queue: queue, handler: handler}
	for _, o := range opts {
		if err := o(s); err != nil {
			return nil, err
		}
	}
	if s.probeSub == "" && !s.noProbe && queue == "" && literalSubject(subject) {
		s.probeSub = subject // probed by default
	}
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return nil, ErrClosed
	}
	c.subs[s] = struct{}{}
	nc := c.nc
	if nc != nil {
		if err := s.attach(nc); err != nil {
			delete(c.subs, s)
			c.mu.Unlock()
			return nil, err
		}
	}
	c.mu.Unlock()
	if nc != nil && c.ctx != nil && nc.IsConnected() {
		// The server knows the subscription when Subscribe returns.
		ctx, cancel := context.WithTimeout(c.ctx, c.cfg.ProbeTimeout)
		_ = nc.FlushWithContext(ctx)
		cancel()
	}
	return s, nil
}

// Subject is the subscription's subject.
func (s *Subscription) Subject() string { return s.subject }

// Handled counts handler calls completed.
func (s *Subscription) Handled() uint64 { return s.handled.Load() }

// Restores counts re-creations after the server dropped it or its probe
// failed (rebuilds of the whole connection not included).
func (s *Subscription) Restores() uint64 { return s.restores.Load() }

// Unsubscribe removes the subscription. Safe to call twice.
func (s *Subscription) Unsubscribe() error {
	s.c.mu.Lock()
	delete(s.c.subs, s)
	s.c.mu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.removed = true
	if s.sub == nil {
		return nil
	}
	err := s.sub.Unsubscribe()
	s.sub = nil
	if err != nil && err != nats.ErrConnectionClosed && err != nats.ErrBadSubscription {
		return fmt.Errorf("agentproto: unsubscribe %q: %w", s.subject, err)
	}
	return nil
}

// attach (re)subscribes on nc, dropping the previous subscription. The
// client's mu must be held, so attach never races a rebuild.
func (s *Subscription) attach(nc *nats.Conn) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.removed {
		return nil
	}
	if s.sub != nil {
		_ = s.sub.Unsubscribe() // fails harmlessly on a closed connection
		s.sub = nil
	}
	var (
		sub *nats.Subscription
		err error
	)
	if s.queue != "" {
		sub, err = nc.QueueSubscribe(s.subject, s.queue, s.deliver)
	} else {
		sub, err = nc.Subscribe(s.subject, s.deliver)
	}
	if err != nil {
		return fmt.Errorf("agentproto: subscribe %q: %w", s.subject, err)
	}
	s.sub, s.denied, s.fails = sub, false, 0
	s.closeProbe()
	return nil
}

// deliver is the nats.go handler: it takes probes out and runs the
// handler, counted so Close can wait for it; a panic is logged, not fatal.
func (s *Subscription) deliver(m *nats.Msg) {
	if tok := m.Header.Get(HeaderProbe); tok != "" {
		s.probeBack(tok)
		return
	}
	if !s.c.handlers.enter() {
		return
	}
	defer s.c.handlers.exit()
	defer s.handled.Add(1)
	defer func() {
		if r := recover(); r != nil {
			s.c.log.Error().Str(logKeySubject, m.Subject).Interface("panic", r).
				Msg("agentproto: message handler panicked; message dropped")
			s.c.emit(Event{Kind: EventAsyncError, Subject: s.subject, Err: fmt.Errorf("agentproto: handler panic: %v", r)})
		}
	}()
	s.handler(m)
}

// arm starts a probe with token tok and returns the channel closed when it
// comes back; nil when the subscription is not probed now.
func (s *Subscription) arm(tok string) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.probeSub == "" || s.probeOff || s.sub == nil || s.removed {
		return nil
	}
	if h := s.handled.Load(); h != s.seen && !s.restoring && !s.denied {
		s.seen, s.fails = h, 0 // messages were handled since the last round: no probe needed
		return nil
	}
	s.tok, s.back, s.atSend = tok, make(chan struct{}), s.handled.Load()
	return s.back
}

func (s *Subscription) probeBack(tok string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if tok == s.tok && s.back != nil {
		close(s.back)
		s.back = nil
	}
}

// suspected reports whether s is probed every tick: its last probe was
// lost, or its re-creation awaits confirmation.
func (s *Subscription) suspected() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fails > 0 || s.restoring
}

// closeProbe forgets the probe in flight; s.mu must be held.
func (s *Subscription) closeProbe() { s.tok, s.back = "", nil }

// refused reports whether the server refused or dropped s (why).
func (s *Subscription) refused() (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.removed || s.sub == nil:
		return "", false
	case !s.sub.IsValid():
		return "subscription no longer valid (auto-unsubscribed or closed)", true
	case s.denied:
		return "server refused the subscription (permissions)", true
	}
	return "", false
}

// cancelProbe forgets this round's probe.
func (s *Subscription) cancelProbe() {
	s.mu.Lock()
	s.closeProbe()
	s.mu.Unlock()
}

// judge records the outcome of this round's probe and reports whether the
// subscription must be re-created now (and why).
func (s *Subscription) judge(back bool, threshold int) (string, bool) {
	s.mu.Lock()
	reason, restore := s.judgeLocked(back, threshold)
	confirmed := s.confirmed
	s.confirmed = false
	took, why, gen := time.Since(s.restoreStarted), s.restoreReason, s.restoreGen
	s.mu.Unlock()
	if confirmed { // logged and emitted outside the lock: OnEvent may call back
		c := s.c
		c.log.Warn().Str(logKeySubject, s.subject).Str("reason", why).
			Int64(logKeyTookMS, took.Milliseconds()).Msg("agentproto: subscription restored")
		c.emit(Event{Kind: EventSubRestored, Gen: gen, Subject: s.subject, Reason: why})
	}
	return reason, restore
}

func (s *Subscription) judgeLocked(back bool, threshold int) (string, bool) {
	if s.removed || s.sub == nil {
		return "", false
	}
	switch {
	case !s.sub.IsValid():
		return "subscription no longer valid (auto-unsubscribed or closed)", true
	case s.denied:
		// Re-created every round while refused, so it flows again within a
		// round of being allowed again.
		return "server refused the subscription (permissions)", true
	case s.tok == "":
		s.confirmLocked(s.probeSub == "" || s.probeOff) // unprobed: a round without a refusal
		return "", false                                // not probed this round
	}
	if back {
		s.confirmLocked(true)
	}
	v := judgeProbe(back, s.atSend, s.handled.Load())
	s.fails = nextFailures(s.fails, v)
	s.closeProbe()
	if s.fails >= threshold {
		return fmt.Sprintf("self-probe lost %d rounds in a row with no handler progress", s.fails), true
	}
	return "", false
}

// confirmLocked counts a re-creation once the server is seen to accept it
// (ok: its probe came back, or a round passed without a refusal); s.mu is
// held.
func (s *Subscription) confirmLocked(ok bool) {
	if !s.restoring || !ok || s.denied {
		return
	}
	s.restoring, s.confirmed = false, true
	s.restores.Add(1)
}

// restore re-creates s on the current connection (generation gen); it is
// counted once the server is seen to accept it (confirmLocked).
func (c *Client) restore(s *Subscription, gen uint64, reason string) {
	c.mu.Lock()
	if c.gen != gen || c.nc == nil || c.closing {
		c.mu.Unlock()
		return
	}
	nc := c.nc
	s.mu.Lock()
	first := !s.restoring
	if first {
		s.restoring, s.restoreStarted, s.restoreReason = true, time.Now(), reason
	}
	s.restoreGen = gen
	s.mu.Unlock()
	err := s.attach(nc)
	c.mu.Unlock()
	if err != nil {
		c.log.Error().Err(err).Str(logKeySubject, s.subject).Msg("agentproto: subscription restore failed")
		return
	}
	ev := c.log.Debug()
	if first {
		ev = c.log.Info()
	}
	ev.Str(logKeySubject, s.subject).Str("reason", reason).Msg("agentproto: re-creating subscription")
	ctx, cancel := context.WithTimeout(c.ctx, c.cfg.ProbeTimeout)
	_ = nc.FlushWithContext(ctx) // the new subscription is registered at the server
	cancel()
}

// snapshotSubs returns the registered subscriptions.
func (c *Client) snapshotSubs() []*Subscription {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]*Subscription, 0, len(c.subs))
	for s := range c.subs {
		out = append(out, s)
	}
	return out
}

var (
	subDeniedRe = regexp.MustCompile(`(?i)subscription to "(\S+)"`)
	pubDeniedRe = regexp.MustCompile(`(?i)publish to "(\S+)"`)
)

// onPermissionError marks the subscriptions a permissions violation names:
// a refused subscription is re-created (and re-checked) by the health
// loop; a refused probe publish turns that subscription's probe off.
func (c *Client) onPermissionError(err error) {
	msg := err.Error()
	if m := subDeniedRe.FindStringSubmatch(msg); m != nil {
		for _, s := range c.snapshotSubs() {
			if s.subject == m[1] {
				s.mu.Lock()
				s.denied = true
				s.mu.Unlock()
			}
		}
	}
	if m := pubDeniedRe.FindStringSubmatch(msg); m != nil {
		c.deniedReqs.denied(m[1])
		for _, s := range c.snapshotSubs() {
			s.mu.Lock()
			if s.probeSub == m[1] && !s.probeOff {
				s.probeOff = true
				s.closeProbe()
				c.log.Error().Str(logKeySubject, s.subject).Str("probe_subject", s.probeSub).
					Msg("agentproto: not permitted to publish self-probes; probing of this subscription is off")
			}
			s.mu.Unlock()
		}
	}
}

// validSubject reports whether s is a NATS subject a subscription may use:
// non-empty tokens without white space, '>' only last.
func validSubject(s string) bool {
	if s == "" || strings.ContainsAny(s, " \t\r\n") {
		return false
	}
	toks := strings.Split(s, ".")
	for i, t := range toks {
		if t == "" || (t == ">" && i != len(toks)-1) {
			return false
		}
		if len(t) > 1 && strings.ContainsAny(t, "*>") {
			return false
		}
	}
	return true
}

// literalSubject reports whether s is a valid subject with no wildcard.
func literalSubject(s string) bool {
	return validSubject(s) && !strings.ContainsAny(s, "*>")
}

// subjectMatches reports whether literal subject subj matches pattern.
func subjectMatches(pattern, subj string) bool {
	pt, st := strings.Split(pattern, "."), strings.Split(subj, ".")
	for i, p := range pt {
		switch {
		case p == ">":
			return len(st) > i
		case i >= len(st):
			return false
		case p != "*" && p != st[i]:
			return false
		}
	}
	return len(pt) == len(st)
}
