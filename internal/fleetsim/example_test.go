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
