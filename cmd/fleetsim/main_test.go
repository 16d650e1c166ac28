package main

import (
	"flag"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/tether-dev/tether/internal/cli"
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

func TestHelpSaysWhatItIs(t *testing.T) {
	fs, _ := newFlags(flag.ContinueOnError)
	var b strings.Builder
	fs.SetOutput(&b)
	fs.Usage()
	if err := cli.CheckHelp(b.String(), "fleetsim"); err != nil {
		t.Error(err)
	}
	flat := strings.Join(strings.Fields(b.String()), " ") // the paragraph wraps anywhere
	for _, c := range columns {
		if !strings.Contains(flat, `"`+c+`"`) {
			t.Errorf("--help does not explain column %q:\n%s", c, b.String())
		}
	}
}

// TestREADMEFleetsim: the README's fleetsim section shows the command's
// real output for the command it shows, and explains every column.
func TestREADMEFleetsim(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, sec, ok := strings.Cut(string(b), "<!-- fleetsim:start -->")
	sec, _, ok2 := strings.Cut(sec, "<!-- fleetsim:end -->")
	if !ok || !ok2 {
		t.Fatal("README.md has no <!-- fleetsim:start --> ... <!-- fleetsim:end --> section")
	}
	blocks := strings.Split(sec, "```")
	if len(blocks) < 5 {
		t.Fatalf("want a command block and an output block in the fleetsim section:\n%s", sec)
	}
	cmdline := strings.TrimSpace(strings.TrimPrefix(blocks[1], "sh"))
	args, found := strings.CutPrefix(cmdline, "go run ./cmd/fleetsim ")
	if !found {
		t.Fatalf("the README's fleetsim command %q does not start with go run ./cmd/fleetsim", cmdline)
	}
	fs, o := newFlags(flag.ContinueOnError)
	if err := fs.Parse(strings.Fields(args)); err != nil {
		t.Fatalf("README fleetsim command %q: %v", cmdline, err)
	}
	var out strings.Builder
	if err := run(&out, o.cfg, o.attempts, o.maxDelay); err != nil {
		t.Fatal(err)
	}
	if got, want := strings.TrimSpace(out.String()), strings.Trim(blocks[3], "\n"); strings.TrimSpace(want) != got {
		t.Errorf("README shows for %q:\n%s\nbut it prints:\n%s", cmdline, want, out.String())
	}
	explained := map[string]bool{}
	for _, l := range strings.Split(blocks[4], "\n") {
		if strings.HasPrefix(l, "| `") {
			name, _, _ := strings.Cut(strings.TrimPrefix(l, "| `"), "`")
			explained[name] = true
		}
	}
	for _, c := range columns {
		if !explained[c] {
			t.Errorf("the README's fleetsim table does not explain column %q", c)
		}
		delete(explained, c)
	}
	for c := range explained {
		t.Errorf("the README's fleetsim table explains %q, which fleetsim does not print", c)
	}
}
