package mcp_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/textproto"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	sdk "github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/kvconfig"
)

// The MCP protocol versions the pinned SDK speaks.
const (
	v20251125 = "2025-11-25"
	v20260728 = "2026-07-28"
)

var versions = []string{v20251125, v20260728}

// execCounter counts tool executions per call id, server-side.
type execCounter struct {
	mu      sync.Mutex
	n       map[string]int
	running map[string]int // tool → runs in progress
}

func (c *execCounter) begin(tool string, d int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.running == nil {
		c.running = map[string]int{}
	}
	c.running[tool] += d
}

func (c *execCounter) add(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[string]int{}
	}
	c.n[id]++
}

func (c *execCounter) get(id string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[id]
}

// dupes returns the ids executed more than once.
func (c *execCounter) dupes() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for id, n := range c.n {
		if n > 1 {
			out = append(out, id)
		}
	}
	return out
}

type idIn struct {
	ID string `json:"id"`
	MS int    `json:"ms,omitempty"`
}

type idOut struct {
	ID     string `json:"id"`
	Server string `json:"server"`
}

// newMCPServer is a real SDK server named name with four tools: "charge"
// (not idempotent: every run is a side effect), "set" (annotated
// idempotentHint), "get" (readOnlyHint) and "slow" (sleeps ms, not
// idempotent). Each counts its runs per id in execs.
func newMCPServer(name string, versions []string, execs *execCounter) *sdk.Server {
	return newMCPServerWith(name, &sdk.ServerOptions{SupportedProtocolVersions: versions}, execs)
}

func newMCPServerWith(name string, opts *sdk.ServerOptions, execs *execCounter) *sdk.Server {
	s := sdk.NewServer(&sdk.Implementation{Name: name, Version: "0.1.0"}, opts)
	run := func(tool string) sdk.ToolHandlerFor[idIn, idOut] {
		return func(ctx context.Context, _ *sdk.CallToolRequest, in idIn) (*sdk.CallToolResult, idOut, error) {
			execs.begin(tool, 1)
			defer execs.begin(tool, -1)
			if dir := os.Getenv("TETHER_MCP_TEST_DIR"); dir != "" && tool == "slow" {
				_ = os.WriteFile(dir+"/"+name+".slow", nil, 0o600) // a stdio server says it is running it
			}
			if in.MS > 0 {
				select {
				case <-time.After(time.Duration(in.MS) * time.Millisecond):
				case <-ctx.Done():
					return nil, idOut{}, ctx.Err()
				}
			}
			execs.add(tool + ":" + in.ID)
			return nil, idOut{ID: in.ID, Server: name}, nil
		}
	}
	sdk.AddTool(s, &sdk.Tool{Name: "charge", Description: "charges a card (not idempotent)"}, run("charge"))
	sdk.AddTool(s, &sdk.Tool{Name: "set", Description: "sets a value", Annotations: &sdk.ToolAnnotations{IdempotentHint: true}}, run("set"))
	sdk.AddTool(s, &sdk.Tool{Name: "get", Description: "reads a value", Annotations: &sdk.ToolAnnotations{ReadOnlyHint: true}}, run("get"))
	sdk.AddTool(s, &sdk.Tool{Name: "slow", Description: "sleeps, then records"}, run("slow"))
	return s
}

// httpServer is a real MCP server over streamable HTTP that can be
// stopped and started again on the same address.
type httpServer struct {
	t        testing.TB
	name     string
	versions []string
	json     bool // answer calls with application/json (written once the tool ran)
	execs    execCounter
	// rejectVersion answers every tools/call with JSON-RPC -32022
	// UnsupportedProtocolVersion, as a server that dropped the version.
	rejectVersion atomic.Bool
	calls         atomic.Int64 // tools/call requests received
	cancels       atomic.Int64 // notifications/cancelled received
	logger        *slog.Logger // the SDK server's; nil: none

	mu   sync.Mutex
	addr string
	srv  *http.Server
	mcp  *sdk.Server
	gate *handlerGate // the handlers of the running server
	done chan struct{}
}

