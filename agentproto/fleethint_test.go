package agentproto

import (
	"encoding/json"
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

// A malformed fleet_size never fails the reply it comes in: it reads as no
// hint, or as the cap.
func TestFleetSizeHintTolerant(t *testing.T) {
	for in, want := range map[string]FleetSizeHint{
		`25`: 25, `25.7`: 25, `0`: 0, `-3`: 0, `"25"`: 0, `null`: 0, `{}`: 0, `1e300`: MaxFleetSizeHint,
		`99999999999999999999999`: MaxFleetSizeHint, `true`: 0,
	} {
		var rep ResolveAllReply
		if err := json.Unmarshal([]byte(`{"agent":"a","servers":{},"next":"","fleet_size":`+in+`}`), &rep); err != nil {
			t.Errorf("fleet_size %s failed the reply: %v", in, err)
			continue
		}
		if rep.FleetSize != want {
			t.Errorf("fleet_size %s read as %d, want %d", in, rep.FleetSize, want)
		}
	}
}
