package tetherctl_test

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/tether-dev/tether/internal/tetherctl"
)

// Validating a config before writing it needs no NATS; the exit code says
// what kind of failure it was.
func ExampleCLI_Run() {
	c := &tetherctl.CLI{
		Stdin:  strings.NewReader(`{"command":"npx","args":["-y","server-github"],"env":{"GITHUB_TOKEN":"ghp_x"}}`),
		Stdout: os.Stdout,
		Stderr: os.Stdout,
	}
	code := c.Run(context.Background(), []string{"validate", "-"})
	fmt.Println("exit", code)

	c.Stdin = strings.NewReader(`{"url":"https://mcp.example.com","timout":"30s"}`)
	code = c.Run(context.Background(), []string{"validate", "-"})
	fmt.Println("exit", code, code == tetherctl.ExitInvalidConfig)
	// Output:
	// standard input: valid config
	// exit 0
	// tetherctl: invalid config in standard input: field "timout": unknown field (check the spelling; fields are transport, command, args, env, url, headers, timeout, retry, idempotent_tools)
	// exit 3 true
}
