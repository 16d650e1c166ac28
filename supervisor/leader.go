package supervisor

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/tether-dev/tether/supervisor/fleet"
	"github.com/tether-dev/tether/supervisor/lease"
)

// Leadership: every replica campaigns for the lease in lease.Bucket. The
// fleet commands (probes, commands, mcp_fleet writes) only while this
// replica holds the lease AND has taken over the fleet (Fleet.TakeLead):
// winning the lease wakes the lead goroutine, which reloads mcp_fleet off
// the lease goroutine (renewals must never wait for it) and only then lets
// the fleet command. Losing the lease stops commanding at once.

// commanding is the fleet.Config.IsLeader the Supervisor installs: one
// atomic load on the heartbeat path, then the lease's.
func (s *Supervisor) commanding() bool {
	if !s.leading.Load() {
		return false
	}
	l := s.lease.Load()
	return l != nil && l.IsLeader()
}

// IsLeader reports whether this replica commands the fleet: it holds the
// leader lease and has taken over the fleet (or, with a caller-supplied
// fleet.Config.IsLeader, what that says).
func (s *Supervisor) IsLeader() bool {
	if s.cfg.Fleet.IsLeader == nil {
		return false
	}
	return s.cfg.Fleet.IsLeader()
}

// ReplicaID is this replica's id (Config.ReplicaID or the drawn default).
func (s *Supervisor) ReplicaID() string { return s.cfg.ReplicaID }

// LeaderID is the replica id last seen holding the lease ("" if unknown or
// when the caller supplied fleet.Config.IsLeader).
func (s *Supervisor) LeaderID() string {
	if l := s.lease.Load(); l != nil {
		return l.Holder()
	}
	return ""
}

// startLease campaigns at once and, if this replica wins the first try,
// waits for the lead goroutine's takeover of the fleet before returning,
// so a lone supervisor commands from the moment Start returns. A takeover
// that cannot complete resigns within takeoverBound, so Start returns by
// then; a ctx that ends first fails Start.
func (s *Supervisor) startLease(ctx context.Context) error {
	s.leadWake = make(chan struct{}, 1)
	s.firstTake = make(chan struct{})
	l, err := lease.Start(ctx, lease.Config{
		JS: s.js, ID: s.cfg.ReplicaID, TTL: s.cfg.LeaseTTL, Replicas: s.cfg.Buckets.Replicas,
		OnChange: s.onLeadership,
		Logger:   s.log.With().Str("component", "lease").Str("replica", s.cfg.ReplicaID).Logger(),
	})
	if err != nil {
		return err
	}
	s.lease.Store(l)
	s.fleet.Load().SetLeadership(func() (string, time.Duration) { return l.Holder(), l.SinceLeader() })
	s.metrics.Registry.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "tether_leader", Help: "1 while this replica holds the leader lease and commands the fleet."},
			func() float64 { return b2f(s.commanding()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "tether_no_leader_seconds", Help: "How long no replica has held the leader lease (0 while one does): nobody sends commands meanwhile."},
			func() float64 { return l.SinceLeader().Seconds() }))
	lctx, cancel := context.WithCancel(context.Background())
	s.leadCancel = cancel
	s.leadWG.Go(func() { s.leadLoop(lctx) })
	select {
	case <-l.Campaigned():
	case <-ctx.Done():
		return ctx.Err()
	}
	if !l.IsLeader() {
		return nil
	}
	// Winning woke the lead goroutine: the takeover is its own, never run
	// twice for one win (a second run would wait out another bound).
	select {
	case <-s.firstTake:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// onLeadership runs on the lease goroutine: it must not block.
func (s *Supervisor) onLeadership(leader bool) {
	s.leadMu.Lock()
	s.leadGen++
	s.leading.Store(false)
	s.leadMu.Unlock()
	if !leader {
		s.log.Info().Str("replica", s.cfg.ReplicaID).Msg("leadership ended: no longer commanding the fleet")
		return
	}
	select {
	case s.leadWake <- struct{}{}:
	default:
	}
}

// leadLoop takes over the fleet each time this replica wins the lease;
// it closes firstTake when its first takeover has ended (commanding, or
// resigned, or leadership lost meanwhile).
func (s *Supervisor) leadLoop(ctx context.Context) {
	first := s.firstTake
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.leadWake:
			s.takeLead(ctx)
			if first != nil {
				close(first)
				first = nil
			}
		}
	}
}

// takeLead runs Fleet.TakeLead while this replica holds the lease and
// does not command yet, retrying every LeaseTTL/3, and then lets the fleet
// command unless leadership changed meanwhile. A takeover that cannot
// complete within takeoverBound resigns the lease, so another replica
// leads instead of nobody. Run by the lead goroutine only.
func (s *Supervisor) takeLead(ctx context.Context) {
	l, f := s.lease.Load(), s.fleet.Load()
	first := time.Now()
	for ctx.Err() == nil && l.IsLeader() && !s.leading.Load() {
		if waited := time.Since(first); waited > s.takeoverBound() {
			s.log.Error().Str("replica", s.cfg.ReplicaID).Dur("tried_for_ms", waited).
				Msg("leader cannot take over the fleet (mcp_fleet unreadable): resigning the lease so another replica leads")
			l.Resign()
			return
		}
		s.leadMu.Lock()
		gen := s.leadGen
		s.leadMu.Unlock()
		start := time.Now()
		tctx, cancel := context.WithTimeout(ctx, fleet.TakeLeadTimeout(s.cfg.LeaseTTL))
		records, pushes, err := f.TakeLead(tctx)
		cancel()
		if err == nil {
			s.leadMu.Lock()
			won := gen == s.leadGen && l.IsLeader()
			s.leading.Store(won)
			s.leadMu.Unlock()
			if won {
				s.log.Info().Str("replica", s.cfg.ReplicaID).Int("records", records).Int("reresolves", pushes).
					Dur("took_ms", time.Since(start)).Msg("leadership won: fleet taken over from mcp_fleet; commanding")
			}
			continue // leadership changed meanwhile: the loop re-checks
		}
		s.log.Warn().Err(err).Str("replica", s.cfg.ReplicaID).Msg("leader cannot read mcp_fleet yet; not commanding, retrying")
		select {
		case <-ctx.Done():
		case <-time.After(s.cfg.LeaseTTL / 3):
		}
	}
}

// takeoverBound is how long a new leader may try to take over the fleet
// before it resigns: two attempts.
func (s *Supervisor) takeoverBound() time.Duration { return 2 * fleet.TakeLeadTimeout(s.cfg.LeaseTTL) }

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// stopLeading stops commanding (at once) and the lead goroutine; the lease
// itself is released by releaseLease, after the fleet has stopped.
func (s *Supervisor) stopLeading() {
	s.leadMu.Lock()
	s.leadGen++
	s.leading.Store(false)
	s.leadMu.Unlock()
	if s.leadCancel != nil {
		s.leadCancel()
	}
	s.leadWG.Wait()
}

// releaseLease stops campaigning and releases the lease if held, so
// another replica takes over at its next try instead of after the TTL;
// it waits for the release until ctx ends (at most LeaseTTL/3).
func (s *Supervisor) releaseLease(ctx context.Context) {
	if l := s.lease.Load(); l != nil {
		l.Release(ctx)
	}
}
