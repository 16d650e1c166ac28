package agentproto

import (
	"hash/fnv"
	"time"
)

// Timing maths of the watchdog: small pure functions, table-tested.

// ReconnectWindow is the period W of a client's connect attempts while it
// has no connection: fleet agents sharing one server, each trying once per
// W at its own phase, put fleet/W attempts per second on it, so W is
// fleet/rate seconds, kept within [minW, maxW]. A non-positive rate means
// minW.
func ReconnectWindow(fleet, rate int, minW, maxW time.Duration) time.Duration {
	if rate <= 0 || fleet <= 0 {
		return min(minW, maxW)
	}
	w := time.Duration(float64(fleet) / float64(rate) * float64(time.Second))
	return min(max(w, minW), maxW)
}

// ReconnectPhase is the agent's fixed offset in [0, window): a 64-bit
// FNV-1a hash of the id, mixed (the murmur3 finaliser) so that ids that
// differ in one character land far apart, modulo window. A zero or
// negative window gives 0.
func ReconnectPhase(agent string, window time.Duration) time.Duration {
	if window <= 0 {
		return 0
	}
	h := fnv.New64a()
	_, _ = h.Write([]byte(agent))
	x := h.Sum64()
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	x *= 0xc4ceb9fe1a85ec53
	x ^= x >> 33
	return time.Duration(x % uint64(window))
}

// SlotDelay is the wait from now to the agent's next connect attempt: its
// attempts fall on the wall-clock instants t with t ≡ phase (mod window),
// so the wait is in (0, window]. Whenever a server comes back, each agent
// of the fleet tries within one window of it at a point fixed by its phase:
// the connects are spread evenly over that window, however long the outage
// was, and no agent waits longer than one window. A zero or negative
// window gives 0.
func SlotDelay(now time.Time, window, phase time.Duration) time.Duration {
	if window <= 0 {
		return 0
	}
	into := (now.UnixNano() - int64(phase)) % int64(window)
	if into < 0 {
		into += int64(window)
	}
	return time.Duration(int64(window) - into)
}

// ReconnectDelay is the wait before reconnect attempt n (from 1): the
// exponential d = min(base·2^(n−1), maxDelay), less a random share of it,
// d − jitter·u·d, with u in [0, 1) and jitter in [0, 1]. Taking jitter off
// (rather than adding it) keeps every wait within maxDelay.
func ReconnectDelay(n int, base, maxDelay time.Duration, jitter, u float64) time.Duration {
	if n < 1 {
		n = 1
	}
	d := maxDelay
	if n-1 < 62 && base <= maxDelay>>(n-1) {
		d = base << (n - 1)
	}
	d = min(d, maxDelay)
	return d - time.Duration(jitter*u*float64(d))
}

// BlackHoleBound is the longest a silently dead link goes unnoticed by the
// client's pings (liveness.go), outside the grace after a connect: a PING
// goes out within one interval of the last sign of life and the link is
// stale when it is unanswered for maxOut intervals, so at most
// (maxOut+1)·interval. It is also nats.go's own rule's bound.
func BlackHoleBound(interval time.Duration, maxOut int) time.Duration {
	return time.Duration(maxOut+1) * interval
}

// subVerdict is the outcome of one probe of one subscription.
type subVerdict int

const (
	probeOK   subVerdict = iota // the probe came back
	probeBusy                   // not back, but the handler made progress
	probeLost                   // not back and no progress: a failed round
)

// judgeProbe says what a probe that did or did not come back means. A
// subscription whose handler handled messages while the probe was out is
// slow, not dead: its probe is queued behind real work.
func judgeProbe(back bool, handledAtSend, handledNow uint64) subVerdict {
	switch {
	case back:
		return probeOK
	case handledNow != handledAtSend:
		return probeBusy
	}
	return probeLost
}

// nextFailures counts failed rounds in a row: a failure adds one, a
// success resets, a busy (inconclusive) round keeps the count.
func nextFailures(n int, v subVerdict) int {
	switch v {
	case probeOK:
		return 0
	case probeLost:
		return n + 1
	}
	return n
}

// reconnectingTooLong reports whether a connection nats.go has been
// reconnecting since `since` (zero: it is not) should be rebuilt at now.
// A negative limit never rebuilds.
func reconnectingTooLong(since, now time.Time, limit time.Duration) bool {
	return limit > 0 && !since.IsZero() && now.Sub(since) >= limit
}

// commandDelay is how long to wait before carrying out a command whose
// not_before is nb (zero: none) at now.
func commandDelay(nb, now time.Time) time.Duration {
	if nb.IsZero() {
		return 0
	}
	return max(nb.Sub(now), 0)
}

// slotBackOff is SlotDelay as a cenkalti/backoff BackOff for the rebuild
// loop: every wait ends at the agent's next slot. It never returns
// backoff.Stop: rebuilding goes on until the client is closed.
type slotBackOff struct {
	window, phase time.Duration
	now           func() time.Time
}

// NextBackOff implements backoff.BackOff.
func (b *slotBackOff) NextBackOff() time.Duration {
	return SlotDelay(b.now(), b.window, b.phase)
}

// Reset implements backoff.BackOff.
func (b *slotBackOff) Reset() {}
