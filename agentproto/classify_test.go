package agentproto

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"net"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/nats-io/nats.go"
)

func rpcErr(code int64) error {
	return &jsonrpc.Error{Code: code, Message: "rpc " + strconv.FormatInt(code, 10)}
}

// connErr wraps a syscall error the way net.Dial does.
func connErr(errno syscall.Errno) error {
	return &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", errno)}
}

// classifyCases hold at least one case per row of the table; the row is
// named, and TestClassifyEveryRowTested checks that none is missing.
var classifyCases = []struct {
	name string
	err  error
	row  string
}{
	{"MarkPermanent", MarkPermanent(errors.New("bad args")), "MarkPermanent"},
	{"MarkPermanent beats a transient code", MarkPermanent(&ServiceError{Code: 503}), "MarkPermanent"},
	{"outer MarkPermanent wins", MarkPermanent(MarkTransient(io.ErrUnexpectedEOF)), "MarkPermanent"},
	{"MarkTransient", MarkTransient(errors.New("tool said busy")), "MarkTransient"},
	{"MarkTransient beats a permanent code", MarkTransient(&HTTPError{Status: 404}), "MarkTransient"},
	{"outer MarkTransient wins", fmt.Errorf("w: %w", MarkTransient(MarkPermanent(io.EOF))), "MarkTransient"},
	{"backoff.Permanent", backoff.Permanent(nats.ErrTimeout), "backoff.Permanent"},
	{"backoff.RetryAfter", backoff.RetryAfter(3), "backoff.RetryAfter"},
	{"context.Canceled", context.Canceled, "context.Canceled"},
	{"context.Canceled in url.Error", &url.Error{Op: "Post", URL: "http://x", Err: context.Canceled}, "context.Canceled"},
	{"context.DeadlineExceeded", fmt.Errorf("attempt: %w", context.DeadlineExceeded), "context.DeadlineExceeded"},
	{"ServiceError 503", &ServiceError{Code: CodeUnavailable}, "ServiceError 503"},
	{"ServiceError 400", &ServiceError{Code: CodeBadRequest}, "ServiceError other code"},
	{"ServiceError 403", &ServiceError{Code: CodeForbidden}, "ServiceError other code"},
	{"ServiceError 404", fmt.Errorf("resolve: %w", &ServiceError{Code: CodeNotFound}), "ServiceError other code"},
	{"ServiceError 422", &ServiceError{Code: CodeInvalidConfig}, "ServiceError other code"},
	{"HTTP 408", &HTTPError{Status: 408}, "HTTP 408/429/500/502/503/504"},
	{"HTTP 429", &HTTPError{Status: 429}, "HTTP 408/429/500/502/503/504"},
	{"HTTP 500", &HTTPError{Status: 500}, "HTTP 408/429/500/502/503/504"},
	{"HTTP 502", &HTTPError{Status: 502}, "HTTP 408/429/500/502/503/504"},
	{"HTTP 503", fmt.Errorf("get: %w", &HTTPError{Status: 503}), "HTTP 408/429/500/502/503/504"},
	{"HTTP 504", &HTTPError{Status: 504}, "HTTP 408/429/500/502/503/504"},
	{"HTTP 400", &HTTPError{Status: 400}, "HTTP other 4xx"},
	{"HTTP 401", &HTTPError{Status: 401}, "HTTP other 4xx"},
	{"HTTP 403", &HTTPError{Status: 403}, "HTTP other 4xx"},
	{"HTTP 404", &HTTPError{Status: 404}, "HTTP other 4xx"},
	{"HTTP 409", &HTTPError{Status: 409}, "HTTP other 4xx"},
	{"HTTP 422", &HTTPError{Status: 422}, "HTTP other 4xx"},
	{"HTTP 501", &HTTPError{Status: 501}, "HTTP other status"},
	{"HTTP 302", &HTTPError{Status: 302}, "HTTP other status"},
	{"JSON-RPC -32603", rpcErr(jsonrpc.CodeInternalError), "JSON-RPC -32603 internal error"},
	{"JSON-RPC -32004", rpcErr(-32004), "JSON-RPC -32004/-32005 server closing, rejected by transport"},
	// The Go SDK's streamable client on HTTP 503: "%w: %s: %v" of ErrRejected.
	{"JSON-RPC -32005 as the SDK wraps it", fmt.Errorf("%w: calling tools/call: Service Unavailable", rpcErr(-32005)), "JSON-RPC -32004/-32005 server closing, rejected by transport"},
	{"JSON-RPC -32700", rpcErr(jsonrpc.CodeParseError), "JSON-RPC -32700/-32600/-32601/-32602 invalid request"},
	{"JSON-RPC -32600", rpcErr(jsonrpc.CodeInvalidRequest), "JSON-RPC -32700/-32600/-32601/-32602 invalid request"},
	{"JSON-RPC -32601", rpcErr(jsonrpc.CodeMethodNotFound), "JSON-RPC -32700/-32600/-32601/-32602 invalid request"},
	{"JSON-RPC -32602", rpcErr(jsonrpc.CodeInvalidParams), "JSON-RPC -32700/-32600/-32601/-32602 invalid request"},
	// The SDK on a 4xx with a JSON-RPC body: "%s: %w: %w: %v" of the
	// response's error, then ErrRejected; the first (the server's) wins.
	{"JSON-RPC -32602 before ErrRejected", fmt.Errorf("calling: %w: %w: Bad Request", rpcErr(-32602), rpcErr(-32005)), "JSON-RPC -32700/-32600/-32601/-32602 invalid request"},
	{"JSON-RPC -32002", rpcErr(-32002), "JSON-RPC MCP -32002/-32020/-32021/-32022/-32042"},
	{"JSON-RPC -32020", rpcErr(-32020), "JSON-RPC MCP -32002/-32020/-32021/-32022/-32042"},
	{"JSON-RPC -32021", rpcErr(-32021), "JSON-RPC MCP -32002/-32020/-32021/-32022/-32042"},
	{"JSON-RPC -32022", rpcErr(-32022), "JSON-RPC MCP -32002/-32020/-32021/-32022/-32042"},
	{"JSON-RPC -32042", rpcErr(-32042), "JSON-RPC MCP -32002/-32020/-32021/-32022/-32042"},
	{"JSON-RPC -32000", rpcErr(-32000), "JSON-RPC other code"},
	{"JSON-RPC -32099", rpcErr(-32099), "JSON-RPC other code"},
	{"JSON-RPC 0", rpcErr(0), "JSON-RPC other code"},
	{"JSON-RPC app code", rpcErr(42), "JSON-RPC other code"},
	{"nats timeout", nats.ErrTimeout, "NATS transient"},
	{"nats no responders", fmt.Errorf("request: %w", nats.ErrNoResponders), "NATS transient"},
	{"nats reconnecting", nats.ErrConnectionReconnecting, "NATS transient"},
	{"nats disconnected", nats.ErrDisconnected, "NATS transient"},
	{"nats stale", nats.ErrStaleConnection, "NATS transient"},
	{"nats no servers", nats.ErrNoServers, "NATS transient"},
	{"nats reconnect buffer", nats.ErrReconnectBufExceeded, "NATS transient"},
	{"nats closed", nats.ErrConnectionClosed, "NATS transient"},
	{"nats permissions", nats.ErrPermissionViolation, "NATS permanent"},
	{"nats authorization", nats.ErrAuthorization, "NATS permanent"},
	{"nats auth expired", nats.ErrAuthExpired, "NATS permanent"},
	{"nats auth revoked", nats.ErrAuthRevoked, "NATS permanent"},
	{"nats account auth expired", nats.ErrAccountAuthExpired, "NATS permanent"},
	{"nats bad subject", nats.ErrBadSubject, "NATS permanent"},
	{"nats max payload", nats.ErrMaxPayload, "NATS permanent"},
	{"nats draining", nats.ErrConnectionDraining, "NATS permanent"},
	{"nats no headers", nats.ErrHeadersNotSupported, "NATS permanent"},
	// How agentproto/mcp reports the SDK's closed connection or missing
	// session (its tests check the wrapping against the SDK's sentinels).
	{"mcp session lost", fmt.Errorf("mcp: connect to MCP server x: %w", fmt.Errorf("%w: %w", ErrMCPSessionLost, errors.New("connection closed"))), "MCP connection closed, session missing, process exited"},
	{"mcp process exited", fmt.Errorf("%w: connection closed", ErrMCPProcessExited), "MCP connection closed, session missing, process exited"},
	{"net timeout", &net.OpError{Op: "read", Net: "tcp", Err: os.ErrDeadlineExceeded}, "net.Error timeout"},
	{"url.Error timeout", &url.Error{Op: "Get", URL: "http://x", Err: timeoutErr{}}, "net.Error timeout"},
	{"ECONNRESET", connErr(syscall.ECONNRESET), "connection reset/aborted, broken pipe"},
	{"ECONNREFUSED", connErr(syscall.ECONNREFUSED), "connection refused"},
	// The bug: the Go SDK wraps a refused TCP connect in JSON-RPC
	// -32005; the rule named must be the refused connect, not -32005.
	{"ECONNREFUSED under -32005", fmt.Errorf("sending \"tools/call\": %w: %w", rpcErr(-32005), &url.Error{Op: "Post", URL: "http://127.0.0.1:1/mcp", Err: connErr(syscall.ECONNREFUSED)}), "connection refused"},
	{"ECONNRESET under -32005", fmt.Errorf("%w: %w", rpcErr(-32005), connErr(syscall.ECONNRESET)), "connection reset/aborted, broken pipe"},
	{"ECONNABORTED", connErr(syscall.ECONNABORTED), "connection reset/aborted, broken pipe"},
	{"EPIPE", fmt.Errorf("write: %w", syscall.EPIPE), "connection reset/aborted, broken pipe"},
	{"DNS", fmt.Errorf("%w: %w", rpcErr(-32005), &net.DNSError{Err: "no such host", Name: "mcp.invalid", IsNotFound: true}), "DNS lookup failed"},
	{"TLS", fmt.Errorf("%w: %w", rpcErr(-32005), x509.UnknownAuthorityError{}), "TLS handshake, certificate"},
	{"outcome unknown over a timeout", fmt.Errorf("%w: %w", ErrOutcomeUnknown, context.DeadlineExceeded), "MCP outcome unknown"},
	{"quarantined", fmt.Errorf("x: %w", ErrMCPServerQuarantined), "MCP server quarantined, protocol version, config"},
	{"protocol version", fmt.Errorf("%w: %w", ErrMCPProtocolVersion, rpcErr(-32022)), "MCP server quarantined, protocol version, config"},
	{"config", ErrMCPConfig, "MCP server quarantined, protocol version, config"},
	{"io.ErrUnexpectedEOF", fmt.Errorf("read body: %w", io.ErrUnexpectedEOF), "io.ErrUnexpectedEOF"},
	{"plain error", errors.New("something odd"), "unmatched"},
	{"io.EOF", io.EOF, "unmatched"},
	{"net timeout false", &net.OpError{Op: "read", Err: errors.New("x")}, "unmatched"},
}

