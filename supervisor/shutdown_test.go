package supervisor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/tether-dev/tether/internal/natstest"
	"github.com/tether-dev/tether/supervisor/fleet"
)

// Close, and Drain, return within their bounds while NATS is unreachable
// and mcp_fleet writes fail: the supervisor's link black-holed by the
// fault proxy (an agent turned suspect, so its record is being written and
// every write waits for an ack that never comes; the lease release and the
// KV watchers' consumer deletions are never answered), or its NATS server
// gone. No step is abandoned: the whole teardown finishes within the bound.
// Before the bound, Close took 2.9-8.9 s here (a 5 s mcp_fleet write wait,
// the 1 s lease release, 5 s for a KV watcher's consumer deletion).
func TestCloseBoundedWhileWritesFail(t *testing.T) {
	const bound = 400 * time.Millisecond
	blackHole := func(_ *natstest.Server, p *natstest.Proxy) { p.BlackHole() }
	serverGone := func(srv *natstest.Server, _ *natstest.Proxy) { srv.Shutdown() }
	for _, tc := range []struct {
		name  string
		fault func(*natstest.Server, *natstest.Proxy)
		// silent: the agent falls silent to the supervisor, which still
		// judges (a black hole is not noticed for seconds): wait until its
		// record is being written.
		silent bool
		drain  time.Duration // 0: Close; else Drain with this ctx
	}{
		{"black hole, Close", blackHole, true, 0},
		{"black hole, Drain", blackHole, true, 200 * time.Millisecond},
		{"server gone, Close", serverGone, false, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := natstest.RunServer(t)
			proxy := natstest.NewProxy(t, net.JoinHostPort("127.0.0.1", strconv.Itoa(srv.Port)))
			cfg := testConfig(t, srv)
			cfg.NATSURL, cfg.HTTPAddr, cfg.CloseTimeout = proxy.URL(), "", bound
			f := &cfg.Fleet
			f.HeartbeatInterval, f.CheckInterval = 50*time.Millisecond, 10*time.Millisecond
			f.ProbeInterval, f.ProbeTimeout, f.ResendInterval = 50*time.Millisecond, 100*time.Millisecond, 100*time.Millisecond
			f.PersistInterval = 10 * time.Millisecond
			s := startSupervisor(t, cfg)
			registerAgents(t, s, "close-a")
			a := startRawAgent(t, srv.Connect(), "close-a", f.HeartbeatInterval) // straight to the server
			natstest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
				if st, ok := s.Fleet().Agent("close-a"); !ok || st.State != fleet.StateHealthy || !s.IsLeader() {
					return fmt.Errorf("agent %+v, leader %v", st, s.IsLeader())
				}
				return nil
			})
			tc.fault(srv, proxy)
			if tc.silent {
				// It turns suspect and its record is written, and
				// re-written, in vain.
				natstest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
					if st, _ := s.Fleet().Agent("close-a"); st.State == fleet.StateHealthy {
						return fmt.Errorf("agent still %v", st.State)
					}
					return nil
				})
			} else { // gone, and noticed
				natstest.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
					if s.Conn().IsConnected() {
						return errors.New("still connected")
					}
					return nil
				})
			}
			a.Stop()
			start := time.Now()
			limit := bound
			if tc.drain > 0 {
				ctx, cancel := context.WithTimeout(context.Background(), tc.drain)
				_ = s.Drain(ctx) // errors are expected: the link is dead
				cancel()
				limit += tc.drain
			} else {
				s.Close()
			}
			took := time.Since(start)
			t.Logf("returned after %v (bound %v)", took.Round(100*time.Microsecond), limit)
			if took >= limit {
				t.Errorf("took %v, bound %v", took, limit)
			}
			select {
			case <-s.closed:
			default:
				t.Error("returned with a teardown step still running")
			}
		})
	}
}
