package test

import (
	"slices"
	"strings"
	"testing"

	"github.com/tether-dev/tether/internal/cli"
)

// TestComposeServices checks docker-compose.yml has what the README
// promises: a JetStream nats with a volume, the supervisor pointed at it
// and two demo agents. (No Docker engine runs here; the flags are checked
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
}
