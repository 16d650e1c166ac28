// Command fleetsim simulates a fleet of agents retrying against a server
// that is down for a while, for each jitter mode, and prints the peak load
// the server sees. It is pure and in-process (a fake clock), so it runs in
// a second for thousands of agents:
//
//	go run ./cmd/fleetsim --agents 1000 --outage 10s
//
// With --live it runs real clients instead (internal/fleetsim.RunLive)
// against a NATS server in a child process (itself with --serve): the
// server's messages and CPU per agent in steady state, then a server
// crash and restart under the fleet (connects per 100 ms at the server,
// time until every agent works):
//
//	go run ./cmd/fleetsim --live tether,bare,tuned --agents 5000
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/tether-dev/tether/internal/cli"

	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/internal/fleetsim"
)

func main() {
	fs, o := newFlags(flag.ExitOnError)
	_ = fs.Parse(os.Args[1:])
	var err error
	switch {
	case o.serve:
		err = fleetsim.Serve(signalContext(), o.port, o.httpPort, os.Stdout)
	case o.live != "":
		err = withProfile(o.cpuProfile, func() error { return runLive(signalContext(), os.Stdout, o) })
	default:
		err = run(os.Stdout, o.cfg, o.attempts, o.maxDelay)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "fleetsim:", err)
		os.Exit(1)
	}
}

// options are the parsed flags.
type options struct {
	cfg      fleetsim.Config
	attempts int
	maxDelay time.Duration
	// --live
	live                    string
	warmup, steady, hb, cap time.Duration
	inProcess               bool
	cpuProfile              string
	connectRate             int
	sizeFromSupervisor      bool
	ping                    time.Duration
	// --serve (the child process of --live)
	serve          bool
	port, httpPort int
}

// newFlags binds every flag to the options it returns.
func newFlags(onErr flag.ErrorHandling) (*flag.FlagSet, *options) {
	fs := flag.NewFlagSet("fleetsim", onErr)
	cli.Describe(fs, `fleetsim: simulates a fleet of agents retrying against a server that is down for --outage, on a
fake clock, once per jitter mode, and prints the load the server sees, one row per mode. Columns:
"jitter" the mode; "peak retries/window" the most retries in one --window; "peak calls/window
after outage" the most calls in one window once the server is back (the stampede it absorbs); "all
done" when the last agent succeeded (never: some gave up or were still retrying); "attempts" every
call; "rejected" calls refused for want of --capacity; "gave up" agents out of --attempts.`, `
go run ./cmd/fleetsim --agents 1000 --outage 10s
fleetsim --agents 5000 --outage 30s --capacity 200 --attempts 8`, "fleetsim [flags]")
	o := &options{}
	c := &o.cfg
	fs.IntVar(&c.Agents, "agents", fleetsim.DefaultAgents, "fleet size")
	fs.DurationVar(&c.Outage, "outage", fleetsim.DefaultOutage, "how long the server refuses every call")
	fs.DurationVar(&c.Spread, "spread", 0, "spread the first calls over this long (0: all at once, the worst case)")
	fs.IntVar(&c.Capacity, "capacity", 0, "calls the recovered server answers per window (0: unlimited)")
	fs.DurationVar(&c.Window, "window", fleetsim.DefaultWindow, "window peak load is counted in")
	fs.IntVar(&o.attempts, "attempts", -1, "max attempts per call (-1: unlimited)")
	fs.DurationVar(&o.maxDelay, "max-delay", agentproto.DefaultMaxDelay, "cap on a single wait")
	fs.Uint64Var(&c.Seed, "seed", 1, "random seed")
	fs.StringVar(&o.live, "live", "", "run real clients instead: comma-separated kinds of tether, bare, tuned (--agents and --outage apply)")
	fs.DurationVar(&o.warmup, "warmup", fleetsim.DefaultWarmup, "--live: wait after the fleet connected")
	fs.DurationVar(&o.steady, "steady", fleetsim.DefaultSteady, "--live: steady-state window")
	fs.DurationVar(&o.hb, "heartbeat", agentproto.DefaultHeartbeatInterval, "--live: heartbeat interval of every kind")
	fs.DurationVar(&o.cap, "cap", fleetsim.DefaultLiveCap, "--live: wait for every agent after the restart")
	fs.BoolVar(&o.inProcess, "in-process", false, "--live: run the server in this process (its CPU is then not measured)")
	fs.IntVar(&o.connectRate, "connect-rate", agentproto.DefaultConnectRate, "--live: tether's Config.ConnectRate (its FleetSize is --agents)")
	fs.BoolVar(&o.sizeFromSupervisor, "fleet-size-from-supervisor", false, "--live: tether keeps the default FleetSize and sizes its window from a stand-in supervisor's resolveall fleet_size")
	fs.DurationVar(&o.ping, "ping", agentproto.DefaultPingInterval, "--live: tether's and tuned's PingInterval (black hole found within 3 of them)")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "--live: write the clients' CPU profile to this file")
	fs.BoolVar(&o.serve, "serve", false, "internal: serve NATS for --live in a child process")
	fs.IntVar(&o.port, "port", 0, "internal: --serve port")
	fs.IntVar(&o.httpPort, "http-port", 0, "internal: --serve monitor port")
	return fs, o
}

// columns are the headers of run's table, as --help and README.md explain them.
var columns = []string{"jitter", "peak retries/window", "peak calls/window after outage", "all done", "attempts", "rejected", "gave up"}

// run prints one row per jitter mode.
func run(w io.Writer, cfg fleetsim.Config, attempts int, maxDelay time.Duration) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "%s\t\n", strings.Join(columns, "\t"))
	for _, m := range []agentproto.JitterMode{agentproto.JitterNone, agentproto.JitterAdditive, agentproto.JitterFull, agentproto.JitterDecorrelated} {
		p := agentproto.DefaultPolicy()
		p.JitterMode, p.MaxAttempts, p.MaxDelay, p.MaxElapsed = m, attempts, maxDelay, 0
		c := cfg
		c.Policy = p
		r, err := fleetsim.Simulate(c)
		if err != nil {
			return err
		}
		done := "never"
		if r.AllDone >= 0 {
			done = r.AllDone.Round(10 * time.Millisecond).String()
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%d\t%d\t%d\t\n", m, r.PeakRetries, r.PeakAfterOutage, done, r.Attempts, r.Rejected, r.GaveUp)
	}
	return tw.Flush()
}

// signalContext ends on SIGINT or SIGTERM.
func signalContext() context.Context {
	ctx, _ := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	return ctx
}

// withProfile runs f under a CPU profile written to path (none if empty).
func withProfile(path string, f func() error) error {
	if path == "" {
		return f()
	}
	out, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("fleetsim: cpuprofile: %w", err)
	}
	defer out.Close()
	if err := pprof.StartCPUProfile(out); err != nil {
		return fmt.Errorf("fleetsim: cpuprofile: %w", err)
	}
	defer pprof.StopCPUProfile()
	return f()
}
