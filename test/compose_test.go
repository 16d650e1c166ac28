package test

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
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

// TestComposeAuth: every NATS client in the compose file passes its own
// credentials as a file from the data volume, and the auth step, run as
// written (with /data in a temporary directory), produces a configuration
// nats-server accepts.
func TestComposeAuth(t *testing.T) {
	c, err := cli.ReadCompose("../docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{
		"supervisor": "/data/auth/supervisor.creds", "configure": "/data/auth/operator.creds",
		"demo-1": "/data/demo-1.creds", "demo-2": "/data/demo-2.creds",
	} {
		cmd := c.Services[name].Command
		if i := slices.Index(cmd, "--creds"); i < 0 || i+1 >= len(cmd) || cmd[i+1] != want {
			t.Errorf("%s: want --creds %s, got %q", name, want, cmd)
		}
	}
	authCmd := c.Services["auth"].Command
	if len(authCmd) < 2 || !strings.HasSuffix(authCmd[0], "/tetherctl") {
		t.Fatalf("auth: %q", authCmd)
	}
	data := t.TempDir()
	args := make([]string, 0, len(authCmd)-1)
	for _, a := range authCmd[1:] {
		args = append(args, strings.ReplaceAll(a, "/data", data))
	}
	if code, out := tetherctlRun(t, args...); code != 0 {
		t.Fatalf("the auth step %q: exit %d: %s", args, code, out)
	}
	conf := filepath.Join(data, "nats-tether.conf")
	opts, err := server.ProcessConfigFile(conf)
	if err != nil {
		t.Fatalf("nats-server rejects %s: %v", conf, err)
	}
	if opts.AccountResolver != nil {
		opts.AccountResolver.Close() // the full resolver's store runs a goroutine
	}
	if !slices.Contains(c.Services["nats"].Command, "/data/nats-tether.conf") {
		t.Errorf("nats does not run with the auth configuration: %q", c.Services["nats"].Command)
	}
}
