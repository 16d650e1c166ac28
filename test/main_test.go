// Package test holds Tether's end-to-end, fault and interop tests: real
// embedded nats-servers, the real supervisor, real MCP servers from the
// official SDK, the real nats CLI and a real browser.
package test

import (
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// net/http keeps idle keep-alive connections of http.DefaultTransport.
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
	)
}
