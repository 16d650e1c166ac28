package supervisor

import (
	"context"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/internal/natstest"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testConfig is a supervisor config against srv with millisecond timings.
func testConfig(t testing.TB, srv *natstest.Server) Config {
	cfg := DefaultConfig()
	cfg.NATSURL = srv.URL()
	cfg.HTTPAddr = "127.0.0.1:0"
	cfg.WatchCheckInterval = 50 * time.Millisecond
	cfg.ReconnectWait = 10 * time.Millisecond
	cfg.Logger = zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.InfoLevel)
	return cfg
}

// fastFleetConfig is testConfig without HTTP and with millisecond fleet
// timings: heartbeats every interval, judged every 2 ms.
func fastFleetConfig(t testing.TB, srv *natstest.Server, interval time.Duration) Config {
	cfg := testConfig(t, srv)
	cfg.HTTPAddr = ""
	f := &cfg.Fleet
	f.HeartbeatInterval, f.CheckInterval = interval, 2*time.Millisecond
	f.ProbeInterval, f.ProbeTimeout, f.ResendInterval = interval, 2*interval, 2*interval
	f.PersistInterval = 10 * time.Millisecond
	return cfg
}

// startSupervisor starts a supervisor and waits until its index is ready.
func startSupervisor(t testing.TB, cfg Config) *Supervisor {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	if err := s.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	return s
}