// timeoutErr is a net.Error that is a timeout, as an HTTP client timeout is.
type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

func TestClassify(t *testing.T) {
	for _, tt := range classifyCases {
		class, row := classify(tt.err)
		if row < 0 || classTable[row].Name != tt.row {
			t.Errorf("%s: matched row %d, want %q", tt.name, row, tt.row)
			continue
		}
		if got := Classify(tt.err); got != classTable[row].Class || got != class {
			t.Errorf("%s: Classify = %v, want %v", tt.name, got, classTable[row].Class)
		}
	}
	if got := Classify(nil); got != ClassNone {
		t.Errorf("Classify(nil) = %v", got)
	}
}

func TestClassifyEveryRowTested(t *testing.T) {
	tested := map[string]bool{}
	for _, tt := range classifyCases {
		tested[tt.row] = true
	}
	for i, r := range classTable {
		if !tested[r.Name] {
			t.Errorf("row %d %q has no test case", i+1, r.Name)
		}
	}
}

// TestClassifyDocMatchesTable keeps the table in Classify's doc comment in
// step with classTable: same number of rows, same classes, same order.
func TestClassifyDocMatchesTable(t *testing.T) {
	f, err := parser.ParseFile(token.NewFileSet(), "classify.go", nil, parser.ParseComments)
	if err != nil {
		t.Fatal(err)
	}
	var doc string
	for _, d := range f.Decls {
		if fn, ok := d.(*ast.FuncDecl); ok && fn.Name.Name == "Classify" {
			doc = fn.Doc.Text()
		}
	}
	row := regexp.MustCompile(`^\s*(\d+)\s+.*\s(transient|permanent|unknown)$`)
	var classes []string
	for _, l := range strings.Split(doc, "\n") {
		if m := row.FindStringSubmatch(l); m != nil {
			if n, _ := strconv.Atoi(m[1]); n != len(classes)+1 {
				t.Fatalf("doc row %s out of order", m[1])
			}
			classes = append(classes, m[2])
		}
	}
	if len(classes) != len(classTable) {
		t.Fatalf("doc has %d rows, classTable %d", len(classes), len(classTable))
	}
	for i, c := range classes {
		if c != classTable[i].Class.String() {
			t.Errorf("row %d: doc says %s, table %s (%s)", i+1, c, classTable[i].Class, classTable[i].Name)
		}
	}
}

