package agentproto

import (
	"testing"
	"time"
)

func TestReconnectDelay(t *testing.T) {
	ms := time.Millisecond
	for _, tc := range []struct {
		n         int
		base, max time.Duration
		jitter, u float64
		want      time.Duration
	}{
		{1, 50 * ms, 2 * time.Second, 0, 0, 50 * ms},
		{2, 50 * ms, 2 * time.Second, 0, 0, 100 * ms},
		{6, 50 * ms, 2 * time.Second, 0, 0, 1600 * ms},
		{7, 50 * ms, 2 * time.Second, 0, 0, 2 * time.Second}, // capped
		{200, 50 * ms, 2 * time.Second, 0, 0, 2 * time.Second},
		{0, 50 * ms, 2 * time.Second, 0, 0, 50 * ms},           // n < 1 is the first attempt
		{1, 100 * ms, time.Second, 0.5, 0.999999, 50*ms + 100}, // at most half taken off
		{3, 100 * ms, time.Second, 0.5, 0.5, 300 * ms},
		{3, 100 * ms, time.Second, 1, 0.5, 200 * ms},
		{10, 100 * ms, time.Second, 0.5, 0, time.Second}, // jitter never exceeds the cap
	} {
		got := ReconnectDelay(tc.n, tc.base, tc.max, tc.jitter, tc.u)
		if d := got - tc.want; d < -time.Microsecond || d > time.Microsecond {
			t.Errorf("ReconnectDelay(%d, %v, %v, %v, %v) = %v, want %v", tc.n, tc.base, tc.max, tc.jitter, tc.u, got, tc.want)
		}
	}
}

func TestBlackHoleBound(t *testing.T) {
	for _, tc := range []struct {
		interval time.Duration
		maxOut   int
		want     time.Duration
	}{
		{time.Second, 2, 3 * time.Second},
		{900 * time.Millisecond, 2, 2700 * time.Millisecond}, // our default: ≤ 3 s
		{2 * time.Minute, 2, 6 * time.Minute},                // nats.go's default
		{100 * time.Millisecond, 1, 200 * time.Millisecond},
	} {
		if got := BlackHoleBound(tc.interval, tc.maxOut); got != tc.want {
			t.Errorf("BlackHoleBound(%v, %d) = %v, want %v", tc.interval, tc.maxOut, got, tc.want)
		}
	}
	if b := BlackHoleBound(DefaultPingInterval, DefaultMaxPingsOut); b > 3*time.Second {
		t.Fatalf("default black-hole bound %v exceeds 3 s", b)
	}
}

func TestJudgeProbe(t *testing.T) {
	for _, tc := range []struct {
		back           bool
		atSend, now    uint64
		want           subVerdict
		fails, wantNew int
	}{
		{true, 5, 5, probeOK, 2, 0},
		{true, 5, 9, probeOK, 2, 0},
		{false, 5, 9, probeBusy, 2, 2}, // slow handler: inconclusive, count kept
		{false, 5, 5, probeLost, 2, 3}, // wedged or dropped
		{false, 0, 0, probeLost, 0, 1},
	} {
		v := judgeProbe(tc.back, tc.atSend, tc.now)
		if v != tc.want {
			t.Errorf("judgeProbe(%v, %d, %d) = %v, want %v", tc.back, tc.atSend, tc.now, v, tc.want)
		}
		if got := nextFailures(tc.fails, v); got != tc.wantNew {
			t.Errorf("nextFailures(%d, %v) = %d, want %d", tc.fails, v, got, tc.wantNew)
		}
	}
}

func TestReconnectingTooLong(t *testing.T) {
	t0 := time.Unix(1000, 0)
	for _, tc := range []struct {
		since time.Time
		now   time.Duration
		limit time.Duration
		want  bool
	}{
		{time.Time{}, time.Hour, time.Minute, false}, // not reconnecting
		{t0, 59 * time.Second, time.Minute, false},
		{t0, time.Minute, time.Minute, true},
		{t0, time.Hour, -1, false}, // never
	} {
		if got := reconnectingTooLong(tc.since, t0.Add(tc.now), tc.limit); got != tc.want {
			t.Errorf("reconnectingTooLong(%v, +%v, %v) = %v, want %v", tc.since, tc.now, tc.limit, got, tc.want)
		}
	}
}

func TestCommandDelay(t *testing.T) {
	now := time.Unix(1000, 0)
	for _, tc := range []struct {
		nb   time.Time
		want time.Duration
	}{
		{time.Time{}, 0},
		{now.Add(-time.Second), 0},
		{now.Add(250 * time.Millisecond), 250 * time.Millisecond},
	} {
		if got := commandDelay(tc.nb, now); got != tc.want {
			t.Errorf("commandDelay(%v) = %v, want %v", tc.nb, got, tc.want)
		}
	}
}

func TestDelayBackOffNeverStops(t *testing.T) {
	b := &delayBackOff{base: time.Millisecond, max: 8 * time.Millisecond}
	var last time.Duration
	for i := 0; i < 100; i++ {
		last = b.NextBackOff()
		if last < 0 {
			t.Fatalf("attempt %d: NextBackOff = %v (Stop)", i+1, last)
		}
	}
	if last != 8*time.Millisecond {
		t.Fatalf("capped delay = %v, want 8ms", last)
	}
	b.Reset()
	if d := b.NextBackOff(); d != time.Millisecond {
		t.Fatalf("after Reset: %v, want 1ms", d)
	}
}
