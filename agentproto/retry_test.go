package agentproto

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
)

// fakeClock is a manual clock: Sleep records the wait and advances the
// clock at once, so a test of a 10-second schedule runs in microseconds.
type fakeClock struct {
	mu    sync.Mutex
	now   time.Time
	waits []time.Duration
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Unix(1_700_000_000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Sleep(ctx context.Context, d time.Duration) error {
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.waits = append(c.waits, d)
	c.now = c.now.Add(d)
	return nil
}

func (c *fakeClock) Waits() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]time.Duration(nil), c.waits...)
}

// install makes p use the fake clock and a fixed random value u.
func (c *fakeClock) install(p *Policy, u float64) {
	p.Now, p.Sleep = c.Now, c.Sleep
	p.Rand = func() float64 { return u }
}

// failing returns an op that fails with errs in turn, then succeeds, and a
// pointer to its call count.
func failing(errs ...error) (func(context.Context) error, *int) {
	calls := 0
	return func(context.Context) error {
		calls++
		if calls <= len(errs) {
			return errs[calls-1]
		}
		return nil
	}, &calls
}

// always returns an op that always fails with err.
func always(err error) (func(context.Context) error, *int) {
	calls := 0
	return func(context.Context) error { calls++; return err }, &calls
}

const ms = time.Millisecond

func TestRetrySucceedsAfterTransient(t *testing.T) {
	c := newFakeClock()
	p := ArticlePolicy()
	c.install(&p, 0)
	op, calls := failing(nats.ErrNoResponders, nats.ErrTimeout)
	if err := Retry(context.Background(), p, op); err != nil {
		t.Fatalf("Retry: %v", err)
	}
	if *calls != 3 {
		t.Errorf("calls = %d, want 3", *calls)
	}
	if w := c.Waits(); !equalDurations(w, []time.Duration{500 * ms, time.Second}) {
		t.Errorf("waits = %v", w)
	}
}

func TestRetryAttemptCap(t *testing.T) {
	for _, attempts := range []int{1, 2, 5, 7} {
		c := newFakeClock()
		p := ArticlePolicy()
		p.MaxAttempts = attempts
		c.install(&p, 0)
		op, calls := always(nats.ErrNoResponders)
		err := Retry(context.Background(), p, op)
		var re *RetryError
		if !errors.As(err, &re) {
			t.Fatalf("attempts %d: err %v is not a *RetryError", attempts, err)
		}
		if *calls != attempts || re.Attempts != attempts || re.Reason != StopAttempts || len(c.Waits()) != attempts-1 {
			t.Errorf("attempts %d: calls %d, RetryError %+v, waits %v", attempts, *calls, re, c.Waits())
		}
		if !errors.Is(err, nats.ErrNoResponders) {
			t.Errorf("errors.Is(err, ErrNoResponders) = false for %v", err)
		}
	}
}

func TestRetryElapsedCap(t *testing.T) {
	c := newFakeClock()
	p := Policy{MaxAttempts: -1, MaxElapsed: 2 * time.Second, JitterMode: JitterNone}
	c.install(&p, 0)
	op, calls := always(nats.ErrTimeout)
	err := Retry(context.Background(), p, op)
	var re *RetryError
	if !errors.As(err, &re) || re.Reason != StopElapsed {
		t.Fatalf("err = %v, want StopElapsed", err)
	}
	// Waits 0.5 s (t=0.5) and 1 s (t=1.5); the next, 2 s, would end at 3.5 s > 2 s.
	if *calls != 3 || re.Elapsed != 1500*ms {
		t.Errorf("calls = %d, elapsed = %v; want 3, 1.5s", *calls, re.Elapsed)
	}
	if !strings.Contains(err.Error(), "after 3 attempts in 1.5s") {
		t.Errorf("message %q does not say attempts and elapsed", err)
	}
}

