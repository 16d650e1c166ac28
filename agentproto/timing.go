package agentproto

import (
	"math/rand/v2"
	"time"
)

// Timing maths of the watchdog: small pure functions, table-tested.

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

// BlackHoleBound is the longest a silently dead link goes unnoticed with
// nats.go's client pings: a PING is sent every interval and the link is
// declared stale at the first tick that finds maxOut PINGs unanswered, so
// at most (maxOut+1)·interval after the last PONG.
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

// delayBackOff is ReconnectDelay as a cenkalti/backoff BackOff for the
// rebuild loop. It never returns backoff.Stop: rebuilding goes on until
// the client is closed. Not safe for concurrent use.
type delayBackOff struct {
	base, max time.Duration
	jitter    float64
	n         int
}

// NextBackOff implements backoff.BackOff.
func (b *delayBackOff) NextBackOff() time.Duration {
	b.n++
	return ReconnectDelay(b.n, b.base, b.max, b.jitter, rand.Float64())
}

// Reset implements backoff.BackOff.
func (b *delayBackOff) Reset() { b.n = 0 }
