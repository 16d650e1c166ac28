package natstest

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// NATSCLIModule is the natscli version the tests drive.
const NATSCLIModule = "github.com/nats-io/natscli/nats@v0.5.0"

var (
	cliOnce sync.Once
	cliPath string
	cliErr  error
)

// ToolsDir is where test tools are installed: $TETHER_TOOLS or
// ~/.cache/tether-tools.
func ToolsDir() string {
	if d := os.Getenv("TETHER_TOOLS"); d != "" {
		return d
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return filepath.Join(os.TempDir(), "tether-tools")
	}
	return filepath.Join(home, ".cache", "tether-tools")
}

// NATSCLI returns the path of the real nats CLI: $TETHER_NATS_CLI, the one
// in ToolsDir, or `nats` on PATH; if none exists it builds natscli v0.5.0
// from the Go module proxy into ToolsDir (about a minute, once). If that
// fails the test is skipped with instructions, except under CI=true, where
// a missing tool is a failure.
func NATSCLI(t testing.TB) string {
	t.Helper()
	cliOnce.Do(func() {
		if p := os.Getenv("TETHER_NATS_CLI"); p != "" {
			cliPath = p
			return
		}
		local := filepath.Join(ToolsDir(), "nats")
		if _, err := os.Stat(local); err == nil {
			cliPath = local
			return
		}
		if p, err := exec.LookPath("nats"); err == nil {
			cliPath = p
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "go", "install", NATSCLIModule)
		cmd.Env = append(os.Environ(), "GOBIN="+ToolsDir())
		if out, err := cmd.CombinedOutput(); err != nil {
			cliErr = &toolError{what: "go install " + NATSCLIModule, out: string(out), err: err}
			return
		}
		cliPath = local
	})
	if cliErr != nil {
		Missing(t, "the nats CLI", "GOBIN=~/.cache/tether-tools go install "+NATSCLIModule+" (or run .ci/run): "+cliErr.Error())
	}
	return cliPath
}

// Missing skips a test whose external tool is absent, or fails it under
// CI=true, where every tool must be installed.
func Missing(t testing.TB, tool, howto string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s is missing under CI=true: %s", tool, howto)
	}
	t.Skipf("%s is not installed; install it with: %s", tool, howto)
}

type toolError struct {
	what, out string
	err       error
}

func (e *toolError) Error() string { return e.what + ": " + e.err.Error() + ": " + e.out }
