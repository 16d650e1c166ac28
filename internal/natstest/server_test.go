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
	s.Restart()
	if s.Port != port {
		t.Fatalf("port changed: %d -> %d", port, s.Port)
	}
	CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		e, err := kv.Get("k")
		if err != nil {
			return err
		}
		if string(e.Value()) != "v" {
			t.Fatalf("value %q", e.Value())
		}
		return nil
	})
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
