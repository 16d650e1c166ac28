package fleet

import (
	"fmt"
	"hash/fnv"
	"time"
)

// State is an agent's state as mcp.v1.fleet.status and mcp_fleet spell it.
type State uint8

// Agent states. The order of healthy < suspect < lost < gone is the order
// silence escalates in; zombie and quarantined are set by probes and by
// restart intensity.
const (
	StateUnknown State = iota
	StateHealthy
	StateSuspect
	StateLost
	StateGone
	StateZombie
	StateQuarantined
	numStates
)

// States returns every state an agent can be in (not StateUnknown), in
// the order of the constants.
func States() []State {
	out := make([]State, 0, numStates-1)
	for s := StateHealthy; s < numStates; s++ {
		out = append(out, s)
	}
	return out
}

var stateNames = [numStates]string{"unknown", "healthy", "suspect", "lost", "gone", "zombie", "quarantined"}

func (s State) String() string {
	if s < numStates {
		return stateNames[s]
	}
	return fmt.Sprintf("State(%d)", uint8(s))
}

// ParseState parses a state name as fleet.status spells it.
func ParseState(name string) (State, bool) {
	for i := StateHealthy; i < numStates; i++ {
		if stateNames[i] == name {
			return i, true
		}
	}
	return StateUnknown, false
}

// MarshalText makes a State a JSON string.
func (s State) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText parses a state name.
func (s *State) UnmarshalText(b []byte) error {
	st, ok := ParseState(string(b))
	if !ok {
		return fmt.Errorf("fleet: unknown agent state %q", b)
	}
	*s = st
	return nil
}

// effectiveInterval is the heartbeat interval an agent is judged by: the
// interval it announces, clamped to [configured/10, configured*10] so a
// wrong or hostile value cannot make it unjudgeable; the configured one when
// it announces none.
func effectiveInterval(configured time.Duration, reportedMS int64) time.Duration {
	if reportedMS <= 0 {
		return configured
	}
	d := time.Duration(reportedMS) * time.Millisecond
	return min(max(d, configured/10), configured*10)
}

// scaled converts d, a timing set for agents beating at configured, to an
// agent beating at interval (its effective interval): judgement in the
// agent's own interval.
func scaled(d, configured, interval time.Duration) time.Duration {
	if interval == configured || configured <= 0 {
		return d
	}
	return time.Duration(float64(d) * float64(interval) / float64(configured))
}

// liveness is what silence alone says: healthy until suspectAfter missed
// intervals, suspect until lostAfter, lost until goneAfter, then gone.
func liveness(silence, interval time.Duration, suspectAfter, lostAfter int, goneAfter time.Duration) State {
	switch {
	case silence >= goneAfter:
		return StateGone
	case silence >= time.Duration(lostAfter)*interval:
		return StateLost
	case silence >= time.Duration(suspectAfter)*interval:
		return StateSuspect
	}
	return StateHealthy
}

// deriveState combines liveness with the zombie and quarantine flags into
// the one state shown: gone wins (it said goodbye or was lost for long),
// then quarantined (an operator must look), then lost, zombie, suspect.
func deriveState(live State, zombie, quarantined bool) State {
	switch {
	case live == StateGone:
		return StateGone
	case quarantined:
		return StateQuarantined
	case live == StateLost:
		return StateLost
	case zombie:
		return StateZombie
	}
	return live
}

// zombieDue reports whether the n oldest unanswered probes (oldest first,
// monotonic send times) are all past their ack deadline. A probe is
// answered by a heartbeat, so timeout must be at least one heartbeat
// interval.
func zombieDue(sent []probeRec, now int64, timeout time.Duration, n int) bool {
	return n > 0 && len(sent) >= n && sent[n-1].at+int64(timeout) <= now
}

// overdueProbes counts unanswered probes past their deadline.
func overdueProbes(sent []probeRec, now int64, timeout time.Duration) int {
	n := 0
	for _, p := range sent {
		if p.at+int64(timeout) <= now {
			n++
		}
	}
	return n
}

// intensity drops recovery events older than period (events are monotonic
// times, oldest first) and reports whether more than k remain: the agent
// keeps needing recovery and is quarantined instead of being looped.
func intensity(events []int64, now int64, period time.Duration, k int) ([]int64, bool) {
	i := 0
	for i < len(events) && events[i] <= now-int64(period) {
		i++
	}
	events = events[i:]
	return events, len(events) > k
}

// spreadFor is the window not_before offsets are spread over when backlog
// commands wait to go out at rate per second: the time the backlog takes at
// that rate, capped at maxSpread. Zero rate or a backlog of one: no spread.
func spreadFor(backlog int, rate float64, maxSpread time.Duration) time.Duration {
	if rate <= 0 || backlog <= 1 {
		return 0
	}
	d := time.Duration(float64(backlog) / rate * float64(time.Second))
	return min(d, maxSpread)
}

// hashOffset places an agent in [0, spread) by a hash of its id, so the
// same agent always lands at the same offset and a fleet spreads evenly.
func hashOffset(agent string, spread time.Duration) time.Duration {
	if spread <= 0 {
		return 0
	}
	h := fnv.New64a()
	_, _ = h.Write([]byte(agent))
	return time.Duration(h.Sum64() % uint64(spread))
}

// massSilent reports whether silent of candidates agents is a share large
// enough (and a fleet big enough) to blame the broker or the supervisor's
// own link rather than the agents.
func massSilent(silent, candidates, minAgents int, share float64) bool {
	return candidates >= minAgents && candidates > 0 && float64(silent) >= share*float64(candidates)
}

// tokenBucket paces recovery commands fleet-wide: rate per second with a
// burst. It is not safe for concurrent use; times are monotonic ns.
type tokenBucket struct {
	rate, burst, tokens float64
	last                int64
}

func newTokenBucket(rate float64, burst int, now int64) *tokenBucket {
	return &tokenBucket{rate: rate, burst: float64(burst), tokens: float64(burst), last: now}
}

// take spends one token if one is available at now.
func (b *tokenBucket) take(now int64) bool {
	if now > b.last {
		b.tokens = min(b.burst, b.tokens+float64(now-b.last)/1e9*b.rate)
		b.last = now
	}
	if b.tokens >= 1 {
		b.tokens--
		return true
	}
	return false
}
