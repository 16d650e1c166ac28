package supervisor

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
)

// RunDrainTimeout bounds the Drain that Run does once its ctx is done; Run
// returns within it plus Config.CloseTimeout.
const RunDrainTimeout = 10 * time.Second

// Drain stops taking new requests, lets in-flight ones finish, writes the
// fleet's last records (while still leading), releases the leader lease
// and closes everything. Every step gives up when ctx ends (heartbeats
// still queued are dropped, mcp_fleet writes in flight abandoned, the
// lease left to expire), and the Close at the end takes at most
// Config.CloseTimeout, so Drain returns within ctx plus CloseTimeout.
func (s *Supervisor) Drain(ctx context.Context) error {
	s.stopping.Store(true)
	var errs []error
	if s.svc != nil {
		if err := s.svc.Stop(); err != nil {
			errs = append(errs, err)
		}
	}
	if s.http != nil {
		if err := s.http.Shutdown(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if f := s.fleet.Load(); f != nil {
		f.Drain(ctx) // its last mcp_fleet write happens while still leading
	}
	s.stopLeading()
	s.releaseLease(ctx)
	if s.nc != nil && !s.nc.IsClosed() {
		if err := s.nc.Drain(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
			errs = append(errs, err)
		}
		for s.nc.IsDraining() && ctx.Err() == nil {
			time.Sleep(5 * time.Millisecond)
		}
	}
	s.Close()
	return errors.Join(errs...)
}

// Close stops everything at once and waits for every goroutine it started:
// it stops commanding first, then releases the leader lease so another
// replica takes over at once, closes the NATS connection, stops the
// embedded server and unlocks the data directory. It returns within
// Config.CloseTimeout even when NATS is unreachable: mcp_fleet writes in
// flight are abandoned, releasing the lease and stopping the KV watchers
// wait a quarter of it at most (not at all once the connection is known
// to be down), and a step still running when it has passed is logged and
// left to finish in the background, keeping the data directory locked
// until it does. Safe to call twice.
func (s *Supervisor) Close() {
	s.stopping.Store(true)
	s.closeOnce.Do(func() {
		var step atomic.Value // string: the teardown step running
		step.Store("starting")
		bound := time.NewTimer(s.cfg.CloseTimeout)
		defer bound.Stop()
		go s.teardown(&step)
		select {
		case <-s.closed:
		case <-bound.C:
			s.log.Error().Str("step", step.Load().(string)).Dur("close_timeout_ms", s.cfg.CloseTimeout).
				Msg("close: a step is still running after CloseTimeout; returning without it, it finishes in the background and the data dir stays locked until then")
		}
	})
}

// teardown is Close's work in order, recording the step it is at; it
// closes s.closed when done.
func (s *Supervisor) teardown(step *atomic.Value) {
	defer close(s.closed)
	if s.svc != nil {
		step.Store("micro service")
		_ = s.svc.Stop()
	}
	if s.http != nil {
		step.Store("http server")
		_ = s.http.Close()
	}
	s.httpWG.Wait()
	step.Store("leadership")
	s.stopLeading() // stop commanding before the lease is released
	if f := s.fleet.Load(); f != nil {
		step.Store("fleet")
		f.Stop() // its mcp_fleet watcher stops with the KV watchers below
	}
	// Releasing the lease and stopping the KV watchers (which deletes their
	// consumers) are polite requests: an unreleased lease expires, an
	// unneeded ephemeral consumer is reaped by the server. They run side
	// by side for a quarter of the bound at most, and not at all once the
	// link is known to be down; closing the connection then ends the
	// requests still waiting (nats.go would wait 5 s for a consumer
	// deletion).
	polite := s.cfg.CloseTimeout / 4
	if s.nc == nil || !s.nc.IsConnected() {
		polite = 0
	}
	ctx, cancel := context.WithTimeout(context.Background(), polite)
	defer cancel()
	watchers := make(chan struct{})
	go func() {
		defer close(watchers)
		if f := s.fleet.Load(); f != nil {
			f.CloseWatcher()
		}
		if s.store != nil {
			s.store.Close()
		}
	}()
	if s.logReport != nil {
		s.logReport.Close()
	}
	step.Store("lease release")
	s.releaseLease(ctx)
	step.Store("kv watchers")
	select {
	case <-watchers:
	case <-ctx.Done():
	}
	if s.nc != nil {
		step.Store("nats connection")
		s.nc.Close()
	}
	step.Store("kv watchers, after the connection closed")
	<-watchers
	if s.ns != nil {
		step.Store("embedded nats-server")
		s.ns.Shutdown()
		s.ns.WaitForShutdown()
	}
	s.lock.release() // only once the embedded server has stopped writing the store
}
