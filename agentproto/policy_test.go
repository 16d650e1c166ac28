package agentproto

import (
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v5"
)

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
