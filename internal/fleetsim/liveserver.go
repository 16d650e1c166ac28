package fleetsim

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// The server under a live fleet: in this process (tests: its CPU cannot
// be told from the clients') or in a child process (cmd/fleetsim: its CPU
// and RSS are its own). Either way every CONNECT is timestamped at the
// server by a custom authenticator that accepts all, so connects per
// 100 ms are counted where they cost, not inferred from client events.

// liveServer is the NATS server a live run restarts.
type liveServer interface {
	URL() string
	// Start starts it on its port and waits until it is ready; it returns
	// when the server was ready.
	Start() (time.Time, error)
	// Stop kills it (a crash: no lame-duck mode, connections just drop).
	Stop()
	// Connects are the agents' CONNECTs seen since the last Start.
	Connects() []connectRec
	// Stats are its message counters (since the last Start), CPU time
	// (ok false: not separable) and RSS in bytes (0: unknown).
	Stats() (serverStats, error)
}

// serverStats are a server's counters at one moment.
type serverStats struct {
	InMsgs, OutMsgs uint64
	CPU             time.Duration
	CPUKnown        bool
	RSS             uint64
}

// connectRec is one CONNECT: when, and the connection's name.
type connectRec struct {
	at   time.Time
	name string
}

// connectLog records CONNECTs; it is the server's authenticator.
type connectLog struct {
	mu  sync.Mutex
	at  []connectRec
	out io.Writer // child process: one line per connect, "C <unix ns> <name>"
}

// agentNamePrefix is how agents name their connections: only theirs count.
const agentNamePrefix = "tether-agent-"

// Check implements server.Authentication: it accepts every client and
// records the agents' CONNECTs.
func (l *connectLog) Check(c server.ClientAuthentication) bool {
	now := time.Now()
	o := c.GetOpts()
	if o == nil || !strings.HasPrefix(o.Name, agentNamePrefix) || strings.ContainsAny(o.Name, " \n") {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.out != nil {
		fmt.Fprintf(l.out, "C %d %s\n", now.UnixNano(), o.Name)
		return true
	}
	l.at = append(l.at, connectRec{at: now, name: o.Name})
	return true
}

func (l *connectLog) add(r connectRec) {
	l.mu.Lock()
	l.at = append(l.at, r)
	l.mu.Unlock()
}

func (l *connectLog) reset() {
	l.mu.Lock()
	l.at = nil
	l.mu.Unlock()
}

func (l *connectLog) records() []connectRec {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]connectRec(nil), l.at...)
}

// serverOptions are the options of a live server on port (and monitor
// port httpPort, 0: none).
func serverOptions(port, httpPort int, auth server.Authentication) *server.Options {
	return &server.Options{
		ServerName: "fleetsim", Host: "127.0.0.1", Port: port, HTTPHost: "127.0.0.1", HTTPPort: httpPort,
		NoLog: true, NoSigs: true, MaxConn: 1 << 20, CustomClientAuthentication: auth,
	}
}

// inProcServer is a liveServer in this process.
type inProcServer struct {
	port int
	log  connectLog
	srv  *server.Server
}

func newInProcServer() (*inProcServer, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	return &inProcServer{port: port}, nil
}

func (s *inProcServer) URL() string { return "nats://127.0.0.1:" + strconv.Itoa(s.port) }

func (s *inProcServer) Start() (time.Time, error) {
	s.log.reset()
	srv, err := server.NewServer(serverOptions(s.port, 0, &s.log))
	if err != nil {
		return time.Time{}, fmt.Errorf("fleetsim: server: %w", err)
	}
	srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		return time.Time{}, fmt.Errorf("fleetsim: server on port %d not ready", s.port)
	}
	s.srv = srv
	return time.Now(), nil
}

func (s *inProcServer) Stop() {
	if s.srv != nil {
		s.srv.Shutdown()
		s.srv.WaitForShutdown()
		s.srv = nil
	}
}

func (s *inProcServer) Connects() []connectRec { return s.log.records() }

func (s *inProcServer) Stats() (serverStats, error) {
	if s.srv == nil {
		return serverStats{}, fmt.Errorf("fleetsim: server down")
	}
	v, err := s.srv.Varz(nil)
	if err != nil {
		return serverStats{}, fmt.Errorf("fleetsim: varz: %w", err)
	}
	return serverStats{InMsgs: uint64(v.InMsgs), OutMsgs: uint64(v.OutMsgs)}, nil
}

// childServer is a liveServer in a child process: argv runs Serve (for
// cmd/fleetsim, itself with --serve).
type childServer struct {
	argv           []string
	port, httpPort int
	log            connectLog
	cmd            *exec.Cmd
	done           chan struct{} // the reader of the child's stdout ended
}

