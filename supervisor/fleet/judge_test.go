package fleet

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
)

const ms = time.Millisecond

func TestEffectiveInterval(t *testing.T) {
	for _, tc := range []struct {
		configured time.Duration
		reported   int64
		want       time.Duration
	}{
		{5 * time.Second, 0, 5 * time.Second},
		{5 * time.Second, -3, 5 * time.Second},
		{5 * time.Second, 2000, 2 * time.Second},
		{5 * time.Second, 30000, 30 * time.Second},
		{5 * time.Second, 1, 500 * ms},               // clamped to configured/10
		{5 * time.Second, 3600000, 50 * time.Second}, // clamped to configured*10
	} {
		if got := effectiveInterval(tc.configured, tc.reported); got != tc.want {
			t.Errorf("effectiveInterval(%v, %d) = %v, want %v", tc.configured, tc.reported, got, tc.want)
		}
	}
}

func TestLiveness(t *testing.T) {
	const i = 5 * time.Second
	for _, tc := range []struct {
		silence time.Duration
		want    State
	}{
		{0, StateHealthy},
		{i, StateHealthy},
		{2*i - ms, StateHealthy},
		{2 * i, StateSuspect},
		{3*i - ms, StateSuspect},
		{3 * i, StateLost},
		{time.Hour - ms, StateLost},
		{time.Hour, StateGone},
	} {
		if got := liveness(tc.silence, i, 2, 3, time.Hour); got != tc.want {
			t.Errorf("liveness(%v) = %v, want %v", tc.silence, got, tc.want)
		}
	}
}

func TestDeriveState(t *testing.T) {
	for _, tc := range []struct {
		live              State
		zombie, quarantin bool
		want              State
	}{
		{StateHealthy, false, false, StateHealthy},
		{StateSuspect, false, false, StateSuspect},
		{StateHealthy, true, false, StateZombie},
		{StateSuspect, true, false, StateZombie},
		{StateLost, true, false, StateLost},
		{StateLost, false, true, StateQuarantined},
		{StateHealthy, true, true, StateQuarantined},
		{StateGone, true, true, StateGone},
	} {
		if got := deriveState(tc.live, tc.zombie, tc.quarantin); got != tc.want {
			t.Errorf("deriveState(%v, zombie %v, quarantined %v) = %v, want %v", tc.live, tc.zombie, tc.quarantin, got, tc.want)
		}
	}
}

func TestZombieDueAndOverdue(t *testing.T) {
	at := func(ts ...int64) []probeRec {
		var out []probeRec
		for i, x := range ts {
			out = append(out, probeRec{seq: uint64(i + 1), at: x * int64(ms)})
		}
		return out
	}
	const timeout = 100 * ms
	for _, tc := range []struct {
		sent    []probeRec
		now     int64
		n       int
		want    bool
		overdue int
	}{
		{nil, 1000, 3, false, 0},
		{at(0, 50), 1000, 3, false, 2},         // only two unanswered
		{at(0, 50, 100), 199, 3, false, 2},     // third not yet overdue
		{at(0, 50, 100), 200, 3, true, 3},      // third overdue: zombie
		{at(0, 50, 100, 150), 200, 3, true, 3}, // a fourth is still within its time
		{at(0), 100, 1, true, 1},               // ZombieAfter 1
		{at(0, 50, 100), 1000, 0, false, 3},    // n 0 never
	} {
		now := tc.now * int64(ms)
		if got := zombieDue(tc.sent, now, timeout, tc.n); got != tc.want {
			t.Errorf("zombieDue(%v, now %d, n %d) = %v, want %v", tc.sent, tc.now, tc.n, got, tc.want)
		}
		if got := overdueProbes(tc.sent, now, timeout); got != tc.overdue {
			t.Errorf("overdueProbes(%v, now %d) = %d, want %d", tc.sent, tc.now, got, tc.overdue)
		}
	}
}

func TestIntensity(t *testing.T) {
	s := int64(time.Second)
	for _, tc := range []struct {
		events []int64
		now    int64
		k      int
		kept   int
		over   bool
	}{
		{nil, 10 * s, 3, 0, false},
		{[]int64{1 * s, 2 * s, 3 * s}, 4 * s, 3, 3, false},
		{[]int64{1 * s, 2 * s, 3 * s, 4 * s}, 5 * s, 3, 4, true},
		{[]int64{1 * s, 2 * s, 3 * s, 4 * s}, 11 * s, 3, 3, false}, // the first fell out of the 10 s period
		{[]int64{1 * s, 2 * s}, 100 * s, 0, 0, false},
		{[]int64{95 * s}, 100 * s, 0, 1, true},
	} {
		kept, over := intensity(append([]int64(nil), tc.events...), tc.now, 10*time.Second, tc.k)
		if len(kept) != tc.kept || over != tc.over {
			t.Errorf("intensity(%v, now %v, k %d) = %d kept, over %v; want %d, %v", tc.events, tc.now, tc.k, len(kept), over, tc.kept, tc.over)
		}
	}
}

