package dashboard

import (
	"math"
	"time"
)

// rateSteps is how finely the recent-failure window is kept: a change of
// the counters is recorded at most once per window/rateSteps, so a change
// counts as recent for at most window + window/rateSteps (plus one sample).
const rateSteps = 30

// failCounts are the cumulative counters an agent reports whose recent
// increase the dashboard shows: calls retried and failed, reconnects.
type failCounts struct{ retried, failed, reconnects uint64 }

func (c failCounts) zero() bool { return c == failCounts{} }

// below reports whether any counter is lower than in o: the counters
// started again (a new process).
func (c failCounts) below(o failCounts) bool {
	return c.retried < o.retried || c.failed < o.failed || c.reconnects < o.reconnects
}

func (c failCounts) minus(o failCounts) failCounts {
	return failCounts{c.retried - o.retried, c.failed - o.failed, c.reconnects - o.reconnects}
}

// recentCounts is how much an agent's failure counters rose over the
// dashboard's rate window (fleetReply.RateWindowMS).
type recentCounts struct {
	Retried    uint64 `json:"retried"`
	Failed     uint64 `json:"failed"`
	Reconnects uint64 `json:"reconnects"`
}

// countPoint is an agent's counters from time at on (time since the
// recorder's first sample).
type countPoint struct {
	at time.Duration
	c  failCounts
}

// since the beginning: the time of a base that precedes every window.
const sinceEver = time.Duration(math.MinInt64)

// counterHist is one agent's counters over the window. pts[0] is the base
// (the counters at or before the window's start, or when first seen);
// nil pts means they have been zero all along.
type counterHist struct {
	pts  []countPoint
	seen uint64 // the sample that last saw the agent
}

// rateKeeper turns successive samples of cumulative counters into their
// increase over the last window. Owned by the recorder's sampling loop.
type rateKeeper struct {
	window, step time.Duration
	hist         map[string]counterHist
}

func newRateKeeper(window time.Duration) *rateKeeper {
	return &rateKeeper{window: window, step: window / rateSteps, hist: map[string]counterHist{}}
}

// observe records agent id's counters c at time at (sample seq) and
// returns their increase over the window ending at. Counters an agent
// already had when first seen are not recent (nobody knows when they
// rose); counters that went down started again, so all of them are.
func (k *rateKeeper) observe(id string, c failCounts, at time.Duration, seq uint64) failCounts {
	h, ok := k.hist[id]
	h.seen = seq
	switch {
	case !ok:
		if !c.zero() {
			h.pts = []countPoint{{at, c}}
		}
	case h.pts == nil:
		if !c.zero() {
			h.pts = []countPoint{{sinceEver, failCounts{}}, {at, c}}
		}
	case c.below(h.pts[len(h.pts)-1].c):
		h.pts = append(h.pts[:0], countPoint{sinceEver, failCounts{}}, countPoint{at, c})
	case c != h.pts[len(h.pts)-1].c && at-h.pts[len(h.pts)-1].at >= k.step:
		h.pts = append(h.pts, countPoint{at, c})
	}
	// The base is the last point at or before the window's start.
	start, i := at-k.window, 0
	for i+1 < len(h.pts) && h.pts[i+1].at <= start {
		i++
	}
	if i > 0 {
		h.pts = append(h.pts[:0], h.pts[i:]...)
	}
	if len(h.pts) == 1 && h.pts[0].c.zero() {
		h.pts = nil
	}
	k.hist[id] = h
	if h.pts == nil {
		return failCounts{}
	}
	return c.minus(h.pts[0].c)
}

// forget drops the agents sample seq did not see (forgotten ones).
func (k *rateKeeper) forget(seq uint64, seen int) {
	if len(k.hist) <= seen {
		return
	}
	for id, h := range k.hist {
		if h.seen != seq {
			delete(k.hist, id)
		}
	}
}
