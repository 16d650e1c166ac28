package test

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/tether-dev/tether/internal/cli"
	"github.com/tether-dev/tether/internal/natstest"
	"github.com/tether-dev/tether/internal/suptest"
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
	if !slices.Contains(sup.Command, "nats://nats:4222") || sup.DependsOn["nats"] == "" || sup.Build == nil {
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

// TestComposeRestartAndHealth: compose starts services in the order their
// readiness needs, and brings back whatever stops. A one-shot step (one a
// service waits for with service_completed_successfully) may restart only
// on failure; every other, long-running service restarts whenever it
// stops (the supervisor exits at once when NATS is not up). The supervisor
// and nats have healthchecks compose can run in their images, and a
// service that needs another one ready waits for it to be healthy.
func TestComposeRestartAndHealth(t *testing.T) {
	c, err := cli.ReadCompose("../docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	oneShot := map[string]bool{}
	for _, s := range c.Services {
		for dep, cond := range s.DependsOn {
			if cond == cli.ConditionCompleted {
				oneShot[dep] = true
			}
		}
	}
	for _, want := range []string{"auth", "creds-demo-1", "creds-demo-2", "configure"} {
		if !oneShot[want] {
			t.Errorf("%s is a one-shot step: the services after it must wait for it with %s", want, cli.ConditionCompleted)
		}
	}
	for _, name := range sortedNames(c.Services) {
		s := c.Services[name]
		switch {
		case oneShot[name] && s.Restart != "" && s.Restart != "no" && s.Restart != "on-failure":
			t.Errorf("%s is a one-shot step: restart %q would run it again after it succeeded; use on-failure", name, s.Restart)
		case !oneShot[name] && s.Restart != "unless-stopped" && s.Restart != "always":
			t.Errorf("%s runs until stopped: it needs restart: unless-stopped (has %q)", name, s.Restart)
		}
		for _, dep := range s.DependsOn.Names() {
			d, ok := c.Services[dep]
			var want string
			switch {
			case !ok:
				t.Errorf("%s depends on %s, which is no service", name, dep)
				continue
			case oneShot[dep]:
				want = cli.ConditionCompleted
			case d.Healthcheck != nil:
				want = cli.ConditionHealthy
			default:
				want = cli.ConditionStarted
			}
			if got := s.DependsOn[dep]; got != want {
				t.Errorf("%s depends on %s with %s; want %s", name, dep, got, want)
			}
		}
	}
	if got := c.Services["supervisor"].DependsOn["nats"]; got != cli.ConditionHealthy {
		t.Errorf("the supervisor must wait for nats to be healthy (it exits at once without NATS), not %q", got)
	}

	// The supervisor's healthcheck runs a binary of the image (distroless:
	// no shell, no wget) against /readyz on the port of its --http.
	sup := c.Services["supervisor"]
	hc := sup.Healthcheck
	if hc == nil {
		t.Fatal("supervisor: no healthcheck")
	}
	checkHealthTiming(t, "supervisor", hc)
	if len(hc.Test) < 3 || hc.Test[0] != "CMD" {
		t.Fatalf("supervisor healthcheck %q: want [\"CMD\", \"/usr/local/bin/<command>\", URL]", hc.Test)
	}
	bin, found := strings.CutPrefix(hc.Test[1], "/usr/local/bin/")
	if _, err := os.Stat(filepath.Join("..", "cmd", bin, "main.go")); !found || err != nil {
		t.Errorf("supervisor healthcheck runs %s, which the image does not have (it holds the commands of cmd/)", hc.Test[1])
	}
	_, port, _ := net.SplitHostPort(flagValue(sup.Command, "--http"))
	if want := "http://127.0.0.1:" + port + "/readyz"; port == "" || hc.Test[len(hc.Test)-1] != want {
		t.Errorf("supervisor healthcheck %q: want it to ask %s (--http %s)", hc.Test, want, flagValue(sup.Command, "--http"))
	}

	// nats's healthcheck asks its monitoring port's /healthz.
	n := c.Services["nats"]
	if n.Healthcheck == nil {
		t.Fatal("nats: no healthcheck")
	}
	checkHealthTiming(t, "nats", n.Healthcheck)
	mon := flagValue(n.Command, "--http_port")
	if mon == "" || !strings.Contains(strings.Join(n.Healthcheck.Test, " "), "http://127.0.0.1:"+mon+"/healthz") {
		t.Errorf("nats healthcheck %q: want it to ask http://127.0.0.1:%s/healthz (--http_port)", n.Healthcheck.Test, mon)
	}
}

func checkHealthTiming(t *testing.T, name string, hc *cli.Healthcheck) {
	t.Helper()
	for what, v := range map[string]string{"interval": hc.Interval, "timeout": hc.Timeout, "start_period": hc.StartPeriod} {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			t.Errorf("%s healthcheck %s %q: want a duration", name, what, v)
		}
	}
	if hc.Retries < 1 {
		t.Errorf("%s healthcheck retries %d: want at least 1", name, hc.Retries)
	}
}

// flagValue is the value after flag in a command line, "" without it.
func flagValue(cmd []string, flag string) string {
	if i := slices.Index(cmd, flag); i >= 0 && i+1 < len(cmd) {
		return cmd[i+1]
	}
	return ""
}

func sortedNames(m map[string]cli.ComposeService) []string {
	names := make([]string, 0, len(m))
	for k := range m {
		names = append(names, k)
	}
	slices.Sort(names)
	return names
}

// TestComposeSupervisorHealthcheck runs the compose file's supervisor
// healthcheck, as written but for the port, against a real supervisor
// bound to every interface as in compose (so with a token on the rest of
// its HTTP): healthy while it is ready, unhealthy once NATS is gone.
func TestComposeSupervisorHealthcheck(t *testing.T) {
	c, err := cli.ReadCompose("../docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	hc := c.Services["supervisor"].Healthcheck
	if hc == nil || len(hc.Test) < 3 {
		t.Fatalf("supervisor healthcheck: %+v", hc)
	}
	bin := filepath.Join(t.TempDir(), filepath.Base(hc.Test[1]))
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/"+filepath.Base(hc.Test[1])).CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", hc.Test[1], err, out)
	}
	srv := natstest.RunServer(t)
	cfg := suptest.Config(t, srv.URL())
	cfg.HTTPAddr, cfg.DataDir = "0.0.0.0:0", t.TempDir()
	sup := suptest.Start(t, cfg)
	_, port, _ := net.SplitHostPort(sup.HTTPAddr())
	args := slices.Clone(hc.Test[2:])
	args[len(args)-1] = strings.Replace(args[len(args)-1], ":8080/", ":"+port+"/", 1)
	probe := func() (int, string) {
		out, err := exec.Command(bin, args...).CombinedOutput()
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return exit.ExitCode(), string(out)
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0, string(out)
	}
	if code, out := probe(); code != 0 {
		t.Fatalf("healthcheck %q against a ready supervisor: exit %d: %s", args, code, out)
	}
	srv.Shutdown()
	natstest.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		if code, out := probe(); code != 1 || !strings.Contains(out, "503") {
			return fmt.Errorf("without NATS: exit %d: %s", code, out)
		}
		return nil
	})
}