// handlerGate tracks the HTTP handlers of one run of an httpServer. The
// SDK connects a server session inside a handler (an initialize POST;
// every POST when stateless), and Server.bind lists the session in
// Sessions() before connect has stored it for its OnDone callback
// (go-sdk v1.8.0 mcp/transport.go connect: h = b.bind(...)): a session
// closed in that window runs Server.disconnect(nil), which panics on
// ServerSession.ID. stop therefore closes sessions only once no handler
// runs, hence no connect is binding.
type handlerGate struct {
	mu      sync.Mutex
	stopped bool
	running sync.WaitGroup
}

// enter admits a handler unless the server is stopping.
func (g *handlerGate) enter() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.stopped {
		return false
	}
	g.running.Add(1)
	return true
}

// drain refuses new handlers and waits for the running ones.
func (g *handlerGate) drain() {
	g.mu.Lock()
	g.stopped = true
	g.mu.Unlock()
	g.running.Wait()
}

func startHTTPServer(t testing.TB, name string, versions []string, jsonResponse bool) *httpServer {
	t.Helper()
	h := &httpServer{t: t, name: name, versions: versions, json: jsonResponse, addr: "127.0.0.1:0"}
	if err := h.start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.stop)
	return h
}

// calling reports whether a run of tool is in progress.
func (h *httpServer) calling(tool string) bool {
	h.execs.mu.Lock()
	defer h.execs.mu.Unlock()
	return h.execs.running[tool] > 0
}

func (h *httpServer) URL() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return "http://" + h.addr + "/mcp"
}

func (h *httpServer) start() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.srv != nil {
		return nil
	}
	var ln net.Listener
	var err error
	for range 100 { // the port may linger for a moment after a stop
		if ln, err = net.Listen("tcp", h.addr); err == nil {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err != nil {
		return err
	}
	h.addr = ln.Addr().String()
	s := newMCPServerWith(h.name, &sdk.ServerOptions{SupportedProtocolVersions: h.versions, Logger: h.logger}, &h.execs)
	// MCP 2026-07-28 has no sessions: the SDK serves it on stateless
	// handlers only.
	stateless := len(h.versions) > 0 && h.versions[0] >= v20260728
	handler := sdk.NewStreamableHTTPHandler(func(*http.Request) *sdk.Server { return s },
		&sdk.StreamableHTTPOptions{JSONResponse: h.json, Stateless: stateless})
	h.mcp, h.gate = s, &handlerGate{}
	mux := http.NewServeMux()
	mux.Handle("/mcp", h.middleware(h.gate, handler))
	h.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	h.done = make(chan struct{})
	go func(srv *http.Server, done chan struct{}) {
		defer close(done)
		_ = srv.Serve(ln)
	}(h.srv, h.done)
	return nil
}

// middleware counts tools/call requests and, when rejectVersion is set,
// answers them with -32022 instead of passing them to the SDK handler.
// Every handler runs inside gate.
func (h *httpServer) middleware(gate *handlerGate, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !gate.enter() {
			http.Error(w, "server stopping", http.StatusServiceUnavailable)
			return
		}
		defer gate.running.Done()
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		if bytes.Contains(body, []byte(`"notifications/cancelled"`)) {
			h.cancels.Add(1)
		}
		if !bytes.Contains(body, []byte(`"tools/call"`)) {
			next.ServeHTTP(w, r)
			return
		}
		h.calls.Add(1)
		if !h.rejectVersion.Load() {
			next.ServeHTTP(w, r)
			return
		}
		var req struct {
			ID json.RawMessage `json:"id"`
		}
		_ = json.Unmarshal(body, &req)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprintf(w, `{"jsonrpc":"2.0","id":%s,"error":{"code":-32022,"message":"unsupported protocol version","data":{"supported":["1999-01-01"],"requested":"%s"}}}`,
			req.ID, r.Header.Get("Mcp-Protocol-Version"))
	})
}

// stop closes the listener and every connection (sessions are lost).
func (h *httpServer) stop() {
	h.mu.Lock()
	srv, done, ms, gate := h.srv, h.done, h.mcp, h.gate
	h.srv, h.mcp, h.gate = nil, nil, nil
	h.mu.Unlock()
	if srv == nil {
		return
	}
	_ = srv.Close()
	<-done
	// The connections are closed, so every request context is done and
	// the handlers return (a stateless one closes its own session). Only
	// then are the sessions left all bound, safe to close.
	gate.drain()
	// A killed server forgets its sessions: close them so their goroutines end.
	for ss := range ms.Sessions() {
		_ = ss.Close()
	}
}

