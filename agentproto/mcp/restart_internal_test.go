package mcp

import (
	"testing"
	"time"

	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/kvconfig"
)

func TestRestartDelay(t *testing.T) {
	p := RestartPolicy{BaseDelay: 100 * time.Millisecond, MaxDelay: time.Second}
	for n, want := range map[int]time.Duration{1: 100 * time.Millisecond, 2: 200 * time.Millisecond, 3: 400 * time.Millisecond,
		4: 800 * time.Millisecond, 5: time.Second, 60: time.Second} {
		if got := restartDelay(p, n); got != want {
			t.Errorf("restartDelay(%d) = %v, want %v", n, got, want)
		}
	}
}

// The restart budget on an exact clock: backoff after each exit, a
// quarantine at the exit after MaxRestarts restarts within Window, its
// end after QuarantineFor, a fresh budget after a stable run, and old
// restarts leaving the window.
func TestRestartBudget(t *testing.T) {
	p := RestartPolicy{BaseDelay: 100 * time.Millisecond, MaxDelay: time.Second, MaxRestarts: 3,
		Window: 10 * time.Second, StableAfter: 5 * time.Second, QuarantineFor: time.Minute}
	t0 := time.Unix(1_000_000, 0)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	b := restartBudget{p: p}
	step := func(name string, now time.Duration, restart bool, wantWait time.Duration, wantQ, wantRel bool) {
		t.Helper()
		w, q, rel := b.start(at(now), restart)
		if w != wantWait || q != wantQ || rel != wantRel {
			t.Fatalf("%s: start = (%v, %v, %v), want (%v, %v, %v)", name, w, q, rel, wantWait, wantQ, wantRel)
		}
	}
	exit := func(name string, started, now time.Duration, wantQ bool) {
		t.Helper()
		if q := b.exited(at(started), at(now)); q != wantQ {
			t.Fatalf("%s: exited quarantined = %v, want %v", name, q, wantQ)
		}
	}
	step("first start", 0, false, 0, false, false)
	exit("crash 1", 0, 10*time.Millisecond, false)
	step("restart 1 waits the base delay", 10*time.Millisecond, true, 100*time.Millisecond, false, false)
	exit("crash 2", 110*time.Millisecond, 120*time.Millisecond, false)
	step("restart 2 waits double", 120*time.Millisecond, true, 200*time.Millisecond, false, false)
	exit("crash 3", 320*time.Millisecond, 330*time.Millisecond, false)
	step("restart 3, asked late, waits what is left", 500*time.Millisecond, true, 230*time.Millisecond, false, false)
	exit("crash 4: 3 restarts used", 730*time.Millisecond, 740*time.Millisecond, true)
	step("quarantined", time.Second, true, 0, true, false)
	step("still quarantined just before the end", 740*time.Millisecond+time.Minute-time.Nanosecond, true, 0, true, false)
	step("released at the end, fresh budget", 740*time.Millisecond+time.Minute, true, 0, false, true)
	if b.count() != 0 {
		t.Fatalf("%d restarts after release", b.count())
	}

	b = restartBudget{p: p}
	step("start", 0, false, 0, false, false)
	for i := range 3 {
		exit("crash", time.Duration(i)*time.Second, time.Duration(i)*time.Second+time.Millisecond, false)
		step("restart", time.Duration(i+1)*time.Second, true, 0, false, false)
	}
	exit("a stable run resets the count", 3*time.Second, 9*time.Second, false)
	if b.count() != 0 {
		t.Fatalf("%d restarts after a stable run", b.count())
	}

	b = restartBudget{p: p}
	step("start", 0, false, 0, false, false)
	for i := range 3 {
		exit("crash", time.Duration(i)*4*time.Second, time.Duration(i)*4*time.Second+time.Millisecond, false)
		step("restart", time.Duration(i)*4*time.Second+time.Second, true, 0, false, false)
	}
	// Restarts at 1s, 5s, 9s; at 11.5s the first has left the 10s window.
	exit("an old restart left the window", 9*time.Second, 11500*time.Millisecond, false)
}

func TestRestartPolicyValidate(t *testing.T) {
	for _, bad := range []RestartPolicy{{BaseDelay: -1}, {MaxRestarts: -1}, {BaseDelay: time.Second, MaxDelay: time.Millisecond}, {Window: -time.Second}} {
		if bad.Validate() == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
	if err := (RestartPolicy{}).Validate(); err != nil {
		t.Error(err)
	}
	if _, err := NewToolCaller(agentprotoResolvedForTest(), Options{Restart: RestartPolicy{MaxRestarts: -1}}); err == nil {
		t.Error("NewToolCaller accepted a bad restart policy")
	}
}

func agentprotoResolvedForTest() agentproto.Resolved {
	return agentproto.Resolved{Server: "x", Key: "global.x", Revision: 1,
		Config: &kvconfig.ServerConfig{Transport: kvconfig.TransportHTTP, URL: "http://127.0.0.1:1/mcp"}}
}
