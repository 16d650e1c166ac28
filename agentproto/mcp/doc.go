// Package mcp calls tools on MCP servers as their resolved Tether configs
// say, over the official MCP Go SDK, with every call wrapped in
// agentproto.Retry and classified by agentproto's one table.
//
// A call is retried only when that cannot run the tool twice: a failure
// before the request could reach the server is retried, one after it may
// have reached it only for a tool annotated idempotentHint/readOnlyHint or
// listed in the config's idempotent_tools; any other fails with an
// *OutcomeUnknownError. The package owns the MCP session (connect in the
// background bounded by the config's timeout, re-initialize a session the
// server lost, renegotiate a rejected protocol version once, swap without
// blocking on a config change while calls on the old session finish) and
// supervises stdio servers (an exited process restarted by itself after a
// backoff, a crash loop quarantined, with or without calls), reporting each server's health through agentproto.ServerStats.
// NATS, resolution and heartbeats are agentproto's. An agent that never
// calls an MCP server does not import it and does not link the SDK's
// session code. See PROTOCOL.md, "MCP tool calls".
package mcp