func TestMarksPreserveChain(t *testing.T) {
	se := &ServiceError{Code: 503, Message: "busy"}
	for _, err := range []error{MarkTransient(se), MarkPermanent(se), MarkPermanent(fmt.Errorf("w: %w", se))} {
		var got *ServiceError
		if !errors.As(err, &got) || got != se || !errors.Is(err, se) {
			t.Errorf("%v: errors.As/Is lost the ServiceError", err)
		}
		if err.Error() != se.Error() && !strings.HasSuffix(err.Error(), se.Error()) {
			t.Errorf("message %q", err)
		}
	}
	if MarkTransient(nil) != nil || MarkPermanent(nil) != nil {
		t.Error("marking nil is not nil")
	}
}

func TestClassMethods(t *testing.T) {
	tests := []struct {
		c         Class
		s         string
		retryable bool
	}{
		{ClassNone, "", false},
		{ClassTransient, "transient", true},
		{ClassPermanent, "permanent", false},
		{ClassUnknown, "unknown", true},
		{Class(9), "class(9)", false},
	}
	for _, tt := range tests {
		if tt.c.String() != tt.s || tt.c.Retryable() != tt.retryable {
			t.Errorf("%d: String %q Retryable %v", tt.c, tt.c.String(), tt.c.Retryable())
		}
	}
}

