// Package supervisor is Tether's central service: the source of truth for
// scoped MCP server configs (kvconfig over JetStream KV) and their resolver,
// served as the NATS micro service "mcp-supervisor"; an optional embedded
// nats-server so that `go run ./cmd/supervisor` works on a fresh machine;
// and the HTTP endpoints for health and readiness.
package supervisor
