package supervisor

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// The data directory lock. One embedded nats-server, and so one
// supervisor, may use a data directory at a time: a second JetStream
// server on the same store loses writes and corrupts its state. Start
// therefore takes an exclusive advisory lock, flock(2) with LOCK_NB, on
// <data-dir>/LOCK before it reads or writes anything else there (the auth
// material, the JetStream store). A second supervisor on the directory
// fails at once with a *DataDirLockedError naming the holder; it never
// waits.
//
// The lock belongs to the open file, not to the file's content: Close
// releases it (after the embedded server has stopped writing the store),
// and the kernel releases it when the process dies however it dies, so a
// LOCK file left behind by a crash never blocks a start. The content — the
// holder's PID, host and start time, as JSON — is only what the error
// message says; it counts only while the lock is held and is overwritten
// by the next holder. The file itself is never removed (removing it would
// let two processes lock two different files of the same name).
//
// flock locks conflict between two opens of the file even within one
// process, which is what lets a test start two supervisors on one
// directory. They are local to a machine: do not share a data directory
// over a network file system.
//
// Only the supervisor takes the lock. tetherctl reads (and, for agent
// credentials, writes) <data-dir>/auth/ while the supervisor runs; it
// never touches LOCK.

// LockFile is the name of the lock file in the data directory.
const LockFile = "LOCK"

// LockHolder is what a LOCK file says about the process that holds it.
type LockHolder struct {
	PID     int       `json:"pid"`
	Host    string    `json:"host"`
	Started time.Time `json:"started"`
}

// String is "PID 123 on host h (since 2006-01-02T15:04:05Z)", or "an
// unknown process" when the file named no one (it was being written).
func (h LockHolder) String() string {
	if h.PID <= 0 {
		return "an unknown process"
	}
	s := "PID " + strconv.Itoa(h.PID)
	if h.Host != "" {
		s += " on host " + h.Host
	}
	if !h.Started.IsZero() {
		s += " (since " + h.Started.UTC().Format(time.RFC3339) + ")"
	}
	return s
}

// stopHint is what to stop: "PID 123" or "it".
func (h LockHolder) stopHint() string {
	if h.PID <= 0 {
		return "it"
	}
	return "PID " + strconv.Itoa(h.PID)
}

// DataDirLockedError is Start's error when another process holds the data
// directory's lock.
type DataDirLockedError struct {
	Dir    string     // the data directory
	Holder LockHolder // as its LOCK file says; PID 0 when it says nothing
}

func (e *DataDirLockedError) Error() string {
	return fmt.Sprintf("supervisor: data dir %s is in use by another supervisor: %s holds its lock %s; stop %s, or use a different --data-dir",
		e.Dir, e.Holder, lockPath(e.Dir), e.Holder.stopHint())
}

// lockPath is dir's LOCK file, spelt as dir is ("./data" → "./data/LOCK").
func lockPath(dir string) string {
	p := filepath.Join(dir, LockFile)
	if strings.HasPrefix(dir, "./") {
		p = "./" + p
	}
	return p
}

// dataDirLock is a held lock on a data directory.
type dataDirLock struct{ f *os.File }

// lockDataDir creates dir (0700) if needed and takes its lock, writing
// this process into LOCK; a lock held elsewhere is a *DataDirLockedError.
func lockDataDir(dir string) (*dataDirLock, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("supervisor: data dir: %w", err)
	}
	path := lockPath(dir)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("supervisor: data dir lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		defer f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, &DataDirLockedError{Dir: dir, Holder: readHolder(f)}
		}
		return nil, fmt.Errorf("supervisor: data dir lock %s: %w", path, err)
	}
	host, _ := os.Hostname()
	data, _ := json.Marshal(LockHolder{PID: os.Getpid(), Host: host, Started: time.Now().UTC().Truncate(time.Second)})
	if err := writeHolder(f, append(data, '\n')); err != nil {
		f.Close() // releases the lock
		return nil, fmt.Errorf("supervisor: data dir lock %s: %w", path, err)
	}
	return &dataDirLock{f: f}, nil
}

func writeHolder(f *os.File, data []byte) error {
	if err := f.Truncate(0); err != nil {
		return err
	}
	if _, err := f.WriteAt(data, 0); err != nil {
		return err
	}
	return f.Sync()
}

// readHolder reads a LOCK file's holder; PID 0 if it names no one.
func readHolder(f *os.File) LockHolder {
	var h LockHolder
	b := make([]byte, 1024)
	n, _ := f.ReadAt(b, 0)
	if json.Unmarshal(b[:n], &h) != nil {
		return LockHolder{}
	}
	return h
}

// peekDataDirLock reports the holder of dir's lock if another process
// holds it, without creating anything. It takes a shared lock for an
// instant: it runs only when Start is failing anyway (its port is taken),
// and a supervisor starting on dir at that very instant fails as if dir
// were locked.
func peekDataDirLock(dir string) (LockHolder, bool) {
	f, err := os.Open(lockPath(dir))
	if err != nil {
		return LockHolder{}, false
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB); err != nil {
		return readHolder(f), errors.Is(err, unix.EWOULDBLOCK)
	}
	_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
	return LockHolder{}, false
}

// release gives the lock up. Safe on nil and twice.
func (l *dataDirLock) release() {
	if l != nil && l.f != nil {
		_ = l.f.Close() // closing the last descriptor drops the flock
		l.f = nil
	}
}
