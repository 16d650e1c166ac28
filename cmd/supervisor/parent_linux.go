package main

import (
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// stopWithGoRun makes the supervisor end with its parent when that parent
// is the go tool (`go run ./cmd/supervisor`). go run waits for its child
// but never passes a signal on, so a `kill` of the go process would leave
// the supervisor running, holding its ports and the data dir lock. The
// kernel sends SIGTERM (PR_SET_PDEATHSIG) when the parent dies, which
// drains as a SIGTERM always does. Any other parent (a shell, systemd,
// Docker) is left alone: a built binary outlives whatever it should.
//
// The signal is tied to the parent thread that forked the child; the go
// tool's threads live as long as it does. A parent that died before prctl
// took effect is caught by looking at the parent PID again.
func stopWithGoRun() {
	ppid := os.Getppid()
	comm, err := os.ReadFile("/proc/" + strconv.Itoa(ppid) + "/comm")
	if err != nil || strings.TrimSpace(string(comm)) != "go" {
		return
	}
	if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(syscall.SIGTERM), 0, 0, 0); err != nil {
		return // not fatal: the supervisor runs as a built binary would
	}
	if os.Getppid() != ppid { // reparented already: no signal will come
		_ = syscall.Kill(os.Getpid(), syscall.SIGTERM)
	}
}
