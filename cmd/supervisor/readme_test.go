package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/tether-dev/tether/internal/cli"
	"github.com/tether-dev/tether/internal/tetherctl"
	"github.com/tether-dev/tether/supervisor"
)

// flagRow is one supervisor flag as the README's flag table lists it.
type flagRow struct{ name, env, def string }

// envOfUsage finds the variable a flag's usage names: "(env TETHER_X)".
var envOfUsage = regexp.MustCompile(`\(env (TETHER_[A-Z0-9_]+)\)`)

// clearTetherEnv unsets every TETHER_* variable for the test, so the
// defaults newFlags reads are the built-in ones.
func clearTetherEnv(t *testing.T) {
	t.Helper()
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "TETHER_") {
			t.Setenv(k, "") // restored after the test
			_ = os.Unsetenv(k)
		}
	}
}

// realFlags builds the flag set as main does, with no TETHER_* set.
func realFlags(t *testing.T) (*flag.FlagSet, *supervisor.Config, *string, *string) {
	t.Helper()
	cfg := supervisor.DefaultConfig()
	fs, level, format := newFlags(&cfg, flag.ContinueOnError)
	if err := cli.FlagsFromEnv(fs, os.LookupEnv); err != nil {
		t.Fatal(err)
	}
	return fs, &cfg, level, format
}

// flagTable returns every supervisor flag with its variable and default.
func flagTable(t *testing.T) []flagRow {
	t.Helper()
	fs, _, _, _ := realFlags(t)
	var rows []flagRow
	fs.VisitAll(func(f *flag.Flag) {
		m := envOfUsage.FindAllStringSubmatch(f.Usage, -1)
		if len(m) != 1 {
			t.Errorf("--%s: usage names %d TETHER_* variables, want 1: %q", f.Name, len(m), f.Usage)
			return
		}
		rows = append(rows, flagRow{f.Name, m[0][1], f.DefValue})
	})
	return rows
}

// readmeFlagTable reads the rows between the README's flags markers:
// | `--name` | `TETHER_NAME` | `default` or — | what it does |.
func readmeFlagTable(t *testing.T) []flagRow {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, sec, ok := strings.Cut(string(b), "<!-- flags:start -->")
	sec, _, ok2 := strings.Cut(sec, "<!-- flags:end -->")
	if !ok || !ok2 {
		t.Fatal("README.md has no <!-- flags:start --> ... <!-- flags:end --> table")
	}
	var rows []flagRow
	for _, l := range strings.Split(sec, "\n") {
		if !strings.HasPrefix(l, "| `--") {
			continue
		}
		cells := strings.Split(strings.Trim(l, "|"), " | ")
		if len(cells) < 4 || strings.TrimSpace(cells[3]) == "" {
			t.Errorf("README flag row %q: want | `--flag` | `TETHER_VAR` | default | what it does |", l)
			continue
		}
		unquote := func(c string) string { return strings.Trim(strings.TrimSpace(c), "`") }
		def := unquote(cells[2])
		if def == "—" {
			def = ""
		}
		rows = append(rows, flagRow{strings.TrimPrefix(unquote(cells[0]), "--"), unquote(cells[1]), def})
	}
	return rows
}

// TestREADMEFlagTable: the README's table lists exactly the supervisor's
// flags, each with the variable that sets it and its default.
func TestREADMEFlagTable(t *testing.T) {
	clearTetherEnv(t)
	want := flagTable(t)
	got := readmeFlagTable(t)
	byName := map[string]flagRow{}
	for _, r := range got {
		if _, dup := byName[r.name]; dup {
			t.Errorf("README lists --%s twice", r.name)
		}
		byName[r.name] = r
	}
	var table strings.Builder
	for _, w := range want {
		def := "—"
		if w.def != "" {
			def = "`" + w.def + "`"
		}
		fmt.Fprintf(&table, "| `--%s` | `%s` | %s | ... |\n", w.name, w.env, def)
		r, ok := byName[w.name]
		delete(byName, w.name)
		switch {
		case !ok:
			t.Errorf("README's flag table lacks --%s (%s, default %q)", w.name, w.env, w.def)
		case r.env != w.env:
			t.Errorf("README: --%s is set by %s, not %s", w.name, w.env, r.env)
		case r.def != w.def:
			t.Errorf("README: --%s defaults to %q, not %q", w.name, w.def, r.def)
		}
	}
	for name := range byName {
		t.Errorf("README's flag table lists --%s, which the supervisor does not have", name)
	}
	if t.Failed() {
		t.Logf("the flags as the supervisor has them:\n%s", table.String())
	}
}

// TestEveryVariableSetsItsFlag: the variable the README and --help name
// for a flag sets it exactly as the flag would.
func TestEveryVariableSetsItsFlag(t *testing.T) {
	clearTetherEnv(t)
	def := parsed(t)
	for _, row := range flagTable(t) {
		t.Run(row.name, func(t *testing.T) {
			value := sampleValue(t, row, def)
			byFlag := parsed(t, "--"+row.name, value)
			t.Setenv(row.env, value)
			if byEnv := parsed(t); !reflect.DeepEqual(byEnv, byFlag) {
				t.Errorf("%s=%s does not set what --%s %s does:\nenv:  %+v\nflag: %+v", row.env, value, row.name, value, byEnv, byFlag)
			}
		})
	}
}

// settings is everything the flags set.
type settings struct {
	cfg           supervisor.Config
	level, format string
}

// parsed builds the flags as main does and parses args.
func parsed(t *testing.T, args ...string) settings {
	t.Helper()
	fs, cfg, level, format := realFlags(t)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("%q: %v", args, err)
	}
	return settings{*cfg, *level, *format}
}

// sampleValue is a value the flag accepts that changes a setting.
func sampleValue(t *testing.T, row flagRow, def settings) string {
	t.Helper()
	for _, v := range []string{"debug", "7s", "7"} {
		fs, _, _, _ := realFlags(t)
		if fs.Set(row.name, v) != nil {
			continue
		}
		if !reflect.DeepEqual(parsed(t, "--"+row.name, v), def) {
			return v
		}
	}
	t.Fatalf("--%s: no sample value changes anything", row.name)
	return ""
}

// TestREADMENamesOnlyRealVariables: every TETHER_* variable the README
// names is one the supervisor or tetherctl reads.
func TestREADMENamesOnlyRealVariables(t *testing.T) {
	clearTetherEnv(t)
	known := map[string]bool{}
	for _, r := range flagTable(t) {
		known[r.env] = true
	}
	var help strings.Builder
	tetherctl.Run(context.Background(), []string{"help"}, &help, &help)
	for _, m := range regexp.MustCompile(`TETHER_[A-Z0-9_]+`).FindAllString(help.String(), -1) {
		known[m] = true
	}
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var unknown []string
	for _, m := range regexp.MustCompile(`TETHER_[A-Z0-9_*]*`).FindAllString(string(b), -1) {
		if strings.HasSuffix(m, "*") || m == "TETHER_" { // a family (TETHER_*, TETHER_NATS_*) or the prefix
			continue
		}
		if !known[m] && !slices.Contains(unknown, m) {
			unknown = append(unknown, m)
		}
	}
	if len(unknown) > 0 {
		t.Errorf("README.md names %v, which neither the supervisor nor tetherctl reads", unknown)
	}
}
