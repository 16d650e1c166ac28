package agentproto

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// consumerInfo is the part of $JS.API.CONSUMER.INFO's answer a bind reads.
type consumerInfo struct {
	Config struct {
		AckPolicy      string `json:"ack_policy"`
		AckWait        int64  `json:"ack_wait"` // ns
		DeliverSubject string `json:"deliver_subject"`
	} `json:"config"`
	Error *struct {
		Code        int    `json:"code"`
		ErrCode     int    `json:"err_code"`
		Description string `json:"description"`
	} `json:"error"`
}

// pullRequest is the body of $JS.API.CONSUMER.MSG.NEXT.<stream>.<durable>.
type pullRequest struct {
	Batch         int   `json:"batch"`
	Expires       int64 `json:"expires"`
	IdleHeartbeat int64 `json:"idle_heartbeat"`
}

// run binds and pulls until the consumer stops: one session per binding;
// a failed bind or pull backs off; pullFailures failed pulls in a row on
// one connection ask the watchdog to rebuild it.
func (k *Consumer) run() {
	var wg sync.WaitGroup // the handlers
	defer func() {
		k.mu.Lock()
		for t := range k.running {
			t.stop(context.Cause(k.ctx))
		}
		k.mu.Unlock()
		wg.Wait()
	}()
	attempt, fails := 0, 0
	var lastGen uint64
	for k.ctx.Err() == nil {
		nc, gen := k.c.conn()
		if nc == nil || !nc.IsConnected() {
			k.sleep(min(k.c.cfg.HealthInterval/4, 20*time.Millisecond))
			continue
		}
		if gen != lastGen {
			lastGen, fails = gen, 0
		}
		ackWait, err := k.bind(nc)
		if err != nil {
			attempt++
			d := ReconnectDelay(attempt, k.c.cfg.ReconnectWait, k.c.cfg.MaxReconnectWait, k.c.cfg.jitter(), rand.Float64())
			k.warn.Warn().Err(err).Int(logKeyAttempt, attempt).Int64("retry_in_ms", d.Milliseconds()).
				Msg("agentproto: cannot bind to the durable consumer; retrying (does it exist with explicit acks? 'nats consumer info STREAM DURABLE')")
			k.sleep(d)
			continue
		}
		switch k.session(nc, gen, ackWait, &wg) {
		case sessionDone:
			attempt, fails = 0, 0
			k.restartWait()
			continue
		case sessionGone: // answered, so not a failed pull: bind again with backoff
			attempt++
			k.gone.Add(1)
			d := ReconnectDelay(attempt, k.c.cfg.ReconnectWait, k.c.cfg.MaxReconnectWait, k.c.cfg.jitter(), rand.Float64())
			k.warn.Warn().Int(logKeyAttempt, attempt).Int64("retry_in_ms", d.Milliseconds()).Uint64(logKeyConnGen, gen).
				Msg("agentproto: consumer pull answered 503 (no responders: the durable or JetStream is gone); binding again")
			k.sleep(d)
			continue
		}
		attempt = 0
		fails++
		k.pullFails.Add(1)
		if fails >= k.o.pullFailures {
			k.log.Error().Int(logKeyFailures, fails).Uint64(logKeyConnGen, gen).
				Msg("agentproto: consumer pulls stopped returning; rebuilding the connection")
			k.c.requestRebuild(gen, fmt.Sprintf("consumer %s/%s: %d pulls in a row heard nothing", k.stream, k.durable, fails))
			fails = 0
			k.waitGen(gen)
		}
	}
}

// sleep waits d or until the consumer stops.
func (k *Consumer) sleep(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-k.ctx.Done():
	case <-t.C:
	}
}

// waitGen waits (bounded by RebuildAfter-independent polling) until the
// connection generation moves past gen or the consumer stops.
func (k *Consumer) waitGen(gen uint64) {
	for i := 0; k.ctx.Err() == nil && i < 1000; i++ {
		if _, g := k.c.conn(); g != gen {
			return
		}
		k.sleep(min(k.c.cfg.HealthInterval/4, 20*time.Millisecond))
	}
}

// bind reads the durable's info: it must exist, pull, explicit acks. It
// returns its ack wait.
func (k *Consumer) bind(nc *nats.Conn) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(k.ctx, k.c.cfg.RequestTimeout)
	defer cancel()
	m, err := nc.RequestWithContext(ctx, "$JS.API.CONSUMER.INFO."+k.stream+"."+k.durable, nil)
	if err != nil {
		return 0, fmt.Errorf("agentproto: consumer info %s/%s: %w", k.stream, k.durable, err)
	}
	var ci consumerInfo
	if err := json.Unmarshal(m.Data, &ci); err != nil {
		return 0, fmt.Errorf("agentproto: consumer info %s/%s: %w", k.stream, k.durable, err)
	}
	switch {
	case ci.Error != nil:
		return 0, fmt.Errorf("%w: %s/%s: %s (JetStream error %d)", ErrInvalidConsumer, k.stream, k.durable, ci.Error.Description, ci.Error.ErrCode)
	case ci.Config.DeliverSubject != "":
		return 0, fmt.Errorf("%w: %s/%s is a push consumer; Consume needs a pull consumer", ErrInvalidConsumer, k.stream, k.durable)
	case ci.Config.AckPolicy != "explicit":
		return 0, fmt.Errorf("%w: %s/%s has ack policy %q; Consume needs explicit acks", ErrInvalidConsumer, k.stream, k.durable, ci.Config.AckPolicy)
	}
	n := k.binds.Add(1)
	ev := k.log.Debug()
	if n > 1 {
		ev = k.log.Info()
	}
	ev.Uint64("binds", n).Int64("ack_wait_ms", time.Duration(ci.Config.AckWait).Milliseconds()).Msg("agentproto: bound to the durable consumer")
	return time.Duration(ci.Config.AckWait), nil
}

