package mcp_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/agentproto/mcp"
)

// A tool caller for a resolved server: every call is retried per the
// config's retry block, and a pushed config is swapped in place. (Not run:
// it needs a supervisor and an MCP server.)
func ExampleNewToolCaller() {
	ctx := context.Background()
	client, err := agentproto.Connect(ctx, agentproto.DefaultConfig("a7"))
	if err != nil {
		return
	}
	defer client.Close()
	res, err := client.Resolve(ctx, "github")
	if err != nil {
		return
	}
	caller, err := mcp.NewToolCaller(res, mcp.Options{Stats: client.CallStats(), ServerStats: client.ServerStats("github")})
	if err != nil {
		return
	}
	defer caller.Close()
	client.OnConfigChange(func(r agentproto.Resolved) error {
		if r.Server != "github" {
			return nil
		}
		return caller.Swap(r)
	})
	out, err := caller.Call(ctx, "search_issues", map[string]any{"q": "is:open"})
	if errors.Is(err, mcp.ErrOutcomeUnknown) {
		// The request may have run on the server and was not retried:
		// check before doing it again.
		return
	}
	fmt.Println(out, err)
}
