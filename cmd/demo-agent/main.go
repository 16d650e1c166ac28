// Command demo-agent is an example Tether agent: it resolves its MCP
// server's config from the supervisor and calls a tool on it every
// --interval, with retries. --serve-mcp also runs a small MCP echo server.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/tether-dev/tether/internal/cli"
	"github.com/tether-dev/tether/internal/demoagent"
)

func main() {
	var cfg demoagent.Config
	fs, serve, level, format := newFlags(&cfg, flag.ExitOnError)
	mcpOnly := fs.Bool("mcp-only", false, "only serve the MCP echo server on --serve-mcp, no agent: a process of its own to stop and start (the README's server-health demo)")
	_ = fs.Parse(os.Args[1:])
	if *mcpOnly {
		serveOnly(*serve, *level, *format)
		return
	}
	run(cfg, *serve, *level, *format)
}

// serveOnly runs the MCP echo server alone until SIGINT/SIGTERM, which
// closes it and every connection at once, as a killed server does.
func serveOnly(addr, level, format string) {
	log, err := cli.Logger(os.Stderr, level, format)
	if err != nil || addr == "" {
		fmt.Fprintln(os.Stderr, "demo-agent: --mcp-only needs --serve-mcp ADDR (e.g. 127.0.0.1:9000)", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	echo, err := demoagent.NewEchoServer(addr)
	if err != nil {
		log.Error().Err(err).Msg("cannot serve MCP")
		os.Exit(1)
	}
	log.Info().Str("url", echo.URL()).Msg("MCP echo server listening (no agent: --mcp-only)")
	<-ctx.Done()
	echo.Stop()
	log.Info().Str("url", echo.URL()).Msg("MCP echo server stopped")
}

// newFlags binds every flag to cfg.
func newFlags(cfg *demoagent.Config, onErr flag.ErrorHandling) (fs *flag.FlagSet, serve, level, format *string) {
	fs = flag.NewFlagSet("demo-agent", onErr)
	cli.Describe(fs, `demo-agent: an example Tether agent on agentproto. It resolves one MCP server's config from the
supervisor, calls one of its tools every --interval through the retry layer, heartbeats, obeys
the supervisor's commands and survives restarts of NATS and of the MCP server; --serve-mcp also
runs an MCP echo server to call.`, `
demo-agent --agent demo-1 --creds demo-1.creds --serve-mcp 127.0.0.1:9000`, "demo-agent --agent ID --creds FILE [flags]")
	fs.StringVar(&cfg.NATSURL, "nats-url", cli.Env("TETHER_NATS_URL", "nats://127.0.0.1:4222"), "NATS server URL (env TETHER_NATS_URL)")
	fs.StringVar(&cfg.Agent, "agent", cli.Env("TETHER_AGENT", "demo-1"), "agent id (env TETHER_AGENT)")
	fs.StringVar(&cfg.CredsFile, "creds", cli.Env("TETHER_NATS_CREDS", ""), "the agent's NATS .creds file, from 'tetherctl agent add' (env TETHER_NATS_CREDS); the supervisor's embedded server needs it")
	fs.Func("allow-command", "a stdio MCP server command this agent may start; repeat for more (none by default)", func(v string) error {
		cfg.AllowCommands = append(cfg.AllowCommands, v)
		return nil
	})
	fs.StringVar(&cfg.Server, "server", "echo", "MCP server name to resolve")
	fs.StringVar(&cfg.Tool, "tool", "echo", "tool to call")
	fs.DurationVar(&cfg.Interval, "interval", 0, "time between calls (default 1s)")
	fs.IntVar(&cfg.Calls, "calls", 0, "stop after this many calls (0: run until interrupted)")
	fs.StringVar(&cfg.Tasks, "tasks", cli.Env("TETHER_TASKS", ""), "also consume this existing durable pull consumer, STREAM:DURABLE (e.g. TASKS_demo-1:demo-1, granted by 'tetherctl agent add --consumer'): each task's text is echoed through --tool (env TETHER_TASKS)")
	serve = fs.String("serve-mcp", cli.Env("TETHER_SERVE_MCP", ""), "also serve an MCP echo server on this address, e.g. 127.0.0.1:9000 (env TETHER_SERVE_MCP)")
	level = fs.String("log-level", "info", "log level")
	format = fs.String("log-format", "auto", "log format: auto, console, json")
	return fs, serve, level, format
}

func run(cfg demoagent.Config, serve, level, format string) {
	log, err := cli.Logger(os.Stderr, level, format)
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo-agent:", err)
		os.Exit(2)
	}
	cfg.Logger = log
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if serve != "" {
		echo, err := demoagent.NewEchoServer(serve)
		if err != nil {
			log.Error().Err(err).Msg("cannot serve MCP")
			os.Exit(1)
		}
		defer echo.Stop()
		log.Info().Str("url", echo.URL()).Msg("MCP echo server listening")
	}
	res, err := demoagent.Run(ctx, cfg)
	if err != nil {
		log.Error().Err(err).Msg("demo agent failed")
		os.Exit(1)
	}
	log.Info().Int("ok", res.OK).Int("failed", res.Failed).Interface("calls", res.Stats).Msg("demo agent done")
}