func TestRetryUncappedAttemptsUntilSuccess(t *testing.T) {
	c := newFakeClock()
	p := Policy{MaxAttempts: -1, MaxDelay: 5 * time.Second, JitterMode: JitterNone}
	c.install(&p, 0)
	errs := make([]error, 40)
	for i := range errs {
		errs[i] = nats.ErrNoResponders
	}
	op, calls := failing(errs...)
	if err := Retry(context.Background(), p, op); err != nil || *calls != 41 {
		t.Fatalf("err %v after %d calls, want nil after 41", err, *calls)
	}
}

func TestRetryPermanentMakesOneAttempt(t *testing.T) {
	for _, perr := range []error{
		&ServiceError{Code: CodeNotFound},
		&HTTPError{Status: 401},
		nats.ErrPermissionViolation,
		MarkPermanent(errors.New("bad tool args")),
		backoff.Permanent(errors.New("stop")),
	} {
		c := newFakeClock()
		p := DefaultPolicy()
		c.install(&p, 0)
		op, calls := always(perr)
		err := Retry(context.Background(), p, op)
		var re *RetryError
		if *calls != 1 || len(c.Waits()) != 0 || !errors.As(err, &re) || re.Reason != StopPermanent || re.Class != ClassPermanent {
			t.Errorf("%v: calls %d, waits %v, err %v", perr, *calls, c.Waits(), err)
		}
		if !errors.Is(err, perr) {
			t.Errorf("%v: the returned error does not wrap it", perr)
		}
	}
}

// TestRetryCancelDuringWait cancels while Retry waits on the real timer
// (a one-minute wait) and measures how long Retry takes to return.
func TestRetryCancelDuringWait(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	waiting := make(chan struct{})
	p := Policy{BaseDelay: time.Minute, MaxDelay: time.Minute}
	p.Sleep = func(ctx context.Context, d time.Duration) error {
		close(waiting)
		return sleepCtx(ctx, d)
	}
	op, _ := always(nats.ErrNoResponders)
	done := make(chan error, 1)
	go func() { done <- Retry(ctx, p, op) }()
	<-waiting

	t0 := time.Now()
	cancel()
	err := <-done
	took := time.Since(t0)
	t.Logf("Retry returned %v after cancel", took)
	if took > 10*ms {
		t.Errorf("Retry took %v to return after cancel, want <= 10ms", took)
	}
	var re *RetryError
	if !errors.As(err, &re) || re.Reason != StopContext || re.Attempts != 1 {
		t.Fatalf("err = %v, want StopContext after 1 attempt", err)
	}
	if !errors.Is(err, context.Canceled) || !errors.Is(err, nats.ErrNoResponders) {
		t.Errorf("err %v should wrap both context.Canceled and the last error", err)
	}
}

// TestRetryCallerContextDoneIsNotRetried: a DeadlineExceeded caused by the
// caller's own deadline ends the call, though row 5 calls it transient.
func TestRetryCallerContextDoneIsNotRetried(t *testing.T) {
	ctx, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	c := newFakeClock()
	p := DefaultPolicy()
	c.install(&p, 0)
	calls := 0
	err := Retry(ctx, p, func(ctx context.Context) error { calls++; return ctx.Err() })
	var re *RetryError
	if calls != 1 || !errors.As(err, &re) || re.Reason != StopContext || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("calls %d, err %v; want one call, StopContext", calls, err)
	}
}

// TestRetryAttemptTimeoutIsTransient: an attempt's own deadline is retried.
func TestRetryAttemptTimeoutIsTransient(t *testing.T) {
	c := newFakeClock()
	p := DefaultPolicy()
	p.AttemptTimeout = ms
	c.install(&p, 0)
	calls := 0
	err := Retry(context.Background(), p, func(ctx context.Context) error {
		calls++
		if _, ok := ctx.Deadline(); !ok {
			t.Error("attempt has no deadline")
		}
		if calls == 1 {
			<-ctx.Done() // the attempt's 1 ms deadline
			return ctx.Err()
		}
		return nil
	})
	if err != nil || calls != 2 {
		t.Errorf("err %v after %d calls, want nil after 2", err, calls)
	}
}

