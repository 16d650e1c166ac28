package mcp

import (
	"cmp"
	"fmt"
	"time"
)

// Restart intensity defaults for supervised stdio servers.
const (
	// DefaultRestartBaseDelay is the wait before the first restart of a
	// stdio server that exited; each further restart in the window doubles it.
	DefaultRestartBaseDelay = 100 * time.Millisecond
	// DefaultRestartMaxDelay caps the wait between restarts.
	DefaultRestartMaxDelay = 5 * time.Second
	// DefaultMaxRestarts is how many restarts within DefaultRestartWindow a
	// stdio server gets; its next exit quarantines it.
	DefaultMaxRestarts = 5
	// DefaultRestartWindow is the window restarts are counted in.
	DefaultRestartWindow = time.Minute
	// DefaultStableAfter: a process that ran this long before exiting was
	// healthy; its restart history is forgotten.
	DefaultStableAfter = 30 * time.Second
	// DefaultQuarantineFor is how long a quarantined server stays given up
	// on before the next call tries it again.
	DefaultQuarantineFor = time.Minute
)

// RestartPolicy is the restart intensity of a supervised stdio server: an
// exited process is restarted by the ToolCaller itself, with no call
// needed, after a backoff; after MaxRestarts restarts within Window, its
// next exit quarantines it for QuarantineFor: calls fail fast with
// ErrQuarantined, the heartbeat says "quarantined", and when it ends the
// process is started again by itself, with a fresh count. Zero fields take
// the Default* values.
type RestartPolicy struct {
	// BaseDelay is the wait before the first restart. Default
	// DefaultRestartBaseDelay.
	BaseDelay time.Duration
	// MaxDelay caps the doubling wait. Default DefaultRestartMaxDelay.
	MaxDelay time.Duration
	// MaxRestarts restarts within Window are allowed. Default
	// DefaultMaxRestarts.
	MaxRestarts int
	// Window is the period restarts are counted over. Default
	// DefaultRestartWindow.
	Window time.Duration
	// StableAfter: a process that ran at least this long resets the count.
	// Default DefaultStableAfter.
	StableAfter time.Duration
	// QuarantineFor is how long a quarantine lasts. Default
	// DefaultQuarantineFor.
	QuarantineFor time.Duration
}

func (p RestartPolicy) withDefaults() RestartPolicy {
	p.BaseDelay = cmp.Or(p.BaseDelay, DefaultRestartBaseDelay)
	p.MaxDelay = cmp.Or(p.MaxDelay, DefaultRestartMaxDelay)
	p.Window = cmp.Or(p.Window, DefaultRestartWindow)
	p.StableAfter = cmp.Or(p.StableAfter, DefaultStableAfter)
	p.QuarantineFor = cmp.Or(p.QuarantineFor, DefaultQuarantineFor)
	p.MaxRestarts = cmp.Or(p.MaxRestarts, DefaultMaxRestarts)
	return p
}

// Validate rejects negative values and a MaxDelay under BaseDelay.
func (p RestartPolicy) Validate() error {
	for _, f := range []struct {
		name string
		d    time.Duration
	}{{"base_delay", p.BaseDelay}, {"max_delay", p.MaxDelay}, {"window", p.Window}, {"stable_after", p.StableAfter}, {"quarantine_for", p.QuarantineFor}} {
		if f.d < 0 {
			return fmt.Errorf("mcp: restart policy %s %v is negative", f.name, f.d)
		}
	}
	if p.MaxRestarts < 0 {
		return fmt.Errorf("mcp: restart policy max_restarts %d is negative", p.MaxRestarts)
	}
	if p.BaseDelay > 0 && p.MaxDelay > 0 && p.MaxDelay < p.BaseDelay {
		return fmt.Errorf("mcp: restart policy max_delay %v is shorter than base_delay %v", p.MaxDelay, p.BaseDelay)
	}
	return nil
}

// restartDelay is the wait before restart n (1-based): BaseDelay doubled
// n-1 times, capped at MaxDelay.
func restartDelay(p RestartPolicy, n int) time.Duration {
	d := p.BaseDelay
	for i := 1; i < n && d < p.MaxDelay; i++ {
		d *= 2
	}
	return min(d, p.MaxDelay)
}

// restartBudget is the restart history of one stdio server (guarded by
// the ToolCaller's lock). Pure: every method takes the time.
type restartBudget struct {
	p         RestartPolicy
	restarts  []time.Time // restarts within the window, oldest first
	notBefore time.Time   // the next start waits until then
	until     time.Time   // quarantined until then; zero: not quarantined
}

// exited records that a process started at started exited at now. It
// returns true if that quarantines the server.
func (b *restartBudget) exited(started, now time.Time) bool {
	if now.Sub(started) >= b.p.StableAfter {
		b.restarts = b.restarts[:0] // it was healthy: a fresh budget
	}
	b.prune(now)
	if len(b.restarts) >= b.p.MaxRestarts {
		b.until = now.Add(b.p.QuarantineFor)
		return true
	}
	b.notBefore = now.Add(restartDelay(b.p, len(b.restarts)+1))
	return false
}

func (b *restartBudget) prune(now time.Time) {
	i := 0
	for i < len(b.restarts) && now.Sub(b.restarts[i]) >= b.p.Window {
		i++
	}
	b.restarts = append(b.restarts[:0], b.restarts[i:]...)
}

// start asks to (re)start the process at now: restart says a process ran
// before. It returns the wait before starting, or quarantined; released
// says a quarantine just ended (the history is forgotten).
func (b *restartBudget) start(now time.Time, restart bool) (wait time.Duration, quarantined, released bool) {
	if !b.until.IsZero() {
		if now.Before(b.until) {
			return 0, true, false
		}
		b.reset()
		return 0, false, true
	}
	if restart {
		b.prune(now)
		b.restarts = append(b.restarts, now)
	}
	return max(b.notBefore.Sub(now), 0), false, false
}

func (b *restartBudget) reset() {
	b.restarts, b.notBefore, b.until = b.restarts[:0], time.Time{}, time.Time{}
}

func (b *restartBudget) count() int { return len(b.restarts) }
