// Package tetherctl is the operator's command line for Tether: it validates
// and writes MCP server configs in the mcp_configs KV bucket with
// compare-and-swap, imports mcpServers files from MCP clients, shows and
// rolls back history, and asks the supervisor to resolve, explain and list
// the fleet. Secrets (env and header values) are masked in every output
// unless --show-secrets is given. Run returns an exit code a script can rely
// on (see the Exit constants); cmd/tetherctl only wires os.Args to Run.
package tetherctl