func newChildServer(argv []string) (*childServer, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	hp, err := freePort()
	if err != nil {
		return nil, err
	}
	return &childServer{argv: argv, port: port, httpPort: hp}, nil
}

func (s *childServer) URL() string { return "nats://127.0.0.1:" + strconv.Itoa(s.port) }

func (s *childServer) Start() (time.Time, error) {
	s.log.reset()
	args := append(append([]string(nil), s.argv[1:]...), "--port", strconv.Itoa(s.port), "--http-port", strconv.Itoa(s.httpPort))
	cmd := exec.Command(s.argv[0], args...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return time.Time{}, fmt.Errorf("fleetsim: server pipe: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return time.Time{}, fmt.Errorf("fleetsim: start server %q: %w", s.argv[0], err)
	}
	ready := make(chan time.Time, 1)
	s.cmd, s.done = cmd, make(chan struct{})
	go s.read(out, ready)
	select {
	case at := <-ready:
		return at, nil
	case <-s.done:
		_ = cmd.Wait()
		s.cmd = nil
		return time.Time{}, fmt.Errorf("fleetsim: server process exited before it was ready")
	case <-time.After(10 * time.Second):
		s.Stop()
		return time.Time{}, fmt.Errorf("fleetsim: server process not ready within 10s")
	}
}

// read parses the child's stdout: "READY <unix ns>", then "C <unix ns>
// <name>" per CONNECT.
func (s *childServer) read(r io.Reader, ready chan<- time.Time) {
	defer close(s.done)
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "READY "):
			if ns, err := strconv.ParseInt(line[6:], 10, 64); err == nil {
				ready <- time.Unix(0, ns)
			}
		case strings.HasPrefix(line, "C "):
			f := strings.Fields(line)
			if len(f) != 3 {
				continue
			}
			if ns, err := strconv.ParseInt(f[1], 10, 64); err == nil {
				s.log.add(connectRec{at: time.Unix(0, ns), name: f[2]})
			}
		}
	}
}

func (s *childServer) Stop() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.done
	_ = s.cmd.Wait()
	s.cmd = nil
}

func (s *childServer) Connects() []connectRec { return s.log.records() }

func (s *childServer) Stats() (serverStats, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.0.1:"+strconv.Itoa(s.httpPort)+"/varz", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return serverStats{}, fmt.Errorf("fleetsim: varz: %w", err)
	}
	defer resp.Body.Close()
	var v struct {
		InMsgs  uint64 `json:"in_msgs"`
		OutMsgs uint64 `json:"out_msgs"`
		Mem     uint64 `json:"mem"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		return serverStats{}, fmt.Errorf("fleetsim: varz: %w", err)
	}
	cpu, err := procCPU(s.cmd.Process.Pid)
	if err != nil {
		return serverStats{}, err
	}
	return serverStats{InMsgs: v.InMsgs, OutMsgs: v.OutMsgs, CPU: cpu, CPUKnown: true, RSS: v.Mem}, nil
}

// procCPU is a process's user+system CPU time from /proc/<pid>/stat
// (Linux; clock ticks of 10 ms).
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, fmt.Errorf("fleetsim: server CPU: %w", err)
	}
	// Fields after the parenthesised command name; utime and stime are
	// the 14th and 15th fields of the whole line.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("fleetsim: server CPU: short /proc stat")
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("fleetsim: server CPU: bad /proc stat")
	}
	return time.Duration(ut+st) * 10 * time.Millisecond, nil
}

// Serve runs the live server of a child process on port (monitor on
// httpPort) until ctx ends: it writes "READY <unix ns>" to out once it
// accepts clients, then "C <unix ns> <name>" for every agent's CONNECT. cmd/fleetsim --serve
// calls it.
func Serve(ctx context.Context, port, httpPort int, out io.Writer) error {
	w := &syncWriter{w: bufio.NewWriter(out)}
	log := &connectLog{out: w}
	srv, err := server.NewServer(serverOptions(port, httpPort, log))
	if err != nil {
		return fmt.Errorf("fleetsim: server: %w", err)
	}
	srv.Start()
	defer srv.Shutdown()
	if !srv.ReadyForConnections(10 * time.Second) {
		return fmt.Errorf("fleetsim: server on port %d not ready", port)
	}
	fmt.Fprintf(w, "READY %d\n", time.Now().UnixNano())
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if err := w.flush(); err != nil {
				return fmt.Errorf("fleetsim: write: %w", err)
			}
		}
	}
}

// syncWriter is a buffered writer shared by the server's goroutines.
type syncWriter struct {
	mu sync.Mutex
	w  *bufio.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

func (s *syncWriter) flush() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Flush()
}

// freePort asks the kernel for a free loopback port.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("fleetsim: free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