func TestRetryAfterHonouredAndClipped(t *testing.T) {
	s := time.Second
	tests := []struct {
		name   string
		err    error
		jitter float64
		want   time.Duration
	}{
		{"HTTP Retry-After", &HTTPError{Status: 503, RetryAfter: 3 * s}, 0, 3 * s},
		{"HTTP Retry-After spread", &HTTPError{Status: 429, RetryAfter: 2 * s}, 0.3, 2300 * ms},
		{"ServiceError hint", &ServiceError{Code: CodeUnavailable, RetryAfter: 2 * s}, 0, 2 * s},
		{"backoff.RetryAfter", MarkTransient(backoff.RetryAfter(4)), 0, 4 * s},
		{"clipped by MaxDelay", &HTTPError{Status: 503, RetryAfter: time.Hour}, 0.3, 5 * s},
		{"shorter than schedule", &HTTPError{Status: 503, RetryAfter: ms}, 0, 500 * ms},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newFakeClock()
			p := Policy{MaxDelay: 5 * s, Jitter: tt.jitter}
			c.install(&p, 0.5)
			op, _ := failing(tt.err)
			if err := Retry(context.Background(), p, op); err != nil {
				t.Fatal(err)
			}
			if w := c.Waits(); len(w) != 1 || w[0] != tt.want {
				t.Errorf("waits = %v, want [%v]", w, tt.want)
			}
		})
	}
}

func TestRetryValue(t *testing.T) {
	c := newFakeClock()
	p := DefaultPolicy()
	c.install(&p, 0)
	calls := 0
	v, err := RetryValue(context.Background(), p, func(context.Context) (string, error) {
		calls++
		if calls < 3 {
			return "", &HTTPError{Status: 502}
		}
		return "result", nil
	})
	if err != nil || v != "result" || calls != 3 {
		t.Errorf("RetryValue = %q, %v after %d calls", v, err, calls)
	}

	n, err := RetryValue(context.Background(), p, func(context.Context) (int, error) {
		return 7, &HTTPError{Status: 400}
	})
	if n != 7 || Classify(err) != ClassPermanent {
		t.Errorf("RetryValue = %d, %v; want the last value and a permanent error", n, err)
	}
}

func TestRetryInvalidPolicyDoesNotCall(t *testing.T) {
	op, calls := always(nil)
	err := Retry(context.Background(), Policy{Jitter: 2}, op)
	if !errors.Is(err, ErrInvalidConfig) || *calls != 0 {
		t.Errorf("err %v after %d calls, want ErrInvalidConfig and no call", err, *calls)
	}
}

func TestCallStatsMove(t *testing.T) {
	var stats CallStats
	c := newFakeClock()
	p := DefaultPolicy()
	p.Stats = &stats
	c.install(&p, 0)
	ctx := context.Background()

	if got := stats.Snapshot(); got != (CallCounts{}) {
		t.Fatalf("fresh snapshot = %+v", got)
	}
	op, _ := failing()
	_ = Retry(ctx, p, op) // ok
	op, _ = failing(nats.ErrTimeout, errors.New("mystery"))
	_ = Retry(ctx, p, op) // ok after 2 retries, one unknown error
	op, _ = always(&ServiceError{Code: CodeForbidden})
	_ = Retry(ctx, p, op) // failed, permanent

	want := CallCounts{OK: 2, Retried: 2, Failed: 1, Unknown: 1, LastErrorClass: "permanent"}
	if got := stats.Snapshot(); got != want {
		t.Errorf("snapshot = %+v, want %+v", got, want)
	}
	b, err := json.Marshal(stats.Snapshot())
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != `{"ok":2,"retried":2,"failed":1,"unknown":1,"last_error_class":"permanent"}` {
		t.Errorf("JSON = %s", b)
	}
	if b, _ := json.Marshal(CallCounts{}); string(b) != `{"ok":0,"retried":0,"failed":0,"unknown":0}` {
		t.Errorf("empty JSON = %s", b)
	}

	var nilStats *CallStats
	if nilStats.Snapshot() != (CallCounts{}) {
		t.Error("nil CallStats snapshot not zero")
	}
}