func TestClassRulesIsACopy(t *testing.T) {
	rules := ClassRules()
	if len(rules) != len(classTable) {
		t.Fatalf("%d rules, table has %d", len(rules), len(classTable))
	}
	rules[0].Class = ClassTransient
	if classTable[0].Class != ClassPermanent {
		t.Error("ClassRules shares the table")
	}
	if s := classTable[0].String(); s != "MarkPermanent → permanent" {
		t.Errorf("Rule.String = %q", s)
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"120", 2 * time.Minute, true},
		{" 5 ", 5 * time.Second, true},
		{"0", 0, true},
		{"Sun, 01 Mar 2026 12:00:30 GMT", 30 * time.Second, true},   // IMF-fixdate
		{"Sunday, 01-Mar-26 12:01:00 GMT", time.Minute, true},       // RFC 850
		{"Sun Mar  1 12:00:10 2026", 10 * time.Second, true},        // ANSI C asctime
		{"Sun, 01 Mar 2026 11:00:00 GMT", 0, true},                  // in the past
		{"99999999999999999999999", time.Duration(1<<63 - 1), true}, // overflow saturates
		{"9999999999999", time.Duration(1<<63 - 1), true},
		{"", 0, false},
		{"soon", 0, false},
		{"-5", 0, false},
		{"1.5", 0, false},
		{"5s", 0, false},
	}
	for _, tt := range tests {
		got, ok := ParseRetryAfter(tt.in, now)
		if got != tt.want || ok != tt.ok {
			t.Errorf("ParseRetryAfter(%q) = %v, %v; want %v, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

func TestHTTPError(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	e := NewHTTPError(503, "7", now)
	if e.Status != 503 || e.RetryAfter != 7*time.Second {
		t.Errorf("NewHTTPError = %+v", e)
	}
	if got := e.Error(); got != "agentproto: HTTP 503 Service Unavailable (retry after 7s)" {
		t.Errorf("Error() = %q", got)
	}
	if got := NewHTTPError(599, "junk", now).Error(); got != "agentproto: HTTP 599" {
		t.Errorf("Error() = %q", got)
	}
	if got := retryAfterHint(fmt.Errorf("w: %w", e)); got != 7*time.Second {
		t.Errorf("retryAfterHint = %v", got)
	}
	if got := retryAfterHint(errors.New("x")); got != 0 {
		t.Errorf("retryAfterHint(plain) = %v", got)
	}
}
