package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/internal/fleetsim"
)

// liveColumns are the headers of runLive's table.
var liveColumns = []string{"kind", "agents", "msgs in/agent/s", "msgs out/agent/s", "server CPU µs/agent/s",
	"server RSS/agent", "connects after restart", "peak connects/100ms", "working p50", "working p99", "all working"}

// runLive runs every kind of o.live in turn (each with a fresh server) and
// prints one row per kind, then each kind's per-second curves.
func runLive(ctx context.Context, w io.Writer, o *options) error {
	var argv []string
	if !o.inProcess {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("fleetsim: own executable: %w", err)
		}
		argv = []string{exe, "--serve"}
	}
	var rows []fleetsim.LiveResult
	for _, k := range strings.Split(o.live, ",") {
		r, err := fleetsim.RunLive(ctx, fleetsim.LiveConfig{
			Agents: o.cfg.Agents, Kind: fleetsim.LiveKind(strings.TrimSpace(k)), ServerArgv: argv,
			HeartbeatInterval: o.hb, Warmup: o.warmup, Steady: o.steady, Outage: o.cfg.Outage, Cap: o.cap,
			Logf:   func(f string, a ...any) { fmt.Fprintf(os.Stderr, "fleetsim: "+f+"\n", a...) },
			Tether: func(c *agentproto.Config) { c.ConnectRate, c.PingInterval = o.connectRate, o.ping },
			Ping:   o.ping, SizeFromSupervisor: o.sizeFromSupervisor,
		})
		if err != nil {
			return err
		}
		rows = append(rows, r)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "%s\t\n", strings.Join(liveColumns, "\t"))
	for _, r := range rows {
		cpu, rss := "n/a", "n/a"
		if r.CPUKnown {
			cpu = fmt.Sprintf("%.1f", float64(r.CPUPerAgentSec.Nanoseconds())/1000)
		}
		if r.ServerRSS > 0 {
			rss = fmt.Sprintf("%.1f KiB", float64(r.ServerRSS)/float64(r.Agents)/1024)
		}
		fmt.Fprintf(tw, "%s\t%d\t%.3f\t%.3f\t%s\t%s\t%d\t%d\t%s\t%s\t%s\t\n", r.Kind, r.Agents, r.InPerAgentSec, r.OutPerAgentSec,
			cpu, rss, r.Connects, r.PeakConnects, round(r.P50), round(r.P99), round(r.AllWorking))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, r := range rows {
		fmt.Fprintf(w, "%s connects per second after the restart: %v\n", r.Kind, r.ConnectsPerSec)
		fmt.Fprintf(w, "%s agents working by the end of each second: %v\n", r.Kind, r.WorkingPerSec)
		fmt.Fprintf(w, "%s: a 10 ms timer in the clients' process fired up to %v late during the recovery\n", r.Kind, r.TimerLateness.Round(time.Millisecond))
		if r.RecoveryCPU > 0 && r.Connects > 0 {
			fmt.Fprintf(w, "%s server CPU from its restart until all worked: %v (%.0f µs per connect)\n", r.Kind,
				r.RecoveryCPU, float64(r.RecoveryCPU.Microseconds())/float64(r.Connects))
		}
		if r.Kind == fleetsim.KindTether {
			fmt.Fprintf(w, "%s since the crash: %d disconnects, %d rebuilds, %d failed health rounds, %d stale links\n", r.Kind, r.Disconnects, r.Rebuilds, r.HealthFails, r.StaleLinks)
		}
	}
	return nil
}

// round prints d to the millisecond; negative is "never".
func round(d time.Duration) string {
	if d < 0 {
		return "never"
	}
	return d.Round(time.Millisecond).String()
}
