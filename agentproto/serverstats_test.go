package agentproto

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"syscall"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/tether-dev/tether/internal/natstest"
)

// A server's entry walks idle → failing → ok, counts what happened, keeps
// "quarantined" through calls until released, and saturates its counters
// at 2^53-1.
func TestServerStatsSnapshot(t *testing.T) {
	var nilStats *ServerStats
	nilStats.AddOK() // records nothing, does not panic
	if got := nilStats.Snapshot(); got != (ServerCalls{State: ServerIdle}) {
		t.Fatalf("nil snapshot %+v", got)
	}
	s := new(ServerStats)
	if got := s.Snapshot(); got != (ServerCalls{State: ServerIdle}) {
		t.Fatalf("new snapshot %+v", got)
	}
	s.AttemptFailed(ClassTransient, FailureRefused)
	if got := s.Snapshot(); got.State != ServerFailing || got.LastFailure != "refused" || got.LastErrorClass != "transient" {
		t.Fatalf("after a failed attempt %+v", got)
	}
	s.AddRetried()
	s.AddOK()
	want := ServerCalls{OK: 1, Retried: 1, State: ServerOK, LastErrorClass: "transient", LastFailure: "refused"}
	if got := s.Snapshot(); got != want {
		t.Fatalf("after a success %+v, want %+v", got, want)
	}
	s.AttemptFailed(ClassPermanent, "made up kind")
	s.AddFailed(true)
	if got := s.Snapshot(); got.LastFailure != FailureOther || got.Failed != 1 || got.OutcomeUnknown != 1 || got.State != ServerFailing {
		t.Fatalf("after an outcome-unknown failure %+v", got)
	}
	s.AddRestart()
	s.SetQuarantined(true)
	s.AddOK() // a call in flight before the quarantine ends well: still quarantined
	s.AttemptFailed(ClassPermanent, FailureQuarantined)
	if got := s.Snapshot(); got.State != ServerQuarantined || got.Restarts != 1 || got.LastFailure != FailureQuarantined {
		t.Fatalf("quarantined %+v", got)
	}
	s.SetQuarantined(false)
	if got := s.Snapshot(); got.State != ServerIdle {
		t.Fatalf("released %+v", got)
	}
	s.ok.Store(1 << 60)
	if got := s.Snapshot(); got.OK != 1<<53-1 {
		t.Fatalf("ok %d not saturated at 2^53-1", got.OK)
	}
}

// The registry hands out one ServerStats per valid name, at most
// MaxServerStats of them, and nil (counted) past that or for a bad name;
// concurrent use is safe (run with -race).
func TestServerRegistryBounded(t *testing.T) {
	var nilReg *ServerRegistry
	if nilReg.Get("echo") != nil || nilReg.Snapshot() != nil {
		t.Fatal("a nil registry handed out stats")
	}
	var r ServerRegistry
	if r.Snapshot() != nil {
		t.Fatal("an empty registry has a snapshot: heartbeats would carry an empty servers object")
	}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range MaxServerStats + 44 {
				r.Get("s" + strconv.Itoa(i)).AddOK()
				if g == 0 {
					_ = r.Snapshot()
				}
			}
		}()
	}
	wg.Wait()
	snap := r.Snapshot()
	if len(snap) != MaxServerStats {
		t.Fatalf("%d entries, want %d", len(snap), MaxServerStats)
	}
	for name, e := range snap {
		if e.OK != 4 || e.State != ServerOK {
			t.Fatalf("%s: %+v, want 4 ok", name, e)
		}
	}
	if got := r.Refused(); got != 4*44 {
		t.Fatalf("refused %d, want %d", got, 4*44)
	}
	if r.Get("s0") == nil {
		t.Fatal("a registered server is refused once the registry is full")
	}
	for _, bad := range []string{"", "a.b", "a b", string(make([]byte, 65))} {
		if r.Get(bad) != nil {
			t.Errorf("Get(%q) handed out stats", bad)
		}
	}
}

