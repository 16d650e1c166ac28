// Package mcp calls tools on MCP servers as their resolved Tether configs
// say, over the official MCP Go SDK, with every call wrapped in
// agentproto.Retry and classified by agentproto's one table. It owns the MCP
// session (connect lazily, drop on a transient failure, reconnect on the
// next attempt, swap in place on a config change) and nothing else: NATS,
// resolution and heartbeats are agentproto's. An agent that never calls an
// MCP server does not import it and does not link the SDK's session code.
package mcp
