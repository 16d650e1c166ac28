package main

import (
	"flag"
	"slices"
	"testing"

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