func TestCallStatsConcurrent(t *testing.T) {
	var stats CallStats
	p := Policy{Stats: &stats, BaseDelay: time.Nanosecond, MaxDelay: time.Nanosecond}
	p.Sleep = func(context.Context, time.Duration) error { return nil }
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 100 {
				op, _ := failing(nats.ErrTimeout)
				_ = Retry(context.Background(), p, op)
				_ = stats.Snapshot()
			}
		})
	}
	wg.Wait()
	if got := stats.Snapshot(); got.OK != 800 || got.Retried != 800 || got.LastErrorClass != "transient" {
		t.Errorf("snapshot = %+v", got)
	}
}

// logLines decodes the JSON lines a logger wrote.
func logLines(t *testing.T, buf *bytes.Buffer) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		if l == "" {
			continue
		}
		m := map[string]any{}
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("bad log line %q: %v", l, err)
		}
		out = append(out, m)
	}
	return out
}

func TestRetryLogsOneLinePerRetry(t *testing.T) {
	var buf bytes.Buffer
	c := newFakeClock()
	p := ArticlePolicy()
	p.Op = "search"
	p.Logger = zerolog.New(&buf)
	c.install(&p, 0)
	op, _ := always(&HTTPError{Status: 503})
	err := Retry(context.Background(), p, op)

	lines := logLines(t, &buf)
	if len(lines) != 5 {
		t.Fatalf("%d log lines, want 4 retries + 1 failure:\n%s", len(lines), buf.String())
	}
	for i, l := range lines[:4] {
		if l["level"] != "warn" || l["op"] != "search" || l["attempt"] != float64(i+1) || l["max_attempts"] != float64(5) ||
			l["class"] != "transient" || l["error"] != "agentproto: HTTP 503 Service Unavailable" ||
			l["delay_ms"] != float64(int(500)<<i) || l["rule"] != "HTTP 408/429/500/502/503/504" {
			t.Errorf("retry line %d = %v", i, l)
		}
	}
	last := lines[4]
	if last["level"] != "error" || last["attempts"] != float64(5) || last["elapsed_ms"] != float64(7500) ||
		last["reason"] != string(StopAttempts) || last["op"] != "search" {
		t.Errorf("final line = %v", last)
	}
	want := "agentproto: search: attempts exhausted after 5 attempts in 7.5s: agentproto: HTTP 503 Service Unavailable"
	if err.Error() != want {
		t.Errorf("error = %q\nwant    %q", err, want)
	}

	buf.Reset()
	op, _ = failing(nats.ErrNoResponders)
	_ = Retry(context.Background(), p, op)
	lines = logLines(t, &buf)
	if len(lines) != 2 || lines[1]["level"] != "info" || lines[1]["attempts"] != float64(2) {
		t.Errorf("recovered call logged %v", lines)
	}

	buf.Reset()
	op, _ = failing()
	_ = Retry(context.Background(), p, op)
	if buf.Len() != 0 {
		t.Errorf("first-attempt success logged %q", buf.String())
	}
}

func TestRetryErrorMessages(t *testing.T) {
	e := &RetryError{Op: "call", Attempts: 1, Elapsed: 1234567 * time.Microsecond, Reason: StopPermanent, Err: errors.New("boom")}
	if got := e.Error(); got != "agentproto: call: permanent error after 1 attempt in 1.235s: boom" {
		t.Errorf("Error() = %q", got)
	}
	e = &RetryError{Op: "call", Attempts: 2, Reason: StopContext, Err: errors.New("boom"), Cause: context.Canceled}
	if got := e.Error(); got != "agentproto: call: context done after 2 attempts in 0s (context canceled): boom" {
		t.Errorf("Error() = %q", got)
	}
}
