package main

import (
	"flag"
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
