package agentproto

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math/rand/v2"
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

func TestExpDelay(t *testing.T) {
	tests := []struct {
		base, max time.Duration
		n         int
		want      time.Duration
	}{
		{500 * ms, 30 * time.Second, 0, 500 * ms},
		{500 * ms, 30 * time.Second, 1, time.Second},
		{500 * ms, 30 * time.Second, 3, 4 * time.Second},
		{500 * ms, 30 * time.Second, 6, 30 * time.Second}, // 32 s capped
		{500 * ms, 30 * time.Second, 62, 30 * time.Second},
		{500 * ms, 30 * time.Second, 1000, 30 * time.Second}, // no overflow
		{time.Duration(1 << 40), time.Duration(1<<62 + 1), 30, time.Duration(1<<62 + 1)},
		{0, time.Second, 5, 0},
	}
	for _, tt := range tests {
		if got := expDelay(tt.base, tt.max, tt.n); got != tt.want {
			t.Errorf("expDelay(%v, %v, %d) = %v, want %v", tt.base, tt.max, tt.n, got, tt.want)
		}
	}
}

func TestAdditiveJitter(t *testing.T) {
	tests := []struct {
		d, max time.Duration
		j, u   float64
		want   time.Duration
	}{
		{500 * ms, 30 * time.Second, 0.3, 0, 500 * ms},
		{500 * ms, 30 * time.Second, 0.3, 0.5, 575 * ms},
		{500 * ms, 30 * time.Second, 0.3, 1, 650 * ms}, // the supremum
		{4 * time.Second, 30 * time.Second, 0.3, 1, 5200 * ms},
		{4 * time.Second, 30 * time.Second, 0, 0.9, 4 * time.Second},
		{time.Second, time.Second, 1, 0, 500 * ms}, // lowered to max/(1+j)
		{time.Second, time.Second, 1, 1, time.Second},
		{20 * time.Second, 13 * time.Second, 0.3, 0, 10 * time.Second},
		{20 * time.Second, 13 * time.Second, 0.3, 1, 13 * time.Second},
	}
	for _, tt := range tests {
		if got := additiveJitter(tt.d, tt.max, tt.j, tt.u); got != tt.want {
			t.Errorf("additiveJitter(%v, %v, %v, %v) = %v, want %v", tt.d, tt.max, tt.j, tt.u, got, tt.want)
		}
	}
}

func TestFullJitter(t *testing.T) {
	tests := []struct {
		d    time.Duration
		u    float64
		want time.Duration
	}{
		{time.Second, 0, 0},
		{time.Second, 0.25, 250 * ms},
		{time.Second, 0.5, 500 * ms},
		{4 * time.Second, 0.75, 3 * time.Second},
	}
	for _, tt := range tests {
		if got := fullJitter(tt.d, tt.u); got != tt.want {
			t.Errorf("fullJitter(%v, %v) = %v, want %v", tt.d, tt.u, got, tt.want)
		}
	}
}

func TestDecorrelatedJitter(t *testing.T) {
	tests := []struct {
		prev, base, max time.Duration
		u               float64
		want            time.Duration
	}{
		{500 * ms, 500 * ms, 30 * time.Second, 0, 500 * ms},                 // low end: base
		{500 * ms, 500 * ms, 30 * time.Second, 0.5, time.Second},            // U[0.5, 1.5]
		{500 * ms, 500 * ms, 30 * time.Second, 1, 1500 * ms},                // 3·prev
		{4 * time.Second, 500 * ms, 30 * time.Second, 0.5, 6250 * ms},       // U[0.5, 12]
		{20 * time.Second, 500 * ms, 30 * time.Second, 1, 30 * time.Second}, // capped
		{100 * ms, 500 * ms, 30 * time.Second, 0.7, 500 * ms},               // 3·prev < base
	}
	for _, tt := range tests {
		if got := decorrelatedJitter(tt.prev, tt.base, tt.max, tt.u); got != tt.want {
			t.Errorf("decorrelatedJitter(%v, %v, %v, %v) = %v, want %v", tt.prev, tt.base, tt.max, tt.u, got, tt.want)
		}
	}
}

