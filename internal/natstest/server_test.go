package natstest

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestRestartSamePortKeepsStore(t *testing.T) {
	s := RunServer(t)
	nc := s.Connect(nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond))
	js, err := nc.JetStream()
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.CreateKeyValue(&nats.KeyValueConfig{Bucket: "b"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put("k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	port := s.Port
	s.RestartAwait(nc)
	if s.Port != port {
		t.Fatalf("port changed: %d -> %d", port, s.Port)
	}
	// One read, no retry: the client is on the new process, so a lost
	// request here would be a real bug, not the shutdown window.
	e, err := kv.Get("k")
	if err != nil {
		t.Fatalf("first read after the restart: %v", err)
	}
	if string(e.Value()) != "v" {
		t.Fatalf("value %q", e.Value())
	}
}

// TestRestartAwaitWaitsForEveryClient: RestartAwait returns only once each
// client has reconnected to the new process, however slowly it retries.
func TestRestartAwaitWaitsForEveryClient(t *testing.T) {
	s := RunServer(t)
	fast := s.Connect(nats.MaxReconnects(-1), nats.ReconnectWait(5*time.Millisecond), nats.ReconnectJitter(0, 0))
	slow := s.Connect(nats.MaxReconnects(-1), nats.ReconnectWait(300*time.Millisecond), nats.ReconnectJitter(0, 0))
	for range 2 {
		fr, sr := fast.Stats().Reconnects, slow.Stats().Reconnects
		s.RestartAwait(fast, slow)
		if !fast.IsConnected() || !slow.IsConnected() {
			t.Fatalf("after RestartAwait: fast %v, slow %v", fast.Status(), slow.Status())
		}
		if fast.Stats().Reconnects != fr+1 || slow.Stats().Reconnects != sr+1 {
			t.Fatalf("reconnects: fast %d→%d, slow %d→%d", fr, fast.Stats().Reconnects, sr, slow.Stats().Reconnects)
		}
	}
}

func TestCluster(t *testing.T) {
	c := RunCluster(t, 3)
	nc := Connect(t, c.URLs())
	js, _ := nc.JetStream()
	CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		_, err := js.CreateKeyValue(&nats.KeyValueConfig{Bucket: "r3", Replicas: 3})
		return err
	})
}

// TestClusterPlacesR3AtOnce: once RunCluster returns, an R3 stream can be
// placed at the first try. Before, WaitJetStream waited only for a meta
// leader and for every node to be current, and under load the leader had
// not yet heard from every peer: "no suitable peers for placement".
func TestClusterPlacesR3AtOnce(t *testing.T) {
	c := RunCluster(t, 3)
	nc := Connect(t, c.URLs())
	js, _ := nc.JetStream(nats.MaxWait(10 * time.Second))
	if _, err := js.CreateKeyValue(&nats.KeyValueConfig{Bucket: "r3", Replicas: 3}); err != nil {
		t.Fatalf("first R3 create after RunCluster: %v", err)
	}
}
