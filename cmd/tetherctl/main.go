// Command tetherctl is the operator's tool for Tether: validate, write
// (compare-and-swap), import, roll back and explain MCP server configs, and
// list the fleet. "tetherctl help" lists the commands and exit codes.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/tether-dev/tether/internal/tetherctl"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := tetherctl.Run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
