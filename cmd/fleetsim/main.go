// Command fleetsim simulates a fleet of agents retrying against a server
// that is down for a while, for each jitter mode, and prints the peak load
// the server sees. It is pure and in-process (a fake clock), so it runs in
// a second for thousands of agents:
//
//	go run ./cmd/fleetsim --agents 1000 --outage 10s
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/tether-dev/tether/internal/cli"

	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/internal/fleetsim"
)

func main() {
	fs := flag.NewFlagSet("fleetsim", flag.ExitOnError)
	cli.Describe(fs, `fleetsim: simulates a fleet of agents retrying against a server that is down for --outage, on a
fake clock, once per jitter mode, and prints the load the server sees. Columns: jitter mode; the
most retries in one --window; the most calls in one window once the server is back (the stampede);
when the last agent succeeded; total attempts; calls rejected for want of --capacity; agents that
gave up.`, "fleetsim [flags]")
	agents := fs.Int("agents", 1000, "fleet size")
	outage := fs.Duration("outage", 10*time.Second, "how long the server refuses every call")
	spread := fs.Duration("spread", 0, "spread the first calls over this long (0: all at once, the worst case)")
	capacity := fs.Int("capacity", 0, "calls the recovered server answers per window (0: unlimited)")
	window := fs.Duration("window", 100*time.Millisecond, "window peak load is counted in")
	attempts := fs.Int("attempts", -1, "max attempts per call (-1: unlimited)")
	maxDelay := fs.Duration("max-delay", agentproto.DefaultMaxDelay, "cap on a single wait")
	seed := fs.Uint64("seed", 1, "random seed")
	_ = fs.Parse(os.Args[1:])
	if err := run(os.Stdout, fleetsim.Config{
		Agents: *agents, Outage: *outage, Spread: *spread, Capacity: *capacity, Window: *window, Seed: *seed,
	}, *attempts, *maxDelay); err != nil {
		fmt.Fprintln(os.Stderr, "fleetsim:", err)
		os.Exit(1)
	}
}

// run prints one row per jitter mode.
func run(w io.Writer, cfg fleetsim.Config, attempts int, maxDelay time.Duration) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "jitter\tpeak retries/window\tpeak calls/window after outage\tall done\tattempts\trejected\tgave up\t\n")
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