func TestRetryAfterDelay(t *testing.T) {
	tests := []struct {
		name       string
		d, ra, max time.Duration
		j, u       float64
		want       time.Duration
	}{
		{"no hint keeps schedule", 500 * ms, 0, 5 * time.Second, 0.3, 0.5, 500 * ms},
		{"hint above schedule", 500 * ms, 2 * time.Second, 5 * time.Second, 0, 0.5, 2 * time.Second},
		{"hint spread by jitter", 500 * ms, 2 * time.Second, 5 * time.Second, 0.3, 0.5, 2300 * ms},
		{"hint below schedule", 4 * time.Second, time.Second, 5 * time.Second, 0.3, 0.5, 4 * time.Second},
		{"hint clipped to max", 500 * ms, time.Minute, 5 * time.Second, 0.3, 0.5, 5 * time.Second},
		{"spread clipped to max", 500 * ms, 4 * time.Second, 5 * time.Second, 0.5, 1, 5 * time.Second},
	}
	for _, tt := range tests {
		if got := retryAfterDelay(tt.d, tt.ra, tt.max, tt.j, tt.u); got != tt.want {
			t.Errorf("%s: retryAfterDelay = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// drain returns every wait a BackOff hands out before Stop (at most 100).
func drain(b backoff.BackOff) []time.Duration {
	var out []time.Duration
	for range 100 {
		d := b.NextBackOff()
		if d == backoff.Stop {
			break
		}
		out = append(out, d)
	}
	return out
}

func TestScheduleSequences(t *testing.T) {
	s := time.Second
	tests := []struct {
		name string
		p    Policy
		u    float64
		want []time.Duration
	}{
		{"article, u=0", ArticlePolicy(), 0, []time.Duration{500 * ms, s, 2 * s, 4 * s}},
		{"article, u=0.5", ArticlePolicy(), 0.5, []time.Duration{575 * ms, 1150 * ms, 2300 * ms, 4600 * ms}},
		{"default is the article's", DefaultPolicy(), 0.5, []time.Duration{575 * ms, 1150 * ms, 2300 * ms, 4600 * ms}},
		{"zero policy: no jitter", Policy{JitterMode: JitterAdditive}, 0.9, []time.Duration{500 * ms, s, 2 * s, 4 * s}},
		{"none", Policy{JitterMode: JitterNone, Jitter: 0.3, MaxAttempts: 8, MaxDelay: 10 * s}, 0.9,
			[]time.Duration{500 * ms, s, 2 * s, 4 * s, 8 * s, 10 * s, 10 * s}},
		{"full, u=0.5", Policy{JitterMode: JitterFull}, 0.5, []time.Duration{250 * ms, 500 * ms, s, 2 * s}},
		{"decorrelated, u=0.5", Policy{JitterMode: JitterDecorrelated}, 0.5,
			// prev 0.5 → U[0.5,1.5]=1 → U[0.5,3]=1.75 → U[0.5,5.25]=2.875 → U[0.5,8.625]=4.5625
			[]time.Duration{s, 1750 * ms, 2875 * ms, 4562500 * time.Microsecond}},
		{"one attempt: no retry", Policy{MaxAttempts: 1}, 0, nil},
		{"config block", mustPolicy(t, 3, 100*ms, 300*ms, 0.5), 1,
			// 100·1.5; 200 lowered to 300/1.5 = 200 → 300
			[]time.Duration{150 * ms, 300 * ms}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := tt.p
			p.Rand = func() float64 { return tt.u }
			got := drain(p.BackOff())
			if !equalDurations(got, tt.want) {
				t.Errorf("waits = %v, want %v", got, tt.want)
			}
		})
	}
}

func mustPolicy(t *testing.T, attempts int, base, maxD time.Duration, jitter float64) Policy {
	t.Helper()
	p, err := NewPolicy(attempts, base, maxD, jitter)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func equalDurations(a, b []time.Duration) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestScheduleReset(t *testing.T) {
	p := Policy{JitterMode: JitterDecorrelated, Rand: func() float64 { return 0.5 }}
	b := p.BackOff()
	first := drain(b)
	b.Reset()
	if again := drain(b); !equalDurations(first, again) {
		t.Errorf("after Reset waits = %v, want %v", again, first)
	}
}

// TestJitterBounds draws many schedules from a seeded source and checks
// every wait against its mode's bounds.
func TestJitterBounds(t *testing.T) {
	const base, maxD = 500 * ms, 10 * time.Second
	rng := rand.New(rand.NewPCG(1, 2))
	for _, mode := range []JitterMode{JitterNone, JitterAdditive, JitterFull, JitterDecorrelated} {
		p := Policy{MaxAttempts: 12, BaseDelay: base, MaxDelay: maxD, Jitter: 0.3, JitterMode: mode, Rand: rng.Float64}
		for range 2000 {
			prev := base
			for n, d := range drain(p.BackOff()) {
				exp := expDelay(base, maxD, n)
				var lo, hi time.Duration
				switch mode {
				case JitterNone:
					lo, hi = exp, exp
				case JitterAdditive:
					lim := float64(maxD) / 1.3
					c := min(exp, time.Duration(lim))
					lo, hi = c, min(c+scale(c, 0.3), maxD)
				case JitterFull:
					lo, hi = 0, exp
				case JitterDecorrelated:
					lo, hi = base, min(3*prev, maxD)
				}
				if d < lo || d > hi || d > maxD {
					t.Fatalf("%s: wait %d = %v outside [%v, %v]", mode, n, d, lo, hi)
				}
				prev = d
			}
		}
	}
}

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

func TestValidate(t *testing.T) {
	tests := []struct {
		p     Policy
		field string
	}{
		{Policy{BaseDelay: -1}, "base_delay"},
		{Policy{MaxDelay: -1}, "max_delay"},
		{Policy{BaseDelay: time.Minute}, "max_delay"}, // above the 30 s default max
		{Policy{BaseDelay: 2 * time.Second, MaxDelay: time.Second}, "max_delay"},
		{Policy{MaxElapsed: -1}, "max_elapsed"},
		{Policy{AttemptTimeout: -1}, "attempt_timeout"},
		{Policy{Jitter: -0.1}, "jitter"},
		{Policy{Jitter: 1.01}, "jitter"},
		{Policy{Jitter: nan()}, "jitter"},
		{Policy{JitterMode: 9}, "jitter_mode"},
	}
	for _, tt := range tests {
		err := tt.p.Validate()
		if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tt.field) {
			t.Errorf("Validate(%+v) = %v, want an error naming %s", tt.p, err, tt.field)
		}
	}
	for _, p := range []Policy{{}, DefaultPolicy(), ArticlePolicy(), {MaxAttempts: -1, Jitter: 1}} {
		if err := p.Validate(); err != nil {
			t.Errorf("Validate(%+v) = %v", p, err)
		}
	}
}

func nan() float64 { z := 0.0; return z / z }

func TestNewPolicy(t *testing.T) {
	p, err := NewPolicy(3, 200*ms, 5*time.Second, 0.2)
	if err != nil {
		t.Fatal(err)
	}
	if p.MaxAttempts != 3 || p.BaseDelay != 200*ms || p.MaxDelay != 5*time.Second || p.Jitter != 0.2 ||
		p.JitterMode != DefaultJitterMode || p.MaxElapsed != DefaultMaxElapsed {
		t.Errorf("NewPolicy = %+v", p)
	}
	d, err := NewPolicy(0, 0, 0, 0)
	if err != nil || d.MaxAttempts != DefaultMaxAttempts || d.BaseDelay != DefaultBaseDelay || d.MaxDelay != DefaultMaxDelay || d.Jitter != 0 {
		t.Errorf("NewPolicy(0,0,0,0) = %+v, %v: want defaults with no jitter", d, err)
	}
	if _, err := NewPolicy(5, 10*time.Second, 5*time.Second, 0.3); err == nil || !strings.Contains(err.Error(), "max_delay") {
		t.Errorf("base above max: err = %v", err)
	}
	if _, err := NewPolicy(5, 0, 0, 1.5); err == nil || !strings.Contains(err.Error(), "jitter") {
		t.Errorf("jitter 1.5: err = %v", err)
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

// TestBackOffDrivesLibraryRetry: the schedule plugs into backoff.Retry.
func TestBackOffDrivesLibraryRetry(t *testing.T) {
	p := Policy{MaxAttempts: 3, BaseDelay: time.Microsecond, MaxDelay: time.Microsecond, JitterMode: JitterNone}
	calls := 0
	_, err := backoff.Retry(context.Background(), func() (int, error) {
		calls++
		return 0, errors.New("fail")
	}, backoff.WithBackOff(p.BackOff()), backoff.WithMaxElapsedTime(0))
	if err == nil || calls != 3 {
		t.Errorf("backoff.Retry made %d calls, err %v; want 3 calls", calls, err)
	}
}

func TestJitterModeText(t *testing.T) {
	for _, m := range []JitterMode{JitterAdditive, JitterNone, JitterFull, JitterDecorrelated} {
		b, err := m.MarshalText()
		if err != nil {
			t.Fatal(err)
		}
		var back JitterMode
		if err := back.UnmarshalText(b); err != nil || back != m {
			t.Errorf("%s round trip = %v, %v", m, back, err)
		}
	}
	var m JitterMode
	if err := m.UnmarshalText([]byte("equal")); err == nil {
		t.Error("UnmarshalText(equal) succeeded")
	}
	if _, err := JitterMode(9).MarshalText(); err == nil {
		t.Error("MarshalText(9) succeeded")
	}
}