func httpResolved(server, url string, rev uint64) agentproto.Resolved {
	return agentproto.Resolved{Server: server, Key: "global." + server, Revision: rev,
		Config: &kvconfig.ServerConfig{Transport: kvconfig.TransportHTTP, URL: url}}
}

// cutProxy is a loopback TCP proxy that understands just enough HTTP/1.1
// framing (Content-Length bodies) to cut a connection at an exact point
// of a tools/call exchange:
//   - afterWrite: right after the whole request was forwarded to the server;
//   - afterRun: when the server starts answering it (with JSONResponse the
//     server writes only once the tool has run), without forwarding it.
//
// arm(n) cuts the next n tools/call requests; requests counts the
// tools/call requests that reached the server, per call id.
type cutProxy struct {
	ln       net.Listener
	target   string
	afterRun bool
	armed    atomic.Int64
	cuts     atomic.Int64
	links    atomic.Int64 // connections accepted
	rpcIDs   sync.Map     // call id → []string of the JSON-RPC ids its tools/call requests carried
	idsMu    sync.Mutex
	requests execCounter

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func newCutProxy(t testing.TB, target string, afterRun bool) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: target, afterRun: afterRun, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *cutProxy) URL() string { return "http://" + p.ln.Addr().String() + "/mcp" }

func (p *cutProxy) arm(n int64) { p.armed.Store(n) }

func (p *cutProxy) take() bool {
	for {
		n := p.armed.Load()
		if n <= 0 {
			return false
		}
		if p.armed.CompareAndSwap(n, n-1) {
			return true
		}
	}
}

func (p *cutProxy) close() {
	_ = p.ln.Close()
	p.mu.Lock()
	for c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *cutProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *cutProxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	_ = c.Close()
}

func (p *cutProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.links.Add(1)
		p.wg.Add(1)
		go p.link(c)
	}
}

