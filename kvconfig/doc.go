// Package kvconfig is everything about Tether's scoped MCP server configs,
// usable without the supervisor: identifier validation, the KV key schema
// (global.<server>, role.<role>.<server>, agent.<agent>.<server>), the strict
// config schema, the operator-owned role registry, and an in-memory Index fed
// by a JetStream KV watch that resolves (agent, server) with strict precedence:
// the most specific existing scope wins entirely, a malformed winner is an
// error naming its key and revision, and nothing is ever merged. What
// resolution does quietly but an operator most likely did not mean (a role
// no config names, an agent with no registry entry, an invalid shadowed
// entry, a misspelt key) is said in Explain's warnings and by
// AgentWarnings, RoleWarning and UnconfiguredRoles (warnings.go).
//
// Watcher is the project's one KV-watcher implementation (resume from the
// last revision, stall detection by the newest revision of the watched
// keys, re-creation, new bucket epochs): the Store's index runs on it, and so
// do agentproto's registered KV watchers. kvconfig imports nothing of the
// supervisor or agentproto, and it never writes a bucket except through
// EnsureBuckets (creation) and the callers' own KeyValue handles.
package kvconfig
