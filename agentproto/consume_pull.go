package agentproto

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// pullState is one session's pull accounting, kept by its subscription's
// callback (what arrives) and its runner (what it asks for).
type pullState struct {
	mu          sync.Mutex
	outstanding int       // asked for and not delivered or ended
	heard       time.Time // the last message, heartbeat or status
	gone        bool      // a 503: nothing serves the durable's pulls
}

func (p *pullState) arrived(code, pending string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if code == "503" { // no responders: the durable or JetStream is gone; not heard
		p.outstanding, p.gone = 0, true
		return
	}
	if code == "" {
		p.outstanding = max(0, p.outstanding-1)
	} else {
		p.outstanding = pullEnded(p.outstanding, code, pending)
	}
	p.heard = time.Now()
}

func (p *pullState) requested(n int) {
	p.mu.Lock()
	if p.outstanding == 0 {
		p.heard = time.Now()
	}
	p.outstanding += n
	p.mu.Unlock()
}

func (p *pullState) reset() {
	p.mu.Lock()
	p.outstanding = 0
	p.mu.Unlock()
}

func (p *pullState) snapshot() (int, time.Time, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.outstanding, p.heard, p.gone
}

// sessionEnd is why a session ended.
type sessionEnd int

const (
	sessionDone   sessionEnd = iota // the generation moved, a restart, the consumer stopping
	sessionFailed                   // a pull heard nothing from the server
	sessionGone                     // a pull was answered 503: no durable (or no JetStream) serves it
)

// isStatus reports a JetStream pull status message (idle heartbeat, end
// of a pull, 503...): a Status header and no ack subject. A stored message
// always has an ack subject, whatever headers its publisher set.
func isStatus(m *nats.Msg) bool {
	return m.Header.Get("Status") != "" && !strings.HasPrefix(m.Reply, "$JS.ACK.")
}

// session is one binding on nc: a private inbox whose callback accounts
// for what arrives and hands tasks to WithMaxInFlight workers; the
// runner pulls up to the slots no task holds (waiting for a worker or
// running, in this session or an older one), overlapping the handlers, watches
// that pulls are heard and sends in-progress acks. It returns true when
// it ended for a reason other than a failed pull (the generation moved,
// a restart, the consumer stopping), sessionFailed when a pull heard
// nothing and sessionGone when one was answered 503 (no responders).
func (k *Consumer) session(nc *nats.Conn, gen uint64, ackWait time.Duration, wg *sync.WaitGroup) sessionEnd {
	work := make(chan *nats.Msg, 2*k.o.maxInFlight+8)
	done := make(chan struct{})
	ps := &pullState{}
	sub, err := nc.Subscribe(nc.NewInbox(), func(m *nats.Msg) {
		if isStatus(m) {
			ps.arrived(m.Header.Get("Status"), m.Header.Get("Nats-Pending-Messages"))
			k.wake()
			return
		}
		if m.Header.Get(HeaderProbe) != "" {
			// A Tether self-probe a stream captured (its subject is also an
			// agent's subscription): never a task; acked so a work queue drops it.
			ps.arrived("", "")
			k.dropped.Add(1)
			if m.Reply != "" {
				_ = nc.Publish(m.Reply, []byte("+ACK"))
			}
			k.warn.Debug().Str(logKeySubject, m.Subject).Msg("agentproto: consumer message is a Tether self-probe; acked, not handled")
			k.wake()
			return
		}
		k.inHand.Add(1) // before arrived: the runner never sees it in neither count
		ps.arrived("", "")
		select {
		case work <- m:
		case <-done: // the session ended: give it back at once
			k.nakNow(nc, m)
			k.inHand.Add(-1)
		}
	})
	if err != nil {
		return sessionDone // the connection is going: the next round sees it
	}
	for range k.o.maxInFlight {
		wg.Add(1)
		go func() {
			defer wg.Done()
			k.worker(work, done)
		}()
	}
	defer k.endSession(sub, work, done)
	hb := k.o.pullExpiry / 5
	tick := time.NewTicker(max(min(hb/2, ackWait/6), 5*time.Millisecond))
	defer tick.Stop()
	reconnects := nc.Stats().Reconnects
	for {
		// Pull as many as will have a free slot, once that is at least half
		// of them: never more is asked for than WithMaxInFlight allows
		// delivered and unacknowledged.
		out, heard, gone := ps.snapshot()
		if gone {
			return sessionGone
		}
		if n := k.o.maxInFlight - int(k.inHand.Load()) - out; n >= (k.o.maxInFlight+1)/2 {
			body, _ := json.Marshal(pullRequest{Batch: n, Expires: int64(k.o.pullExpiry), IdleHeartbeat: int64(hb)})
			ps.requested(n) // before the publish: the first message may arrive before it returns
			if err := nc.PublishRequest("$JS.API.CONSUMER.MSG.NEXT."+k.stream+"."+k.durable, sub.Subject, body); err != nil {
				return sessionDone
			}
			continue
		}
		select {
		case <-k.ctx.Done():
			return sessionDone
		case <-k.kick:
			if k.takeRestart() {
				return sessionDone
			}
		case <-tick.C:
			if _, g := k.c.conn(); g != gen || nc.IsClosed() {
				return sessionDone
			}
			if r := nc.Stats().Reconnects; r != reconnects {
				reconnects = r
				ps.reset() // the pull parked at the old server is gone
				continue
			}
			if out > 0 && time.Since(heard) > 3*hb {
				k.log.Warn().Int64("silent_ms", time.Since(heard).Milliseconds()).Uint64(logKeyConnGen, gen).
					Msg("agentproto: pull heard nothing from the server; binding again")
				k.c.emit(Event{Kind: EventHealthFailed, Gen: gen, Subject: k.stream + "/" + k.durable, Reason: "consumer pull heard nothing"})
				return sessionFailed
			}
			k.inProgress(ackWait)
		}
	}
}

