package fleetsim_test

import (
	"fmt"
	"time"

	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/internal/fleetsim"
)

// Without jitter, 1,000 agents that failed together all come back in the
// same 100 ms window.
func ExampleSimulate() {
	p := agentproto.DefaultPolicy()
	p.MaxAttempts = -1 // keep retrying
	p.JitterMode = agentproto.JitterNone
	r, err := fleetsim.Simulate(fleetsim.Config{Policy: p, Outage: 10 * time.Second})
	fmt.Println(r.PeakAfterOutage, r.AllDone, r.Attempts, err)
	// Output: 1000 15.5s 6000 <nil>
}

// PeakPer counts events per window from a start: here three connects in
// the first 100 ms and one in the next.
func ExamplePeakPer() {
	t0 := time.Unix(0, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	ts := []time.Time{at(10), at(50), at(99), at(150)}
	fmt.Println(fleetsim.PeakPer(ts, t0, 100*time.Millisecond), fleetsim.PerSecond(ts, t0, true))
	// Output: 3 [4]
}
