// Package kvconfig is everything about Tether's scoped MCP server configs,
// usable without the supervisor: identifier validation, the KV key schema
// (global.<server>, role.<role>.<server>, agent.<agent>.<server>), the strict
// config schema, the operator-owned role registry, and an in-memory Index fed
// by a JetStream KV watch that resolves (agent, server) with strict precedence:
// the most specific existing scope wins entirely, a malformed winner is an
// error naming its key and revision, and nothing is ever merged.
package kvconfig
