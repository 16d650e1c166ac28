package agentproto

import (
	"fmt"
	"math"
	"slices"
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

func TestReconnectWindow(t *testing.T) {
	ms := time.Millisecond
	for _, tc := range []struct {
		fleet, rate int
		minW, maxW  time.Duration
		want        time.Duration
	}{
		{1000, 2500, 100 * ms, 30 * time.Second, 400 * ms}, // the defaults
		{10000, 2500, 100 * ms, 30 * time.Second, 4 * time.Second},
		{10, 2500, 100 * ms, 30 * time.Second, 100 * ms},                // small fleet: the floor
		{1_000_000, 2500, 100 * ms, 30 * time.Second, 30 * time.Second}, // capped
		{0, 2500, 100 * ms, time.Second, 100 * ms},
		{1000, 0, 100 * ms, time.Second, 100 * ms},
		{1000, 2500, 10 * ms, 50 * ms, 50 * ms}, // millisecond test timings
	} {
		if got := ReconnectWindow(tc.fleet, tc.rate, tc.minW, tc.maxW); got != tc.want {
			t.Errorf("ReconnectWindow(%d, %d, %v, %v) = %v, want %v", tc.fleet, tc.rate, tc.minW, tc.maxW, got, tc.want)
		}
	}
}

func TestSlotDelay(t *testing.T) {
	ms := time.Millisecond
	w := 400 * ms
	base := time.Unix(1_700_000_000, 0) // a multiple of w
	for _, tc := range []struct {
		now   time.Time
		phase time.Duration
		want  time.Duration
	}{
		{base, 0, w},                    // exactly on the slot: the next one, never 0
		{base.Add(1 * ms), 0, 399 * ms}, // just past it
		{base.Add(399 * ms), 0, 1 * ms}, // just before the next
		{base, 150 * ms, 150 * ms},      // phase ahead
		{base.Add(200 * ms), 150 * ms, 350 * ms},
		{base.Add(150 * ms), 150 * ms, w},
		{time.Unix(0, 100), 300 * ms, 300*ms - 100}, // near the epoch
	} {
		if got := SlotDelay(tc.now, w, tc.phase); got != tc.want {
			t.Errorf("SlotDelay(%v, %v, %v) = %v, want %v", tc.now.UnixNano(), w, tc.phase, got, tc.want)
		}
	}
	if d := SlotDelay(base, 0, 0); d != 0 {
		t.Errorf("zero window: %v", d)
	}
	// Successive attempts from any start land exactly one window apart on
	// the agent's phase: the attempt after the one at t is at t + w.
	now := base.Add(37 * ms)
	for i := 0; i < 5; i++ {
		now = now.Add(SlotDelay(now, w, 90*ms))
		if got := time.Duration(now.UnixNano() % int64(w)); got != 90*ms {
			t.Fatalf("attempt %d at phase %v, want 90ms", i, got)
		}
	}
}

// The phases of a 10,000-agent fleet with sequential ids spread its
// connects over the window like independent uniform draws: no 100 ms
// bucket of the 4 s window holds more than its mean (250) plus five
// binomial standard deviations, and none is empty. The bound is the
// design's, not a fit to these ids.
func TestReconnectPhaseSpread(t *testing.T) {
	const agents, buckets = 10000, 40
	w := ReconnectWindow(agents, DefaultConnectRate, DefaultReconnectWait, DefaultMaxReconnectWait)
	if w != 4*time.Second {
		t.Fatalf("window %v", w)
	}
	count := make([]int, buckets)
	for i := range agents {
		p := ReconnectPhase(fmt.Sprintf("agent-%05d", i), w)
		if p < 0 || p >= w {
			t.Fatalf("phase %v outside [0, %v)", p, w)
		}
		count[int(p/(w/buckets))]++
	}
	mean := float64(agents) / buckets
	limit := int(mean + 5*math.Sqrt(mean*(1-1.0/buckets)))
	peak, low := slices.Max(count), slices.Min(count)
	t.Logf("per 100 ms: mean %.0f, max %d, min %d (limit %d)", mean, peak, low, limit)
	if peak > limit || low == 0 {
		t.Fatalf("phases not spread: max %d (limit %d), min %d", peak, limit, low)
	}
	if ReconnectPhase("a7", w) != ReconnectPhase("a7", w) || ReconnectPhase("a7", 0) != 0 {
		t.Fatal("phase not a pure function of the id")
	}
}

func TestSlotBackOffNeverStops(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	b := &slotBackOff{window: 8 * time.Millisecond, phase: 3 * time.Millisecond, now: func() time.Time { return now }}
	for i := 0; i < 100; i++ {
		d := b.NextBackOff()
		if d <= 0 || d > 8*time.Millisecond {
			t.Fatalf("attempt %d: NextBackOff = %v", i+1, d)
		}
		now = now.Add(d)
	}
	b.Reset()
	if d := b.NextBackOff(); d != 8*time.Millisecond {
		t.Fatalf("on the slot: %v, want a full window", d)
	}
}
