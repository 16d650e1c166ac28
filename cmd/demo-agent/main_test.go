package main

import (
	"flag"
	"strings"
	"testing"

	"github.com/tether-dev/tether/internal/cli"
	"github.com/tether-dev/tether/internal/demoagent"
)

// TestComposeFlags keeps docker-compose.yml's two demo agents in step with
// the flags.
func TestComposeFlags(t *testing.T) {
	c, err := cli.ReadCompose("../../docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	cmds := c.CommandsOf("demo-agent")
	if len(cmds) != 2 {
		t.Fatalf("want two demo agents, got %d", len(cmds))
	}
	ids := map[string]bool{}
	for name, args := range cmds {
		var cfg demoagent.Config
		fs, _, _, _ := newFlags(&cfg, flag.ContinueOnError)
		if err := fs.Parse(args); err != nil {
			t.Fatalf("service %s: %v", name, err)
		}
		if ids[cfg.Agent] {
			t.Errorf("service %s: duplicate agent id %q", name, cfg.Agent)
		}
		ids[cfg.Agent] = true
	}
}

func TestHelpSaysWhatItIs(t *testing.T) {
	var cfg demoagent.Config
	fs, _, _, _ := newFlags(&cfg, flag.ContinueOnError)
	var b strings.Builder
	fs.SetOutput(&b)
	fs.Usage()
	for _, want := range []string{"demo-agent: an example Tether agent", "usage: demo-agent", "-creds"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("--help lacks %q:\n%s", want, b.String())
		}
	}
	if err := cli.CheckHelp(b.String(), "demo-agent"); err != nil {
		t.Error(err)
	}
}
