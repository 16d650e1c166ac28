package tetherctl

import (
	"encoding/json"
	"flag"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tether-dev/tether/internal/cli"
)

func TestUsageErrorsExit2(t *testing.T) {
	// Nothing listens on port 1: a usage error must come before any connection.
	base := []string{"--nats-url", "nats://127.0.0.1:1"}
	for _, args := range [][]string{
		{},
		{"frobnicate"},
		{"put", "global", "github"},
		{"put", "team:x", "github", "f.json"},
		{"put", "global", "git.hub", "f.json"},
		{"put", "global", "github", "f.json", "--revision", "seven"},
		{"get", "role:", "github"},
		{"get", "agent:a>", "github"},
		{"history", "global", "git hub"},
		{"rollback", "global", "github", "abc"},
		{"rollback", "global", "github", "0"},
		{"--bogus", "get", "global", "x"},
		{"get", "global", "x", "--bogus"},
		{"resolve", "a*", "github"},
		{"explain", "a7", ""},
		{"fleet", "--state", "zombei"},
		{"fleet", "--role", "a.b"},
		{"fleet", "extra"},
		{"import", "f.json"},
		{"import", "f.json", "--scope", "team"},
		{"--timeout", "0s", "get", "global", "x"},
		{"--user", "u", "--token", "t", "get", "global", "x"},
		{"--prefix", "a.b", "get", "global", "x"},
		{"help", "frobnicate"},
	} {
		r := runCLI("", append(slices.Clone(base), args...)...)
		if r.code != ExitUsage {
			t.Errorf("%q: want exit %d, got\n%s", args, ExitUsage, r)
			continue
		}
		if r.stdout != "" || !strings.HasPrefix(r.stderr, "tetherctl: ") || !strings.Contains(r.stderr, "help") {
			t.Errorf("%q: want only a tetherctl error pointing at help on stderr, got\n%s", args, r)
		}
	}
}

func TestHelp(t *testing.T) {
	for _, args := range [][]string{{"help"}, {"-h"}, {"--help"}} {
		r := runCLI("", args...)
		if r.code != ExitOK {
			t.Fatalf("%q: %s", args, r)
		}
		contains(t, "help", r.stdout, "Exit codes:", "5  conflict", "6  unavailable", "--show-secrets", "import FILE --scope SCOPE")
	}
	for _, args := range [][]string{{"help", "put"}, {"put", "-h"}, {"import", "--help"}} {
		r := runCLI("", args...)
		name := args[0+boolInt(args[0] == "help")]
		if r.code != ExitOK || !strings.Contains(r.stdout, "\nusage: tetherctl "+name) {
			t.Errorf("%q: %s", args, r)
		}
	}
}

