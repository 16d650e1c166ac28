// Package supervisor is Tether's central service: the source of truth for
// scoped MCP server configs (kvconfig over JetStream KV) and their resolver,
// served as the NATS micro service "mcp-supervisor"; an optional embedded
// nats-server so that `go run ./cmd/supervisor` works on a fresh machine;
// the fleet tracker (heartbeats; healthy, suspect, lost, zombie, quarantined
// and gone agents) with the Commander, the one component that sends probes
// and acknowledged recovery commands and writes mcp_fleet, gated by a KV
// leader lease when several replicas run; scope-aware config push; and the
// HTTP side: the live fleet dashboard, /healthz, /readyz and /metrics.
package supervisor
