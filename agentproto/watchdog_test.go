package agentproto

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/tether-dev/tether/internal/natstest"
)

// A connection nats.go keeps failing to re-establish for RebuildAfter is
// rebuilt from scratch, and the new one works once the path does.
func TestRebuildAfterReconnectingTooLong(t *testing.T) {
	srv := natstest.RunServer(t, natstest.WithoutJetStream())
	proxy := natstest.NewProxy(t, srv.URL()[len("nats://"):])
	cfg := testConfig(t, proxy.URL(), "rb1")
	cfg.RebuildAfter = 300 * time.Millisecond
	c := connect(t, cfg)
	got := make(chan string, 16)
	if _, err := c.Subscribe("work.rb1", func(m *nats.Msg) { got <- string(m.Data) }); err != nil {
		t.Fatal(err)
	}
	cut := time.Now()
	proxy.Cut() // every (re)connect is accepted and closed at once
	natstest.CheckFor(t, 5*time.Second, 2*time.Millisecond, func() error {
		if c.State() != StateRebuilding {
			return fmt.Errorf("state %v", c.State())
		}
		return nil
	})
	t.Logf("rebuild started %v after the cut (RebuildAfter %v)", time.Since(cut), cfg.RebuildAfter)
	if since := time.Since(cut); since < cfg.RebuildAfter {
		t.Fatalf("rebuilt after %v, before RebuildAfter", since)
	}
	proxy.Pass()
	publishUntil(t, srv.Connect(), "work.rb1", "back", got)
	natstest.CheckFor(t, time.Second, time.Millisecond, func() error {
		if st := c.Stats(); st.Rebuilds != 1 || st.Disconnects < 1 { // counted after the rebuild's flush
			return fmt.Errorf("stats %+v", st)
		}
		return nil
	})
}

// Close during a rebuild whose server is gone returns promptly and leaks
// nothing (goleak in TestMain).
func TestCloseWhileRebuilding(t *testing.T) {
	srv := natstest.RunServer(t, natstest.WithoutJetStream())
	cfg := testConfig(t, srv.URL(), "rb2")
	cfg.MaxReconnects = 1
	c := connect(t, cfg)
	srv.Shutdown()
	natstest.CheckFor(t, 5*time.Second, 2*time.Millisecond, func() error {
		if c.Stats().ConnectFailures < 2 {
			return errors.New("not retrying the rebuild yet")
		}
		return nil
	})
	start := time.Now()
	c.Close()
	took := time.Since(start)
	t.Logf("Close during a rebuild took %v", took)
	if took > cfg.ConnectTimeout+100*time.Millisecond || c.State() != StateClosed {
		t.Fatalf("Close took %v, state %v", took, c.State())
	}
}