// restartNakDelay is the redelivery delay of a task cancelled by a restart
// or the consumer's end: long enough for the pulls its old connection left
// parked at the server to be gone (the connection closed or its inbox
// unsubscribed), so the redelivery reaches a live pull rather than waiting
// out the ack wait in a dead one.
const restartNakDelay = 50 * time.Millisecond

// pullEnded is what is still outstanding after a status message: a 100
// is an idle heartbeat (nothing ends); a 408 (expired) or 409 (ended by
// the server) ends one pull, whose undelivered count pending says (all
// of them when it does not); anything else (404) ends every pull.
func pullEnded(outstanding int, code, pending string) int {
	switch code {
	case "100":
		return outstanding
	case "408", "409":
		if n, err := strconv.Atoi(pending); err == nil && n >= 0 {
			return max(0, outstanding-n)
		}
	}
	return 0
}

// takeRestart reports (and clears) a restart request.
func (k *Consumer) takeRestart() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	r := k.restart
	k.restart = false
	return r
}

// restartWait, after a restart, waits until the connection it replaces is
// gone: at most ackRebuildWait, then it binds on whatever is current.
func (k *Consumer) restartWait() {
	k.mu.Lock()
	gen := k.restartGen
	k.restartGen = 0
	k.mu.Unlock()
	if gen == 0 {
		return
	}
	deadline := time.Now().Add(ackRebuildWait(k.c.cfg.RequestTimeout))
	for k.ctx.Err() == nil && time.Now().Before(deadline) {
		if _, g := k.c.conn(); g != gen {
			return
		}
		k.sleep(5 * time.Millisecond)
	}
}

// inProgress sends +WPI for tasks running over a third of the ack wait,
// within their deadline.
func (k *Consumer) inProgress(ackWait time.Duration) {
	if ackWait <= 0 {
		return
	}
	now := time.Now()
	k.mu.Lock()
	var due []*Task
	for t := range k.running {
		if t.ctx.Err() == nil && now.Sub(t.wpi) >= ackWait/3 {
			t.wpi = now
			due = append(due, t)
		}
	}
	k.mu.Unlock()
	for _, t := range due {
		_ = t.InProgress()
	}
}

// work runs the handler and acknowledges the task from its outcome.
func (k *Consumer) work(t *Task, deadline *time.Timer) {
	err := k.call(t)
	deadline.Stop()
	k.handled.Add(1)
	took := time.Since(t.start)
	cause := context.Cause(t.ctx)
	var aerr error
	switch {
	case err == nil:
		if aerr = k.ackBody(t.reply, "+ACK"); aerr == nil {
			k.acked.Add(1)
			k.lastAck.Store(time.Now().UnixNano())
		}
	case cause == nil && Classify(err) == ClassPermanent && !errors.Is(err, ErrHandlerPanic):
		k.termed.Add(1)
		aerr = k.ackBody(t.reply, "+TERM "+truncateReason(err.Error()))
		k.warn.Warn().Err(err).Uint64("stream_seq", t.StreamSeq).Int64(logKeyTookMS, took.Milliseconds()).
			Msg("agentproto: task failed permanently; terminated (never redelivered)")
	default:
		d := nakDelay(k.o.nakDelay, k.o.maxNakDelay, t.Delivered)
		if errors.Is(cause, ErrConsumerRestarted) || k.ctx.Err() != nil {
			d = restartNakDelay
		}
		k.naked.Add(1)
		body := "-NAK"
		if d > 0 {
			body += ` {"delay":` + strconv.FormatInt(int64(d), 10) + `}`
		}
		aerr = k.ackBody(t.reply, body)
		k.warn.Warn().Err(err).AnErr("cause", cause).Uint64("stream_seq", t.StreamSeq).Uint64("delivered", t.Delivered).
			Int64(logKeyTookMS, took.Milliseconds()).Int64("redeliver_in_ms", d.Milliseconds()).Msg("agentproto: task failed; naked for redelivery")
	}
	if aerr != nil {
		k.warn.Warn().Err(aerr).Uint64("stream_seq", t.StreamSeq).Msg("agentproto: acknowledgement not sent; the server redelivers after the ack wait")
	}
	k.mu.Lock()
	delete(k.running, t)
	k.mu.Unlock()
	k.wake()
}

// call runs the handler, turning a panic into ErrHandlerPanic.
func (k *Consumer) call(t *Task) (err error) {
	defer func() {
		if r := recover(); r != nil {
			k.panics.Add(1)
			err = fmt.Errorf("%w: %v", ErrHandlerPanic, r)
			k.c.emit(Event{Kind: EventAsyncError, Subject: k.stream + "/" + k.durable, Err: err})
		}
	}()
	return k.h(t.ctx, t)
}

// truncateReason keeps a +TERM reason short and on one line.
func truncateReason(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c < 0x20 {
			b[i] = ' '
		}
	}
	if len(b) > 200 {
		b = b[:200]
	}
	return string(b)
}
