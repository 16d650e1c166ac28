package natstest

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
)

// ServiceError is an error reply of a NATS micro service: the
// Nats-Service-Error-Code and Nats-Service-Error headers and the body.
type ServiceError struct {
	Code        string
	Description string
	Body        []byte
}

// Request sends a request to a micro service endpoint and returns the
// reply, or the reply and its ServiceError when the service answered with
// an error. A transport failure (timeout, no responders) or an error code
// without its description header fails the test.
func Request(t testing.TB, nc *nats.Conn, subject string, body []byte) (*nats.Msg, *ServiceError) {
	t.Helper()
	msg, err := nc.Request(subject, body, 2*time.Second)
	if err != nil {
		t.Fatalf("natstest: request %s: %v", subject, err)
	}
	code := msg.Header.Get(micro.ErrorCodeHeader)
	if code == "" {
		return msg, nil
	}
	desc := msg.Header.Get(micro.ErrorHeader)
	if desc == "" {
		t.Fatalf("natstest: request %s: error reply %s without the %s header", subject, code, micro.ErrorHeader)
	}
	return msg, &ServiceError{Code: code, Description: desc, Body: msg.Data}
}

// KVPut writes val at key and returns the revision, failing the test on an
// error.
func KVPut(t testing.TB, kv jetstream.KeyValue, key, val string) uint64 {
	t.Helper()
	rev, err := kv.Put(context.Background(), key, []byte(val))
	if err != nil {
		t.Fatalf("natstest: put %s %s: %v", kv.Bucket(), key, err)
	}
	return rev
}
