// Package fleetsim simulates a fleet of agents retrying with an
// agentproto.Policy against a server that is down for a while, on a fake
// clock: the peak load each jitter mode puts on the server when the fleet
// comes back (Simulate). RunLive does the same with real clients — an
// agentproto.Client each, or plain nats.go — against a real NATS server
// (in a child process for cmd/fleetsim, so its CPU is its own): the
// server's cost per agent in steady state, and a crash under the fleet
// with its CONNECTs counted at the server. cmd/fleetsim prints the
// results and BENCHMARKS.md quotes them. It is not linked into agents.
package fleetsim

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/tether-dev/tether/agentproto"
)

// ErrInvalidConfig reports a Config with a negative field or an invalid
// Policy (which also wraps agentproto.ErrInvalidConfig).
var ErrInvalidConfig = errors.New("fleetsim: invalid config")

// Defaults of Config.
const (
	DefaultAgents  = 1000
	DefaultOutage  = 10 * time.Second
	DefaultWindow  = 100 * time.Millisecond
	DefaultHorizon = 10 * time.Minute
)

// Config describes one simulated shared outage: every agent calls
// one server at about the same moment, the server is down for Outage, and
// each agent retries with Policy on a fake clock. Zero fields take the
// defaults named.
type Config struct {
	// Agents is the fleet size. Zero means DefaultAgents.
	Agents int
	// Outage is how long the server refuses every call, from t = 0. Zero
	// means DefaultOutage.
	Outage time.Duration
	// Spread spreads the agents' first calls uniformly over [0, Spread).
	// Zero means all call at t = 0, the worst case.
	Spread time.Duration
	// Capacity is how many calls the recovered server answers per Window;
	// the rest fail with a transient 503, as an overloaded server does.
	// Zero means no limit.
	Capacity int
	// Window is the width of the windows peak load is counted in. Zero
	// means DefaultWindow.
	Window time.Duration
	// Horizon ends the simulation; an agent still retrying then counts as
	// not done. Zero means DefaultHorizon.
	Horizon time.Duration
	// Policy is the policy every agent retries with: its schedule
	// (MaxAttempts, delays, jitter) and MaxElapsed are used; Rand, Now,
	// Sleep, Logger and Stats are ignored.
	Policy agentproto.Policy
	// Seed seeds the simulation's random source (PCG); the same config
	// gives the same result.
	Seed uint64
}

// Result is what Simulate measured.
type Result struct {
	// Mode is the policy's jitter mode.
	Mode agentproto.JitterMode
	// PeakRetries is the most retries (attempts after an agent's first) in
	// one window, and PeakAt the start of that window.
	PeakRetries int
	PeakAt      time.Duration
	// PeakAfterOutage is the most calls (first attempts and retries) in one
	// window once the server is back: the stampede it has to absorb.
	PeakAfterOutage int
	// AllDone is when the last agent succeeded, or -1 if some never did.
	AllDone time.Duration
	// Succeeded and GaveUp count agents; Succeeded+GaveUp < Agents means
	// some were still retrying at Horizon.
	Succeeded, GaveUp int
	// Attempts is the total number of calls; Rejected the calls refused
	// after the outage for want of capacity.
	Attempts, Rejected int
}

// Simulate runs the simulation described by cfg: a single-threaded
// event loop on a fake clock, no goroutines, a few hundred microseconds for
// 1,000 agents. It uses the same schedule code as agentproto.Retry (the
// policy's BackOff). cmd/fleetsim and the tests call it.
func Simulate(cfg Config) (Result, error) {
	if err := cfg.Policy.Validate(); err != nil {
		return Result{}, fmt.Errorf("%w: Policy: %w", ErrInvalidConfig, err)
	}
	agents := orDefaultInt(cfg.Agents, DefaultAgents)
	outage := orDefaultDur(cfg.Outage, DefaultOutage)
	window := orDefaultDur(cfg.Window, DefaultWindow)
	horizon := orDefaultDur(cfg.Horizon, DefaultHorizon)
	if agents < 0 || outage < 0 || window < 0 || horizon < 0 || cfg.Spread < 0 || cfg.Capacity < 0 {
		return Result{}, fmt.Errorf("%w: negative field in %+v", ErrInvalidConfig, cfg)
	}

	rng := rand.New(rand.NewPCG(cfg.Seed, 0x7e7e7e7e))
	p := cfg.Policy
	p.Rand = rng.Float64

	type agent struct {
		sched backoff.BackOff
		start time.Duration
	}
	fleet := make([]agent, agents)
	var q simQueue
	for i := range fleet {
		fleet[i].sched = p.BackOff()
		if cfg.Spread > 0 {
			fleet[i].start = time.Duration(rng.Int64N(int64(cfg.Spread)))
		}
		q.push(simEvent{at: fleet[i].start, agent: i, first: true})
	}

	res := Result{Mode: p.JitterMode, AllDone: -1}
	var retries, served []int // per window
	bump := func(s *[]int, w int) int {
		for len(*s) <= w {
			*s = append(*s, 0)
		}
		(*s)[w]++
		return (*s)[w]
	}
	var last time.Duration
	for q.len() > 0 {
		ev := q.pop()
		if ev.at > horizon {
			break
		}
		res.Attempts++
		w := int(ev.at / window)
		if !ev.first {
			if n := bump(&retries, w); n > res.PeakRetries {
				res.PeakRetries, res.PeakAt = n, time.Duration(w)*window
			}
		}
		if ev.at >= outage {
			n := bump(&served, w)
			res.PeakAfterOutage = max(res.PeakAfterOutage, n)
			if cfg.Capacity == 0 || n <= cfg.Capacity {
				res.Succeeded++
				last = max(last, ev.at)
				continue
			}
			res.Rejected++
		}
		a := &fleet[ev.agent]
		d := a.sched.NextBackOff()
		if d == backoff.Stop || (p.MaxElapsed > 0 && ev.at+d-a.start > p.MaxElapsed) {
			res.GaveUp++
			continue
		}
		q.push(simEvent{at: ev.at + d, agent: ev.agent})
	}
	if res.Succeeded == agents {
		res.AllDone = last
	}
	return res, nil
}

func orDefaultDur(v, def time.Duration) time.Duration {
	if v == 0 {
		return def
	}
	return v
}

func orDefaultInt(v, def int) int {
	if v == 0 {
		return def
	}
	return v
}

// simEvent is one agent's next call.
type simEvent struct {
	at    time.Duration
	agent int
	first bool
}

// simQueue is a binary min-heap of events ordered by time, then agent (so
// runs are deterministic).
type simQueue struct{ h []simEvent }

func (q *simQueue) len() int { return len(q.h) }

func (q *simQueue) less(i, j int) bool {
	a, b := q.h[i], q.h[j]
	return a.at < b.at || (a.at == b.at && a.agent < b.agent)
}

func (q *simQueue) push(e simEvent) {
	q.h = append(q.h, e)
	for i := len(q.h) - 1; i > 0; {
		parent := (i - 1) / 2
		if !q.less(i, parent) {
			break
		}
		q.h[i], q.h[parent] = q.h[parent], q.h[i]
		i = parent
	}
}

func (q *simQueue) pop() simEvent {
	top := q.h[0]
	n := len(q.h) - 1
	q.h[0] = q.h[n]
	q.h = q.h[:n]
	for i := 0; ; {
		l, r, m := 2*i+1, 2*i+2, i
		if l < n && q.less(l, m) {
			m = l
		}
		if r < n && q.less(r, m) {
			m = r
		}
		if m == i {
			return top
		}
		q.h[i], q.h[m] = q.h[m], q.h[i]
		i = m
	}
}