// endSession stops the session's idle workers and its subscription, and
// naks (best effort, at once) the tasks delivered that no worker took.
func (k *Consumer) endSession(sub *nats.Subscription, work chan *nats.Msg, done chan struct{}) {
	close(done)
	_ = sub.Unsubscribe()
	for {
		select {
		case m := <-work:
			k.nakNow(nil, m)
			k.inHand.Add(-1)
		default:
			return
		}
	}
}

// nakNow gives a task no handler took back for redelivery at once, best
// effort (without waiting for a connection): on the current connection,
// else on old; a nak that cannot be sent leaves it to the ack wait. A
// pull still parked at the server for an ended session can take such a
// task again until its unsubscribe reaches the server: naked again, it
// converges on the live session.
func (k *Consumer) nakNow(old *nats.Conn, m *nats.Msg) {
	if m.Reply == "" {
		return
	}
	nc := k.c.Conn()
	if nc == nil || nc.IsClosed() {
		nc = old
	}
	if nc != nil {
		_ = nc.Publish(m.Reply, []byte("-NAK"))
	}
}

// worker handles tasks of one session, one at a time, until it ends. A
// worker still in a handler when a new session starts keeps its slot:
// slots bound the handlers running across sessions.
func (k *Consumer) worker(work <-chan *nats.Msg, done <-chan struct{}) {
	for {
		select {
		case <-done:
			return
		case m := <-work:
			select {
			case k.slots <- struct{}{}:
			case <-done: // the session ended while an old worker holds the slot
				k.nakNow(nil, m)
				k.inHand.Add(-1)
				return
			}
			k.handle(m)
			<-k.slots
			k.inHand.Add(-1)
			k.wake()
		}
	}
}

// handle runs one task: its context (ended by its deadline, a restart or
// the consumer's end), registered as running for in-progress acks.
func (k *Consumer) handle(m *nats.Msg) {
	t, ok := parseAckReply(m.Reply)
	if !ok {
		k.warn.Warn().Str(logKeySubject, m.Subject).Msg("agentproto: consumer message without an ack subject dropped")
		return
	}
	t.Subject, t.Data, t.Header, t.reply, t.cons, t.start = m.Subject, m.Data, m.Header, m.Reply, k, time.Now()
	t.wpi = t.start
	tp := &t
	tp.ctx, tp.stop = context.WithCancelCause(k.ctx)
	defer tp.stop(nil)
	deadline := time.AfterFunc(k.o.handlerTimeout, func() { tp.stop(ErrHandlerDeadline) })
	k.mu.Lock()
	k.running[tp] = struct{}{}
	k.mu.Unlock()
	k.work(tp, deadline)
}
