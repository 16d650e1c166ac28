package test

import (
	"slices"
	"strings"
	"testing"

	"github.com/tether-dev/tether/internal/cli"
)

// TestComposeServices checks docker-compose.yml has what the README
// promises: a JetStream nats with a volume, the supervisor pointed at it
// with its token in a volume, two demo agents, and every port published
// on 127.0.0.1 only. (No Docker engine runs here; the flags are checked
// against each command's flag set in cmd/*/main_test.go.)
func TestComposeServices(t *testing.T) {
	c, err := cli.ReadCompose("../docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"nats", "supervisor", "demo-1", "demo-2"} {
		if _, ok := c.Services[s]; !ok {
			t.Errorf("service %s missing", s)
		}
	}
	n := c.Services["nats"]
	if !slices.Contains(n.Command, "--jetstream") || len(n.Volumes) == 0 || !strings.HasPrefix(n.Volumes[0], "nats-data:") {
		t.Errorf("nats: JetStream with a volume expected: %+v", n)
	}
	if _, ok := c.Volumes["nats-data"]; !ok {
		t.Error("volume nats-data not declared")
	}
	sup := c.Services["supervisor"]
	if !slices.Contains(sup.Command, "nats://nats:4222") || !slices.Contains(sup.DependsOn, "nats") || sup.Build == nil {
		t.Errorf("supervisor: %+v", sup)
	}
	if !slices.Contains(sup.Command, "/data") || len(sup.Volumes) == 0 || sup.Volumes[0] != "supervisor-data:/data" {
		t.Errorf("supervisor: its data dir (the HTTP token) belongs in the supervisor-data volume: %+v", sup)
	}
	if _, ok := c.Volumes["supervisor-data"]; !ok {
		t.Error("volume supervisor-data not declared")
	}
	for name, s := range c.Services {
		for _, p := range s.Ports {
			if !strings.HasPrefix(p, "127.0.0.1:") {
				t.Errorf("service %s publishes %q beyond loopback; write \"127.0.0.1:%s\"", name, p, p)
			}
		}
	}
}
