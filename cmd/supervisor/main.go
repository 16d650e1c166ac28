// Command supervisor runs the Tether supervisor. With no --nats-url it
// starts an embedded nats-server with JetStream, so it runs on a fresh
// machine with nothing else installed:
//
//	go run ./cmd/supervisor
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/tether-dev/tether/internal/cli"
	"github.com/tether-dev/tether/supervisor"
)

func main() {
	stopWithGoRun() // first: before anything is locked or bound
	cfg := supervisor.DefaultConfig()
	fs, level, format := newFlags(&cfg, flag.ExitOnError)
	if err := cli.FlagsFromEnv(fs, os.LookupEnv); err != nil {
		fmt.Fprintln(os.Stderr, "supervisor:", err)
		os.Exit(2)
	}
	_ = fs.Parse(os.Args[1:])

	log, err := cli.Logger(os.Stderr, *level, *format)
	if err != nil {
		fmt.Fprintln(os.Stderr, "supervisor:", err)
		os.Exit(2)
	}
	cfg.Logger = log
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := supervisor.Run(ctx, cfg); err != nil {
		log.Error().Err(err).Msg("supervisor failed")
		os.Exit(1)
	}
}

// newFlags binds every flag to cfg; level and format are the log settings.
func newFlags(cfg *supervisor.Config, onErr flag.ErrorHandling) (fs *flag.FlagSet, level, format *string) {
	fs = flag.NewFlagSet("supervisor", onErr)
	cli.Describe(fs, `supervisor: Tether's central service. It stores scoped MCP server configs in the JetStream KV
bucket mcp_configs and resolves them for agents over NATS (micro service mcp-supervisor), tracks
every agent's heartbeats, finds lost and zombie agents and sends them acknowledged, staggered
recovery commands, and serves the fleet dashboard and /metrics over HTTP. Without --nats-url it
runs an embedded nats-server with auth always on (credentials in <data-dir>/auth/).`, `
go run ./cmd/supervisor
supervisor --nats-url nats://127.0.0.1:4222 --creds ./data/auth/supervisor.creds --http 0.0.0.0:8080`, "supervisor [flags]")
	fs.StringVar(&cfg.NATSURL, "nats-url", cli.Env("TETHER_NATS_URL", ""), "NATS server URL(s); empty starts an embedded nats-server (env TETHER_NATS_URL)")
	fs.StringVar(&cfg.CredsFile, "creds", cli.Env("TETHER_NATS_CREDS", ""), "NATS .creds file for an external server (env TETHER_NATS_CREDS)")
	fs.StringVar(&cfg.User, "user", cli.Env("TETHER_NATS_USER", ""), "NATS user (env TETHER_NATS_USER)")
	fs.StringVar(&cfg.Password, "password", cli.Env("TETHER_NATS_PASSWORD", ""), "NATS password (env TETHER_NATS_PASSWORD)")
	fs.StringVar(&cfg.Token, "token", cli.Env("TETHER_NATS_TOKEN", ""), "NATS token (env TETHER_NATS_TOKEN)")
	fs.StringVar(&cfg.Listen, "listen", cli.Env("TETHER_LISTEN", cfg.Listen), "embedded nats-server client address (env TETHER_LISTEN)")
	fs.StringVar(&cfg.DataDir, "data-dir", cli.Env("TETHER_DATA_DIR", cfg.DataDir), "embedded nats-server JetStream store and auth material, locked (<data-dir>/LOCK) so that one supervisor at a time uses it; with --nats-url only auth/http.token, unlocked (env TETHER_DATA_DIR)")
	fs.StringVar(&cfg.HTTPAddr, "http", cli.Env("TETHER_HTTP", cfg.HTTPAddr), "HTTP address for the fleet dashboard (/), /api, /events, /metrics, /healthz, /readyz; empty disables; not loopback: all but /healthz and /readyz need the --http-token-file token (env TETHER_HTTP)")
	fs.StringVar(&cfg.HTTPTokenFile, "http-token-file", cli.Env("TETHER_HTTP_TOKEN_FILE", cfg.HTTPTokenFile), "bearer token file for a non-loopback --http, generated when missing; empty: <data-dir>/auth/http.token (env TETHER_HTTP_TOKEN_FILE)")
	cfg.HTTPAllowedHosts = splitList(cli.Env("TETHER_HTTP_ALLOWED_HOSTS", strings.Join(cfg.HTTPAllowedHosts, ",")))
	fs.Func("http-allowed-hosts", "comma-separated Host names (optionally name:port) the HTTP server accepts besides loopback ones; empty: the --http host and this machine's hostname (env TETHER_HTTP_ALLOWED_HOSTS)", func(v string) error {
		cfg.HTTPAllowedHosts = splitList(v)
		return nil
	})
	fs.StringVar(&cfg.Prefix, "prefix", cli.Env("TETHER_PREFIX", cfg.Prefix), "subject prefix (env TETHER_PREFIX)")
	fs.IntVar(&cfg.Buckets.Replicas, "replicas", cfg.Buckets.Replicas, "replicas for KV buckets created by the supervisor (3 on a cluster)")
	fs.StringVar(&cfg.Admission, "admission", cfg.Admission, "which agent ids are tracked: registered (only ids in mcp_agents; 'tetherctl agent add' registers them) or any (every id, up to --max-agents)")
	f := &cfg.Fleet
	fs.IntVar(&f.MaxAgents, "max-agents", f.MaxAgents, "most agents tracked; heartbeats from new ids past it are discarded (reason fleet_full) until gone agents are forgotten")
	fs.DurationVar(&f.GoneAfter, "gone-after", f.GoneAfter, "silence after which a lost agent is gone")
	fs.DurationVar(&f.ForgetAfter, "forget-after", f.ForgetAfter, "how long a gone agent is kept (memory and mcp_fleet) before it is forgotten; 0 keeps it forever")
	fs.DurationVar(&f.HeartbeatInterval, "heartbeat-interval", f.HeartbeatInterval, "the agents' heartbeat interval, which detection is measured in")
	fs.IntVar(&f.SuspectAfter, "suspect-after", f.SuspectAfter, "missed heartbeat intervals before an agent is suspect")
	fs.IntVar(&f.LostAfter, "lost-after", f.LostAfter, "missed heartbeat intervals before an agent is lost")
	fs.DurationVar(&f.ProbeInterval, "probe-interval", f.ProbeInterval, "how often an agent beating at --heartbeat-interval has its command subscription probed; agents announcing another interval are probed in proportion (every timing here is in the agent's own interval); 0: one heartbeat interval")
	fs.DurationVar(&f.ProbeTimeout, "probe-timeout", f.ProbeTimeout, "how long a probe waits for the heartbeat that answers it, at --heartbeat-interval (in proportion for others); at least one heartbeat interval; 0: 1.25 intervals")
	fs.DurationVar(&f.ResendInterval, "resend-interval", f.ResendInterval, "how long an unacknowledged command waits before it is sent again, at --heartbeat-interval (in proportion for others); 0: two intervals")
	fs.DurationVar(&f.CheckInterval, "check-interval", f.CheckInterval, "how often every agent is judged: the resolution of every detection time; at most --heartbeat-interval")
	fs.IntVar(&f.ZombieAfter, "zombie-after", f.ZombieAfter, "unanswered probes before an agent is a zombie")
	fs.IntVar(&f.ServerFailingAfter, "mcp-failing-after", f.ServerFailingAfter, "intervals an agent's calls to an MCP server must fail, while other agents reach it, before it is flagged mcp_failing and sent one reresolve of that server; 0: 2")
	fs.IntVar(&f.QueueZombieAfter, "queue-zombie-after", f.QueueZombieAfter, "intervals a declared task consumer may have a backlog with no ack before its heartbeating agent is a queue zombie; above the longest task, in intervals")
	fs.Float64Var(&f.QueueInfoRate, "queue-info-rate", f.QueueInfoRate, "fleet-wide consumer info requests per second for agents' declared task consumers")
	fs.Float64Var(&f.RecoveryRate, "recovery-rate", f.RecoveryRate, "fleet-wide recovery commands per second after a shared outage")
	fs.IntVar(&f.RecoveryBurst, "recovery-burst", f.RecoveryBurst, "recovery commands that may go at once before --recovery-rate applies")
	fs.Float64Var(&f.MassSilenceShare, "mass-silence-share", f.MassSilenceShare, "share (0..1] of established agents silent at once that makes the supervisor blame the broker or its own link and send nothing")
	fs.IntVar(&f.MassSilenceMin, "mass-silence-min", f.MassSilenceMin, "fewest established live agents for mass silence to apply")
	fs.DurationVar(&f.MassSilenceHold, "mass-silence-hold", f.MassSilenceHold, "longest mass silence holds agents at suspect before judging them one by one again")
	fs.IntVar(&f.QuarantineAfter, "quarantine-after", f.QuarantineAfter, "recoveries within --quarantine-period before an agent is quarantined")
	fs.DurationVar(&f.QuarantinePeriod, "quarantine-period", f.QuarantinePeriod, "window of the restart-intensity count")
	level = fs.String("log-level", cli.Env("TETHER_LOG_LEVEL", "info"), "log level: trace, debug, info, warn, error (env TETHER_LOG_LEVEL)")
	format = fs.String("log-format", cli.Env("TETHER_LOG_FORMAT", "auto"), "log format: auto (console on a terminal, JSON otherwise), console, json (env TETHER_LOG_FORMAT)")
	return fs, level, format
}

// splitList splits a comma-separated flag value, dropping blanks.
func splitList(v string) []string {
	var out []string
	for _, e := range strings.Split(v, ",") {
		if e = strings.TrimSpace(e); e != "" {
			out = append(out, e)
		}
	}
	return out
}
