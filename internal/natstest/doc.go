// Package natstest is the one shared test helper for Tether: it runs real
// embedded nats-servers with JetStream on loopback (single node, restart on
// the same port and store, and a 3-node cluster) and a TCP fault proxy that
// can cut, black-hole and delay links. Every package's tests and the
// end-to-end tests in test/ use it; nothing mocks a NATS connection.
package natstest
