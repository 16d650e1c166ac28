package agentproto

import (
	"testing"
	"time"
)

func TestFleetSizeFor(t *testing.T) {
	for _, tc := range []struct{ configured, hint, servers, want int }{
		{1000, 0, 1, 1000},       // no hint yet: the configured size
		{1000, 500, 1, 1000},     // a smaller fleet never shrinks the window
		{1000, 10000, 1, 10000},  // a fleet that outgrew the default
		{1000, 10000, 3, 3334},   // spread over a 3-node cluster, rounded up
		{1000, 2500, 3, 1000},    // per node under the configured size
		{1000, 10000, 0, 10000},  // no server known counts as one
		{10000, 10000, 1, 10000}, // configured for it already
	} {
		if got := fleetSizeFor(tc.configured, tc.hint, tc.servers); got != tc.want {
			t.Errorf("fleetSizeFor(%d, %d, %d) = %d, want %d", tc.configured, tc.hint, tc.servers, got, tc.want)
		}
	}
}

// The hinted window stays within [ReconnectWait, MaxReconnectWait] however
// large a reply's fleet_size.
func TestHintedWindowBounded(t *testing.T) {
	c := &Client{cfg: DefaultConfig("w1").withDefaults()}
	if w := c.window(1); w != 400*time.Millisecond {
		t.Fatalf("default window %v, want 400 ms", w)
	}
	c.fleetHint.Store(10000)
	if w := c.window(1); w != 4*time.Second {
		t.Fatalf("window for 10,000 agents %v, want 10,000 / 2,500 per s = 4 s", w)
	}
	if w := c.window(2); w != 2*time.Second {
		t.Fatalf("window for 10,000 agents on 2 servers %v, want 2 s", w)
	}
	c.fleetHint.Store(MaxFleetSizeHint)
	if w := c.window(1); w != c.cfg.MaxReconnectWait {
		t.Fatalf("window for %d agents %v, want the cap %v", MaxFleetSizeHint, w, c.cfg.MaxReconnectWait)
	}
}
