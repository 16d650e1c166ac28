package main

import (
	"strings"
	"testing"
	"time"

	"github.com/tether-dev/tether/internal/fleetsim"
)

func TestRunPrintsEveryMode(t *testing.T) {
	var b strings.Builder
	if err := run(&b, fleetsim.Config{Agents: 200, Outage: 2 * time.Second, Seed: 1}, -1, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, m := range []string{"none", "additive", "full", "decorrelated"} {
		if !strings.Contains(out, m) {
			t.Errorf("no row for %s:\n%s", m, out)
		}
	}
	// Without jitter every agent retries in the same window.
	if !strings.Contains(strings.Split(out, "\n")[1], "200") {
		t.Errorf("no-jitter peak is not the whole fleet:\n%s", out)
	}
}