func TestSpreadFor(t *testing.T) {
	for _, tc := range []struct {
		backlog int
		rate    float64
		max     time.Duration
		want    time.Duration
	}{
		{0, 100, time.Minute, 0},
		{1, 100, time.Minute, 0},
		{1000, 100, time.Minute, 10 * time.Second},
		{1000, 500, time.Minute, 2 * time.Second},
		{100000, 100, 30 * time.Second, 30 * time.Second},
		{1000, 0, time.Minute, 0},
	} {
		if got := spreadFor(tc.backlog, tc.rate, tc.max); got != tc.want {
			t.Errorf("spreadFor(%d, %v, %v) = %v, want %v", tc.backlog, tc.rate, tc.max, got, tc.want)
		}
	}
}

func TestHashOffsetIsStableAndSpreads(t *testing.T) {
	const spread, n, buckets = 10 * time.Second, 10000, 10
	if hashOffset("a1", 0) != 0 || hashOffset("a1", spread) != hashOffset("a1", spread) {
		t.Fatal("offset not stable")
	}
	var count [buckets]int
	for i := 0; i < n; i++ {
		d := hashOffset(fmt.Sprintf("agent-%d", i), spread)
		if d < 0 || d >= spread {
			t.Fatalf("offset %v outside [0, %v)", d, spread)
		}
		count[d*buckets/spread]++
	}
	for b, c := range count {
		if c < n/buckets*8/10 || c > n/buckets*12/10 {
			t.Errorf("bucket %d has %d of %d offsets: not an even spread %v", b, c, n, count)
		}
	}
}

func TestMassSilent(t *testing.T) {
	for _, tc := range []struct {
		silent, candidates, min int
		share                   float64
		want                    bool
	}{
		{0, 0, 20, 0.5, false},
		{10, 10, 20, 0.5, false}, // too small a fleet to tell
		{9, 20, 20, 0.5, false},
		{10, 20, 20, 0.5, true},
		{600, 1000, 20, 0.5, true},
		{1, 1000, 20, 0.5, false},
		{1, 1, 1, 1, true},
	} {
		if got := massSilent(tc.silent, tc.candidates, tc.min, tc.share); got != tc.want {
			t.Errorf("massSilent(%d of %d, min %d, share %v) = %v, want %v", tc.silent, tc.candidates, tc.min, tc.share, got, tc.want)
		}
	}
}

func TestTokenBucket(t *testing.T) {
	s := int64(time.Second)
	b := newTokenBucket(10, 2, 0)
	steps := []struct {
		at   int64
		want bool
	}{
		{0, true}, {0, true}, {0, false}, // the burst
		{s / 20, false},                 // half a token
		{s / 10, true}, {s / 10, false}, // one token per 100 ms
		{s, true}, {s, true}, {s, false}, // refilled to the burst, not beyond
	}
	for i, st := range steps {
		if got := b.take(st.at); got != st.want {
			t.Errorf("step %d: take(%v) = %v, want %v", i, time.Duration(st.at), got, st.want)
		}
	}
}

func TestStateNames(t *testing.T) {
	for s := StateHealthy; s < numStates; s++ {
		b, _ := json.Marshal(s)
		var back State
		if err := json.Unmarshal(b, &back); err != nil || back != s {
			t.Errorf("%v: %s -> %v, %v", s, b, back, err)
		}
	}
	var st State
	if err := json.Unmarshal([]byte(`"asleep"`), &st); err == nil {
		t.Error("unknown state accepted")
	}
}

func TestFleetConfigValidate(t *testing.T) {
	for field, mut := range map[string]func(*Config){
		"HeartbeatInterval": func(c *Config) { c.HeartbeatInterval = 0 },
		"LostAfter":         func(c *Config) { c.LostAfter = c.SuspectAfter },
		"SuspectAfter":      func(c *Config) { c.SuspectAfter = 0 },
		"ZombieAfter":       func(c *Config) { c.ZombieAfter = MaxZombieAfter + 1 },
		"ProbeTimeout":      func(c *Config) { c.ProbeTimeout = c.HeartbeatInterval / 2 },
		"GoneAfter":         func(c *Config) { c.GoneAfter = c.LostWindow() },
		"ForgetAfter":       func(c *Config) { c.ForgetAfter = c.GoneAfter / 2 },
		"CheckInterval":     func(c *Config) { c.CheckInterval = 2 * c.HeartbeatInterval },
		"ResendInterval":    func(c *Config) { c.ResendInterval = c.HeartbeatInterval / 2 },
		"RecoveryRate":      func(c *Config) { c.RecoveryRate = 0 },
		"QuarantineAfter":   func(c *Config) { c.QuarantineAfter = 0 },
		"MassSilenceShare":  func(c *Config) { c.MassSilenceShare = 1.5 },
		"MaxPending":        func(c *Config) { c.MaxPending = 0 },
		"PersistInterval":   func(c *Config) { c.PersistInterval = -1 },
	} {
		c := DefaultConfig()
		mut(&c)
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), "Fleet."+field) {
			t.Errorf("%s: got %v, want an error naming Fleet.%s", field, err, field)
		}
	}
	c := DefaultConfig()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	c.ForgetAfter = 0 // keep gone agents forever
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
}

func ExampleDefaultConfig() {
	c := DefaultConfig()
	fmt.Println("heartbeat", c.HeartbeatInterval, "suspect after", c.SuspectAfter, "lost after", c.LostAfter,
		"zombie after", c.ZombieAfter, "probes; lost window", c.LostWindow())
	// Output: heartbeat 5s suspect after 2 lost after 3 zombie after 3 probes; lost window 15s
}