func (p *cutProxy) link(client net.Conn) {
	defer p.wg.Done()
	server, err := net.Dial("tcp", p.target)
	if err != nil {
		_ = client.Close()
		return
	}
	p.track(client)
	p.track(server)
	defer p.untrack(client)
	defer p.untrack(server)
	var cutOnAnswer atomic.Bool
	p.wg.Add(1)
	go func() { // server → client
		defer p.wg.Done()
		defer p.untrack(client)
		buf := make([]byte, 32<<10)
		for {
			n, err := server.Read(buf)
			if n > 0 && cutOnAnswer.Load() {
				if p.afterRun {
					p.cuts.Add(1)
				}
				_ = server.Close()
				return
			}
			if n > 0 {
				if _, werr := client.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}()
	br := bufio.NewReader(client)
	for {
		head, body, err := readHTTPRequest(br)
		if err != nil {
			return
		}
		call := bytes.Contains(body, []byte(`"tools/call"`))
		cut := call && p.take()
		if call {
			p.requests.add(callID(body))
			p.recordRPCID(body)
		}
		if cut {
			cutOnAnswer.Store(true) // from now on nothing goes back to the client
		}
		if _, err := server.Write(append(head, body...)); err != nil {
			return
		}
		if cut && !p.afterRun {
			p.cuts.Add(1)
			return // closes both sides: the request is written, no answer comes back
		}
	}
}

func (p *cutProxy) recordRPCID(body []byte) {
	var req struct {
		ID json.RawMessage `json:"id"`
	}
	_ = json.Unmarshal(body, &req)
	p.idsMu.Lock()
	defer p.idsMu.Unlock()
	prev, _ := p.rpcIDs.Load(callID(body))
	ids, _ := prev.([]string)
	p.rpcIDs.Store(callID(body), append(ids, string(req.ID)))
}

// rpcIDsOf returns the JSON-RPC ids of the tools/call requests for a call id.
func (p *cutProxy) rpcIDsOf(id string) []string {
	v, _ := p.rpcIDs.Load(id)
	ids, _ := v.([]string)
	return ids
}

// callID digs the "id" argument out of a tools/call body.
func callID(body []byte) string {
	_, rest, ok := bytes.Cut(body, []byte(`"arguments":{"id":"`))
	if !ok {
		return ""
	}
	id, _, _ := bytes.Cut(rest, []byte(`"`))
	return string(id)
}

// readHTTPRequest reads one HTTP/1.1 request with a Content-Length body
// (the only kind the MCP client sends): its head bytes and its body.
func readHTTPRequest(br *bufio.Reader) (head, body []byte, err error) {
	var buf bytes.Buffer
	tp := textproto.NewReader(br)
	n := -1
	for {
		line, err := tp.ReadLine()
		if err != nil {
			return nil, nil, err
		}
		buf.WriteString(line + "\r\n")
		if line == "" {
			break
		}
		k, v, _ := strings.Cut(line, ":")
		switch strings.ToLower(strings.TrimSpace(k)) {
		case "content-length":
			if n, err = strconv.Atoi(strings.TrimSpace(v)); err != nil {
				return nil, nil, err
			}
		case "transfer-encoding":
			return nil, nil, errors.New("cutProxy: chunked requests are not supported")
		}
	}
	if n < 0 {
		n = 0
	}
	body = make([]byte, n)
	if _, err := io.ReadFull(br, body); err != nil {
		return nil, nil, err
	}
	return buf.Bytes(), body, nil
}

// stdioServerEnv makes this test binary an MCP server over stdio (see
// TestMain): the config's env is all the process gets.
const stdioServerEnv = "TETHER_MCP_TEST_STDIO_SERVER"

// runStdioServer serves the four tools over stdin/stdout until stdin
// closes; "crash" in the env exits at once (a crash-looping server).
func runStdioServer() {
	if dir := os.Getenv("TETHER_MCP_TEST_DIR"); dir != "" {
		// One file per process started: name.started.<pid>.
		_ = os.WriteFile(fmt.Sprintf("%s/%s.started.%d", dir, os.Getenv("TETHER_MCP_TEST_NAME"), os.Getpid()), nil, 0o600)
	}
	if os.Getenv(stdioServerEnv) == "crash" {
		os.Exit(3)
	}
	if os.Getenv(stdioServerEnv) == "crash-until-healed" { // crashes until the test writes <dir>/healed
		if _, err := os.Stat(os.Getenv("TETHER_MCP_TEST_DIR") + "/healed"); err != nil {
			os.Exit(3)
		}
	}
	var execs execCounter
	name := os.Getenv("TETHER_MCP_TEST_NAME")
	if name == "" {
		name = "stdio"
	}
	s := newMCPServer(name, nil, &execs)
	sdk.AddTool(s, &sdk.Tool{Name: "die", Description: "the process exits mid-call"},
		func(context.Context, *sdk.CallToolRequest, idIn) (*sdk.CallToolResult, idOut, error) {
			os.Exit(4)
			return nil, idOut{}, nil
		})
	err := s.Run(context.Background(), &sdk.StdioTransport{})
	if dir := os.Getenv("TETHER_MCP_TEST_DIR"); dir != "" {
		_ = os.WriteFile(dir+"/"+name+".exited", nil, 0o600) // stdin closed: the session let go of it
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(0)
}

func stdioServer(server string, mode string) agentproto.Resolved {
	return agentproto.Resolved{Server: server, Key: "agent.a1." + server, Revision: 1,
		Config: &kvconfig.ServerConfig{Transport: kvconfig.TransportStdio, Command: os.Args[0], Env: map[string]string{stdioServerEnv: mode}}}
}

// percentile returns the q-quantile (0..1) of ds, sorted in place.
func percentile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	sortDurations(ds)
	i := int(q * float64(len(ds)-1))
	return ds[i]
}

func sortDurations(ds []time.Duration) {
	for i := 1; i < len(ds); i++ {
		for j := i; j > 0 && ds[j] < ds[j-1]; j-- {
			ds[j], ds[j-1] = ds[j-1], ds[j]
		}
	}
}

// syncLog is a goroutine-safe log sink.
type syncLog struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncLog) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncLog) contains(sub string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Contains(s.b.Bytes(), []byte(sub))
}

func (s *syncLog) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
