package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tether-dev/tether/internal/natstest"
)

// TestGoRunParentDeathStopsSupervisor: the README's `go run ./cmd/supervisor`
// is a go process whose child is the supervisor. Killing the go process
// (here with SIGKILL, which it cannot pass on) must not leave the
// supervisor running, holding the ports and the data dir: it notices its
// parent's death and exits.
func TestGoRunParentDeathStopsSupervisor(t *testing.T) {
	dir := t.TempDir()
	// A free port of its own: the embedded server takes port 0 as nats-server's default, 4222.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	listen := ln.Addr().String()
	_ = ln.Close()
	// Built as the test binary was (with -race under go test -race), go run
	// reuses the packages that build compiled: only main is left to build.
	args := []string{"run"}
	if raceEnabled {
		args = append(args, "-race")
	}
	args = append(args, "./cmd/supervisor", "--data-dir", dir, "--listen", listen, "--http", "")
	cmd := exec.Command("go", args...)
	cmd.Dir = filepath.Join("..", "..")
	for _, kv := range os.Environ() { // the supervisor's settings are the flags alone
		if !strings.HasPrefix(kv, "TETHER_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	// A file, not a pipe: Wait must not wait for the supervisor to close it.
	out, err := os.Create(filepath.Join(t.TempDir(), "output"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	cmd.Stdout, cmd.Stderr = out, out
	output := func() string { b, _ := os.ReadFile(out.Name()); return string(b) }
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	goPID := cmd.Process.Pid
	waited := false
	supPID := 0
	t.Cleanup(func() {
		if !waited {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
		if supPID != 0 && !exited(supPID) {
			_ = syscall.Kill(supPID, syscall.SIGKILL) // the test's own grandchild, still running: the test failed
		}
	})

	// The supervisor writes its PID into <data-dir>/LOCK first thing after
	// it starts. Compiling and linking it comes first: seconds with the
	// test build's packages cached, about a minute from nothing.
	start := time.Now()
	natstest.CheckFor(t, 240*time.Second, 50*time.Millisecond, func() error {
		b, err := os.ReadFile(filepath.Join(dir, "LOCK"))
		if err != nil {
			return fmt.Errorf("no LOCK yet: %w; output so far:\n%s", err, output())
		}
		var lock struct {
			PID int `json:"pid"`
		}
		if err := json.Unmarshal(b, &lock); err != nil || lock.PID == 0 {
			return fmt.Errorf("LOCK %q: %v", b, err)
		}
		if ppid := parentOf(lock.PID); ppid != goPID {
			return fmt.Errorf("LOCK names PID %d, whose parent is %d, not the go process %d", lock.PID, ppid, goPID)
		}
		supPID = lock.PID
		return nil
	})
	t.Logf("go run started the supervisor (PID %d) in %v", supPID, time.Since(start).Round(time.Millisecond))

	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	waited = true
	killed := time.Now()
	natstest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if !exited(supPID) {
			return fmt.Errorf("supervisor PID %d still runs after its go run parent was killed; output:\n%s", supPID, output())
		}
		return nil
	})
	t.Logf("the supervisor exited %v after go run was killed", time.Since(killed).Round(time.Millisecond))
}

// procStat returns the fields of /proc/<pid>/stat after the command name.
func procStat(pid int) []string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(string(b[i+1:]))
}

// parentOf is pid's parent PID, 0 when pid is gone.
func parentOf(pid int) int {
	f := procStat(pid)
	if len(f) < 2 {
		return 0
	}
	ppid, _ := strconv.Atoi(f[1])
	return ppid
}

// exited reports whether pid has ended: gone, or a zombie nobody reaped yet.
func exited(pid int) bool {
	f := procStat(pid)
	return len(f) == 0 || f[0] == "Z" || f[0] == "X"
}
