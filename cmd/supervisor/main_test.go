package main

import (
	"flag"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tether-dev/tether/internal/cli"
	"github.com/tether-dev/tether/supervisor"
)

// TestComposeFlags keeps docker-compose.yml in step with the flags.
func TestComposeFlags(t *testing.T) {
	c, err := cli.ReadCompose("../../docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	cmds := c.CommandsOf("supervisor")
	if len(cmds) != 1 {
		t.Fatalf("want one supervisor service, got %v", cmds)
	}
	for name, args := range cmds {
		cfg := supervisor.DefaultConfig()
		fs, _, _ := newFlags(&cfg, flag.ContinueOnError)
		if err := fs.Parse(args); err != nil {
			t.Fatalf("service %s: %v", name, err)
		}
		if cfg.NATSURL == "" {
			t.Errorf("service %s: the supervisor must point at the nats service, not embed one", name)
		}
		if err := cfg.Validate(); err != nil {
			t.Errorf("service %s: %v", name, err)
		}
	}
}

// TestHTTPAuthFlags: --http-allowed-hosts and TETHER_HTTP_ALLOWED_HOSTS
// split on commas; the flag wins over the environment.
func TestHTTPAuthFlags(t *testing.T) {
	t.Setenv("TETHER_HTTP_ALLOWED_HOSTS", " a.example, ,b.example:8080 ")
	t.Setenv("TETHER_HTTP_TOKEN_FILE", "/run/tether/http.token")
	cfg := supervisor.DefaultConfig()
	fs, _, _ := newFlags(&cfg, flag.ContinueOnError)
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cfg.HTTPAllowedHosts, []string{"a.example", "b.example:8080"}) || cfg.HTTPTokenFile != "/run/tether/http.token" {
		t.Errorf("from the environment: %q, %q", cfg.HTTPAllowedHosts, cfg.HTTPTokenFile)
	}
	fs, _, _ = newFlags(&cfg, flag.ContinueOnError)
	if err := fs.Parse([]string{"--http-allowed-hosts", "c.example", "--http-token-file", "t"}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cfg.HTTPAllowedHosts, []string{"c.example"}) || cfg.HTTPTokenFile != "t" {
		t.Errorf("from the flags: %q, %q", cfg.HTTPAllowedHosts, cfg.HTTPTokenFile)
	}
}

// Every flag is settable from a TETHER_* variable, as the README says, and
// a command-line flag still wins over it.
func TestEveryFlagHasAnEnvVariable(t *testing.T) {
	cfg := supervisor.DefaultConfig()
	fs, _, _ := newFlags(&cfg, flag.ContinueOnError)
	env := map[string]string{"TETHER_HEARTBEAT_INTERVAL": "2s", "TETHER_ZOMBIE_AFTER": "5", "TETHER_REPLICAS": "3"}
	if err := cli.FlagsFromEnv(fs, func(k string) (string, bool) { v, ok := env[k]; return v, ok }); err != nil {
		t.Fatal(err)
	}
	fs.VisitAll(func(f *flag.Flag) {
		if !strings.Contains(f.Usage, "(env TETHER_") {
			t.Errorf("--%s has no TETHER_* variable: %q", f.Name, f.Usage)
		}
	})
	if err := fs.Parse([]string{"--zombie-after", "4"}); err != nil {
		t.Fatal(err)
	}
	if cfg.Fleet.HeartbeatInterval != 2*time.Second || cfg.Fleet.ZombieAfter != 4 || cfg.Buckets.Replicas != 3 {
		t.Fatalf("from the environment: heartbeat %v, zombie-after %d (the flag wins), replicas %d",
			cfg.Fleet.HeartbeatInterval, cfg.Fleet.ZombieAfter, cfg.Buckets.Replicas)
	}
	cfg2 := supervisor.DefaultConfig()
	fs2, _, _ := newFlags(&cfg2, flag.ContinueOnError)
	err := cli.FlagsFromEnv(fs2, func(k string) (string, bool) {
		if k == "TETHER_LOST_AFTER" {
			return "three", true
		}
		return "", false
	})
	if err == nil || !strings.Contains(err.Error(), "TETHER_LOST_AFTER") {
		t.Fatalf("a bad value: %v, want an error naming TETHER_LOST_AFTER", err)
	}
}

func TestHelpSaysWhatItIs(t *testing.T) {
	cfg := supervisor.DefaultConfig()
	fs, _, _ := newFlags(&cfg, flag.ContinueOnError)
	var b strings.Builder
	fs.SetOutput(&b)
	fs.Usage()
	for _, want := range []string{"supervisor: Tether's central service", "usage: supervisor", "-heartbeat-interval", "auth always on", "  go run ./cmd/supervisor\n"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("--help lacks %q:\n%s", want, b.String())
		}
	}
	if err := cli.CheckHelp(b.String(), "supervisor"); err != nil {
		t.Error(err)
	}
}
