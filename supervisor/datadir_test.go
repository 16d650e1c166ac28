package supervisor_test

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tether-dev/tether/internal/suptest"
	"github.com/tether-dev/tether/supervisor"
	"github.com/tether-dev/tether/supervisor/auth"
)

// atOnce is how long a refused Start may take: it must not wait for
// anything (the old port clash waited 10 s for the embedded server).
const atOnce = time.Second

// startErr starts a supervisor that must fail, and returns its error and
// how long Start took.
func startErr(t *testing.T, cfg supervisor.Config) (error, time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	s, err := supervisor.Start(ctx, cfg)
	took := time.Since(start)
	if err == nil {
		s.Close()
		t.Fatalf("a second supervisor started on data dir %s (listen %s)", cfg.DataDir, cfg.Listen)
	}
	return err, took
}

// mustContain fails unless msg contains every one of want.
func mustContain(t *testing.T, msg string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(msg, w) {
			t.Errorf("error %q does not say %q", msg, w)
		}
	}
}

// lockHolder reads dir's LOCK file.
func lockHolder(t *testing.T, dir string) supervisor.LockHolder {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, supervisor.LockFile))
	if err != nil {
		t.Fatal(err)
	}
	var h supervisor.LockHolder
	if err := json.Unmarshal(b, &h); err != nil {
		t.Fatalf("LOCK %q: %v", b, err)
	}
	return h
}

// A second supervisor on a data dir in use fails at once, naming the
// holder's PID and host, the data dir and what to do, and touches nothing;
// tetherctl's reads of the auth material still work meanwhile.
func TestDataDirSecondSupervisorFailsAtOnce(t *testing.T) {
	dir := t.TempDir()
	first := suptest.Start(t, suptest.Embedded(t, dir))
	err, took := startErr(t, suptest.Embedded(t, dir)) // its own free port
	t.Logf("second supervisor refused after %v: %v", took.Round(time.Microsecond), err)
	if took > atOnce {
		t.Errorf("refused after %v, not at once", took)
	}
	host, _ := os.Hostname()
	pid := strconv.Itoa(os.Getpid())
	mustContain(t, err.Error(), "data dir "+dir, "PID "+pid, "host "+host, filepath.Join(dir, supervisor.LockFile),
		"stop PID "+pid+", or use a different --data-dir")
	var locked *supervisor.DataDirLockedError
	if !errors.As(err, &locked) || locked.Holder.PID != os.Getpid() || locked.Dir != dir {
		t.Errorf("error %T %+v: want a *DataDirLockedError naming PID %d and %s", err, locked, os.Getpid(), dir)
	}
	if _, err := auth.Load(dir); err != nil { // what tetherctl does
		t.Errorf("auth material unreadable while the supervisor runs: %v", err)
	}
	if ok, why := first.Ready(); !ok {
		t.Errorf("the first supervisor is not ready after the second one was refused: %s", why)
	}
}

// A LOCK file left by a crashed supervisor (a PID that holds no lock) does
// not block a start; the new holder writes itself into it.
func TestDataDirStaleLockDoesNotBlock(t *testing.T) {
	dir := t.TempDir()
	stale := `{"pid":999999999,"host":"crashed-host","started":"2020-01-02T03:04:05Z"}` + "\n"
	if err := os.WriteFile(filepath.Join(dir, supervisor.LockFile), []byte(stale), 0o644); err != nil {
		t.Fatal(err)
	}
	suptest.Start(t, suptest.Embedded(t, dir))
	if h := lockHolder(t, dir); h.PID != os.Getpid() || h.Host == "crashed-host" || h.Started.IsZero() {
		t.Errorf("LOCK names %+v, not this process", h)
	}
}

// Close releases the lock: a new supervisor starts on the dir at once,
// and holds the lock in its turn.
func TestDataDirLockReleasedOnClose(t *testing.T) {
	dir := t.TempDir()
	cfg := suptest.Embedded(t, dir)
	first := suptest.Start(t, cfg)
	if err, _ := startErr(t, suptest.Embedded(t, dir)); err == nil {
		t.Fatal("unreachable")
	}
	first.Close()
	start := time.Now()
	suptest.Start(t, cfg) // same port and dir
	t.Logf("restarted on the same data dir %v after Close", time.Since(start).Round(time.Millisecond))
	err, _ := startErr(t, suptest.Embedded(t, dir))
	var locked *supervisor.DataDirLockedError
	if !errors.As(err, &locked) {
		t.Fatalf("third supervisor: %v; want the lock refused", err)
	}
}

// The port clash names the port, says another process (perhaps another
// supervisor) holds it, and suggests stopping it or a different --listen
// together with a different --data-dir, never --listen alone (which led
// to a second store on the same dir); when that dir is locked as well,
// the message names the holder.
func TestListenInUseMessage(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cfg := suptest.Embedded(t, t.TempDir())
	cfg.Listen = ln.Addr().String()
	_, port, _ := net.SplitHostPort(cfg.Listen)
	err, took := startErr(t, cfg)
	t.Logf("port clash reported after %v: %v", took.Round(time.Microsecond), err)
	if took > atOnce {
		t.Errorf("reported after %v, not at once", took)
	}
	mustContain(t, err.Error(), "--listen "+cfg.Listen, "port "+port+" is held by another process (possibly another supervisor)",
		"stop it, or use a different --listen together with a different --data-dir")
	if strings.Contains(err.Error(), "try --listen") {
		t.Errorf("error %q still suggests --listen alone", err)
	}
	var inUse *supervisor.ListenInUseError
	if !errors.As(err, &inUse) || inUse.Holder != nil {
		t.Errorf("error %T %+v: want a *ListenInUseError without a lock holder", err, inUse)
	}
	if _, err := os.Stat(filepath.Join(cfg.DataDir, auth.DirName)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the refused supervisor wrote auth material: %v", err)
	}

	// Same listen address and same data dir as a running supervisor.
	dir := t.TempDir()
	first := suptest.Start(t, suptest.Embedded(t, dir))
	cfg = suptest.Embedded(t, dir)
	cfg.Listen = first.ClientURL()[len("nats://"):]
	_, port, _ = net.SplitHostPort(cfg.Listen)
	err, _ = startErr(t, cfg)
	t.Logf("port clash with the dir locked: %v", err)
	pid := strconv.Itoa(os.Getpid())
	mustContain(t, err.Error(), "port "+port+" is held by another process, probably the supervisor PID "+pid,
		"that holds the data dir "+dir, "stop PID "+pid+", or use a different --listen together with a different --data-dir")
	if !errors.As(err, &inUse) || inUse.Holder == nil || inUse.Holder.PID != os.Getpid() {
		t.Errorf("error %T %+v: want a *ListenInUseError naming PID %d", err, inUse, os.Getpid())
	}
}

// --listen host:0 picks a free port, as every other listener does (nats-
// server reads port 0 as its default 4222).
func TestEmbeddedListenPortZeroPicksAFreePort(t *testing.T) {
	cfg := suptest.Config(t, "")
	cfg.Listen, cfg.DataDir = "127.0.0.1:0", t.TempDir()
	s := suptest.Start(t, cfg)
	u, err := url.Parse(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	if u.Port() == "4222" || u.Port() == "0" {
		t.Fatalf("--listen 127.0.0.1:0 serves on %s, want a free port", s.ClientURL())
	}
}
