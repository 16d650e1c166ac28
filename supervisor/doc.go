// Package supervisor wires Tether's central service together: its Config
// and Start, the optional embedded nats-server (so `go run ./cmd/supervisor`
// works on a fresh machine), the NATS micro service "mcp-supervisor" with
// the resolve, resolveall and explain endpoints over the kvconfig index,
// leadership among replicas, and the HTTP side (/healthz, /readyz, /metrics
// and the dashboard's routes).
//
// It owns the wiring only. Each concept lives one floor down and never
// imports this package:
//
//   - supervisor/fleet: heartbeats, judgement, probes and recovery
//     commands, config push, mcp_fleet and mcp.v1.fleet.status;
//   - supervisor/lease: the KV lease that picks the one replica that
//     commands;
//   - supervisor/dashboard: the live fleet dashboard;
//   - kvconfig: keys, schema, the watched index and precedence.
package supervisor