// TestEveryHelpSaysWhatItIsWithAnExample: tetherctl's and each command's
// --help start with a paragraph saying what it is, then an example.
func TestEveryHelpSaysWhatItIsWithAnExample(t *testing.T) {
	r := runCLI("", "--help")
	if err := cli.CheckHelp(r.stdout, "tetherctl"); err != nil {
		t.Error(err)
	}
	for _, c := range commands {
		for _, args := range [][]string{{c.name, "--help"}, {"help", c.name}} {
			r := runCLI("", args...)
			if r.code != ExitOK {
				t.Fatalf("%q: %s", args, r)
			}
			if err := cli.CheckHelp(r.stdout, "tetherctl "+c.name); err != nil {
				t.Error(err)
			}
		}
		// The example is a valid invocation: its flags and arguments parse.
		fs := newFlagSet(c.name)
		var g globals
		g.register(fs)
		var f cmdFlags
		if c.flags != nil {
			c.flags(fs, &f)
		}
		pos, err := parseInterleaved(fs, strings.Fields(c.example)[1:])
		if err != nil || len(pos) < c.minArgs || (c.maxArgs >= 0 && len(pos) > c.maxArgs) {
			t.Errorf("tetherctl %s: example %q does not parse: %v, %d argument(s)", c.name, c.example, err, len(pos))
		}
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func TestExitCodeClasses(t *testing.T) {
	for want, err := range map[int]error{
		ExitFailure:       fail(nil, nil, "x"),
		ExitUsage:         usageErr(nil, "x"),
		ExitInvalidConfig: fail(ErrInvalidConfig, nil, "x"),
		ExitNotFound:      fail(ErrNotFound, nil, "x"),
		ExitConflict:      fail(ErrConflict, nil, "x"),
		ExitUnavailable:   fail(ErrUnavailable, nil, "x"),
	} {
		if got := ExitCode(err); got != want {
			t.Errorf("ExitCode(%v) = %d, want %d", err, got, want)
		}
	}
	if ExitCode(nil) != ExitOK {
		t.Error("ExitCode(nil) != 0")
	}
}

func TestParseInterleaved(t *testing.T) {
	var rev optUint
	var json bool
	fs := newFlagSet("x")
	fs.Var(&rev, "revision", "")
	fs.BoolVar(&json, "json", false, "")
	pos, err := parseInterleaved(fs, []string{"global", "--revision", "7", "github", "--json", "-", "--", "--not-a-flag"})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"global", "github", "-", "--not-a-flag"}; !slices.Equal(pos, want) {
		t.Errorf("positional = %q, want %q", pos, want)
	}
	if !rev.set || rev.v != 7 || !json {
		t.Errorf("flags not parsed: revision %+v json %v", rev, json)
	}
	if _, err := parseInterleaved(newFlagSet("y"), []string{"-h"}); err != flag.ErrHelp {
		t.Errorf("-h: got %v", err)
	}
}

func TestGlobalsFromEnv(t *testing.T) {
	env := map[string]string{"TETHER_NATS_URL": "nats://h:1", "TETHER_PREFIX": "p", "TETHER_TIMEOUT": "2s"}
	var g globals
	g.fromEnv(func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	if g.url != "nats://h:1" || g.prefix != "p" || g.timeout != 2*time.Second {
		t.Errorf("globals = %+v", g)
	}
	g.fromEnv(func(string) (string, bool) { return "", false })
	if g.url != DefaultNATSURL || g.prefix != "mcp" || g.timeout != DefaultTimeout {
		t.Errorf("defaults = %+v", g)
	}
}

func TestAgo(t *testing.T) {
	for d, want := range map[time.Duration]string{
		-time.Second:                       "0s ago",
		850 * time.Millisecond:             "850ms ago",
		1549 * time.Millisecond:            "1.5s ago",
		42 * time.Second:                   "42s ago",
		3*time.Minute + 10*time.Second:     "3m10s ago",
		5*time.Hour + 2*time.Minute:        "5h2m ago",
		3*24*time.Hour + 4*time.Hour:       "3d4h ago",
		1*time.Hour + 400*time.Millisecond: "1h0m ago",
	} {
		if got := ago(d); got != want {
			t.Errorf("ago(%v) = %q, want %q", d, got, want)
		}
	}
}

func TestMaskJSON(t *testing.T) {
	for in, want := range map[string]string{
		`{"command":"x","env":{"A":"s1","B":"s2"}}`:                  `{"command":"x","env":{"A":"****","B":"****"}}`,
		`{"url":"https://x","headers":{"Authorization":"Bearer s"}}`: `{"headers":{"Authorization":"****"},"url":"https://x"}`,
		`{"env":"not-an-object","timout":"1s"}`:                      `{"env":"****","timout":"1s"}`,
		`{"ENV":{"T":"s3"},"Headers":{"X":"s4"}}`:                    `{"ENV":{"T":"****"},"Headers":{"X":"****"}}`,
		`not json s3cret`: unreadableValue,
	} {
		if got := string(maskJSON([]byte(in))); got != want {
			t.Errorf("maskJSON(%s) = %s, want %s", in, got, want)
		}
	}
	a := &app{g: globals{showSecrets: true}}
	if got := string(a.mask([]byte(`{"env": {"A": "s1"}}`))); got != `{"env":{"A":"s1"}}` {
		t.Errorf("--show-secrets mask = %s", got)
	}
}

func TestConfigCell(t *testing.T) {
	var v map[string]any
	if err := json.Unmarshal([]byte(`{"github":{"revision":12,"applied":true,"current":12},
		"fs":{"revision":3,"applied":false,"error":"boom","current":4},"x":{"revision":2,"applied":true,"current_error":"kvconfig: no config"}}`), &v); err != nil {
		t.Fatal(err)
	}
	want := "fs 3/4* NOT APPLIED (boom), github 12/12, x 2 (no config)"
	if got := configsCell(v); got != want {
		t.Errorf("configsCell = %q, want %q", got, want)
	}
}

// TestHelpNamesTheVariablesRead: the TETHER_* variables tetherctl's help
// names are exactly the ones its global flags read.
func TestHelpNamesTheVariablesRead(t *testing.T) {
	var read []string
	var g globals
	g.fromEnv(func(k string) (string, bool) { read = append(read, k); return "", false })
	named := regexp.MustCompile(`TETHER_[A-Z0-9_]+`).FindAllString(mainHelp, -1)
	slices.Sort(read)
	slices.Sort(named)
	if named = slices.Compact(named); !slices.Equal(read, named) {
		t.Errorf("tetherctl reads %v; its help names %v", read, named)
	}
}