// Every heartbeat carries the registry's snapshot as "servers"; none
// carries it before a server is registered.
func TestHeartbeatCarriesServers(t *testing.T) {
	srv := natstest.RunServer(t, natstest.WithoutJetStream())
	sup := watchHeartbeats(t, srv, "a9")
	c := connect(t, testConfig(t, srv.URL(), "a9"))
	first := sup.waitHB(t, 0, func(hb Heartbeat) bool { return true })
	if first.Servers != nil {
		t.Fatalf("servers before any is registered: %+v", first.Servers)
	}
	echo := c.ServerStats("echo")
	_ = c.ServerStats("local") // configured, never called: idle
	echo.AttemptFailed(ClassTransient, FailureHTTP+"503")
	echo.AddRetried()
	echo.AddOK()
	_, n := sup.last()
	hb := sup.waitHB(t, n, func(hb Heartbeat) bool { return len(hb.Servers) == 2 })
	want := map[string]ServerCalls{
		"echo":  {OK: 1, Retried: 1, State: ServerOK, LastErrorClass: "transient", LastFailure: "http_503"},
		"local": {State: ServerIdle},
	}
	for k, v := range want {
		if hb.Servers[k] != v {
			t.Errorf("servers[%s] = %+v, want %+v", k, hb.Servers[k], v)
		}
	}
	if c.ServerStats("no.dots") != nil {
		t.Error("an invalid server name got stats")
	}
}

func TestValidFailure(t *testing.T) {
	for s, want := range map[string]bool{
		"refused": true, "timeout": true, "http_503": true, "http_404": true, "jsonrpc_-32603": true,
		"jsonrpc_0": true, "outcome_unknown": true, "quarantined": true, "other": true,
		"": false, "http_": false, "http_5033": false, "http_abc": false, "http_099": false,
		"jsonrpc_": false, "jsonrpc_x": false, "jsonrpc_+1": false, "Refused": false, "boom": false,
	} {
		if got := ValidFailure(s); got != want {
			t.Errorf("ValidFailure(%q) = %v, want %v", s, got, want)
		}
	}
}

// What happened, as the transport saw it first: a refused TCP connect the
// SDK wrapped in JSON-RPC -32005 is "refused", not a JSON-RPC code.
func TestFailureKind(t *testing.T) {
	rejected := &jsonrpc.Error{Code: -32005, Message: "rejected by transport"}
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: &net.OpError{Err: syscall.ECONNREFUSED}}
	for _, tc := range []struct {
		name string
		err  error
		want string
	}{
		{"nil", nil, ""},
		{"refused under -32005", fmt.Errorf("sending \"tools/call\": %w: %w", rejected, refused), FailureRefused},
		{"dns", fmt.Errorf("%w: %w", rejected, &net.DNSError{Err: "no such host", Name: "x.invalid", IsNotFound: true}), FailureDNS},
		{"tls", fmt.Errorf("%w: %w", rejected, x509.UnknownAuthorityError{}), FailureTLS},
		{"deadline", fmt.Errorf("calling: %w", context.DeadlineExceeded), FailureTimeout},
		{"reset", fmt.Errorf("read: %w", syscall.ECONNRESET), FailureReset},
		{"eof", fmt.Errorf("read: %w", io.ErrUnexpectedEOF), FailureReset},
		{"http status", fmt.Errorf("%w: %w", rejected, &HTTPError{Status: 503}), "http_503"},
		{"jsonrpc code", &jsonrpc.Error{Code: -32603}, "jsonrpc_-32603"},
		{"rejected alone", rejected, "jsonrpc_-32005"},
		{"unsupported version", &jsonrpc.Error{Code: -32022}, FailureProtocolVersion},
		{"session lost", fmt.Errorf("%w: x", ErrMCPSessionLost), FailureSessionLost},
		{"outcome unknown beats its cause", fmt.Errorf("%w: %w", ErrOutcomeUnknown, syscall.ECONNRESET), FailureOutcomeUnknown},
		{"quarantined", ErrMCPServerQuarantined, FailureQuarantined},
		{"process exited", ErrMCPProcessExited, FailureProcessExited},
		{"not allowed", ErrCommandNotAllowed, FailureNotAllowed},
		{"config", ErrMCPConfig, FailureConfig},
		{"canceled", context.Canceled, FailureCanceled},
		{"other", errors.New("x"), FailureOther},
		{"net timeout", &net.OpError{Op: "read", Err: timeoutErr{}}, FailureTimeout},
	} {
		if got := FailureKind(tc.err); got != tc.want {
			t.Errorf("%s: FailureKind = %q, want %q", tc.name, got, tc.want)
		}
		if got := FailureKind(tc.err); got != "" && !ValidFailure(got) {
			t.Errorf("%s: %q is not a valid failure kind", tc.name, got)
		}
	}
}
