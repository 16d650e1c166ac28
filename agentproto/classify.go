package agentproto

import (
	"context"
	"errors"
	"io"
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/nats-io/nats.go"
)

// Class is what the retry layer does with an error.
type Class uint8

// The classes of Classify. The zero value ClassNone is the class of a nil
// error.
const (
	// ClassNone is the class of a nil error.
	ClassNone Class = iota
	// ClassTransient errors are worth retrying: the same call may succeed
	// later (timeouts, resets, 503, no responders).
	ClassTransient
	// ClassPermanent errors fail at once: retrying the same call cannot
	// help (bad request, forbidden, not found, invalid params, cancelled).
	ClassPermanent
	// ClassUnknown errors matched no row of the table. They are retried
	// like transient errors but counted separately (CallCounts.Unknown), so
	// an operator can see the table needs a row.
	ClassUnknown
)

// String returns "", "transient", "permanent" or "unknown", the spelling of
// the heartbeat's calls.last_error_class and of log lines.
func (c Class) String() string {
	switch c {
	case ClassNone:
		return ""
	case ClassTransient:
		return "transient"
	case ClassPermanent:
		return "permanent"
	case ClassUnknown:
		return "unknown"
	}
	return "class(" + strconv.Itoa(int(c)) + ")"
}

// Retryable reports whether Retry retries an error of class c
// (transient and unknown).
func (c Class) Retryable() bool { return c == ClassTransient || c == ClassUnknown }

// Rule is one row of the classification table: a name saying what it
// matches and the class it gives.
type Rule struct {
	// Name says what the row matches, e.g. "HTTP 408/429/500/502/503/504".
	Name string
	// Class is the class of an error the row matches.
	Class Class

	match func(error) bool
}

// String returns "name → class", e.g. "HTTP other 4xx → permanent".
func (r Rule) String() string { return r.Name + " → " + r.Class.String() }

// ClassRules returns a copy of the classification table, in the order
// Classify tries it. Useful to print the table (tetherctl) or to document it.
func ClassRules() []Rule {
	out := make([]Rule, len(classTable))
	copy(out, classTable)
	return out
}

// Classify tells the retry layer what to do with err. It is the one
// classification table every caller uses (MCP tool calls, NATS requests,
// HTTP calls); Retry consults it after every failed attempt. The rows are
// tried in this order and the first match wins; every row looks through the
// whole errors.Unwrap chain (errors.Is / errors.As):
//
//	 #  matches                                                          class
//	 1  MarkPermanent (outermost mark wins)                              permanent
//	 2  MarkTransient (outermost mark wins)                              transient
//	 3  ErrOutcomeUnknown (a tool call that may have run; never          permanent
//	    retried, whatever its cause)
//	 4  ErrMCPServerQuarantined, ErrMCPProtocolVersion, ErrMCPConfig     permanent
//	 5  *backoff.PermanentError (backoff.Permanent)                      permanent
//	 6  *backoff.RetryAfterError (backoff.RetryAfter)                    transient
//	 7  context.Canceled                                                 permanent
//	 8  context.DeadlineExceeded (a per-attempt timeout, see below)      transient
//	 9  *ServiceError code 503 unavailable                               transient
//	10  *ServiceError any other code (400/403/404/422)                   permanent
//	11  *HTTPError 408/429/500/502/503/504                               transient
//	12  *HTTPError any other 4xx (400/401/403/404, 405, 409, 422, ...)   permanent
//	13  *HTTPError any other status (501, 505, 3xx, ...)                 unknown
//	14  net.Error whose Timeout() is true (os.ErrDeadlineExceeded too)   transient
//	15  syscall.ECONNREFUSED (connection refused)                        transient
//	16  syscall.ECONNRESET, ECONNABORTED, EPIPE                          transient
//	17  io.ErrUnexpectedEOF                                              transient
//	18  *net.DNSError (lookup failed)                                    transient
//	19  TLS handshake / x509 certificate errors                          permanent
//	20  *jsonrpc.Error -32603 internal error                             transient
//	21  *jsonrpc.Error -32004 server closing, -32005 rejected by         transient
//	    transport (the Go SDK's code for HTTP 429/5xx and failed sends)
//	22  *jsonrpc.Error -32700 parse, -32600 invalid request,             permanent
//	    -32601 method not found, -32602 invalid params
//	23  *jsonrpc.Error MCP -32002 resource not found (old SDKs),         permanent
//	    -32020 header mismatch, -32021 missing client capabilities,
//	    -32022 unsupported protocol version, -32042 URL elicitation
//	24  *jsonrpc.Error any other code (the rest of -32000..-32099,       unknown
//	    0 = an uncoded Go error from a Go SDK server, app codes)
//	25  nats.ErrTimeout, ErrNoResponders, ErrConnectionReconnecting,     transient
//	    ErrDisconnected, ErrStaleConnection, ErrNoServers,
//	    ErrReconnectBufExceeded, ErrConnectionClosed
//	26  nats.ErrPermissionViolation, ErrAuthorization, ErrAuthExpired,   permanent
//	    ErrAuthRevoked, ErrAccountAuthExpired, ErrBadSubject,
//	    ErrMaxPayload, ErrConnectionDraining, ErrHeadersNotSupported
//	27  ErrMCPSessionLost (agentproto/mcp wraps the SDK's                 transient
//	    ErrConnectionClosed and ErrSessionMissing in it),
//	    ErrMCPProcessExited (a stdio server to restart)
//	28  anything else                                                    unknown
//
// Notes on the judgement calls:
//
//   - Row 6: Classify cannot see the caller's context. Retry stops as soon
//     as the caller's ctx is done, whatever the table says, so a
//     DeadlineExceeded it retries comes from a per-attempt timeout
//     (Policy.AttemptTimeout, an HTTP client timeout, a nats request
//     timeout) and is worth retrying. The caller's own cancellation (row 5)
//     never is.
//   - Rows 14–19 come before the JSON-RPC rows: the Go SDK wraps a
//     transport failure (a refused TCP connect, a reset, a DNS failure) in
//     JSON-RPC -32005 "rejected by transport", and the cause is what
//     happened, so it is what the rule names.
//   - Row 19: a certificate the client rejects stays rejected until
//     someone changes the server or the trust store.
//   - Rows 21 and 24: JSON-RPC reserves -32000..-32099 for
//     implementation-defined server errors with no agreed meaning, so only
//     the codes whose meaning the official Go SDK fixes get their own row;
//     the rest are unknown: retried, but counted so that they stand out.
//   - Rows 25 and 27: a closed NATS connection or MCP session does not heal
//     by itself, but the watchdog rebuilds it; a retry helps only when op
//     picks up the current connection or session on every attempt, so write
//     ops that way. A draining NATS connection (row 18) means the agent is
//     shutting down.
//   - A tool result with IsError set is not a Go error; a tool wrapper that
//     knows better uses MarkTransient or MarkPermanent.
//
// Classify(nil) is ClassNone.
func Classify(err error) Class {
	c, _ := classify(err)
	return c
}

// ClassifyRule returns the row of the table that classifies err (the
// zero Rule, class ClassNone, for nil): its Name is what log lines call
// the rule.
func ClassifyRule(err error) Rule {
	_, row := classify(err)
	if row < 0 {
		return Rule{}
	}
	return classTable[row]
}

// classify returns the class of err and the index of the row that matched
// (-1 for nil).
func classify(err error) (Class, int) {
	if err == nil {
		return ClassNone, -1
	}
	for i := range classTable {
		if classTable[i].match(err) {
			return classTable[i].Class, i
		}
	}
	// Unreachable: the last row matches everything.
	return ClassUnknown, len(classTable) - 1
}

// MCP's JSON-RPC error codes (the spec's; the SDK's mcp package names them
// too, but agentproto does not link it).
const (
	mcpCodeResourceNotFound           = -32002 // old SDKs
	mcpCodeHeaderMismatch             = -32020
	mcpCodeMissingClientCapabilities  = -32021
	mcpCodeUnsupportedProtocolVersion = -32022
	mcpCodeURLElicitationRequired     = -32042
)

// classTable is the table documented on Classify; keep the two in step.
var classTable = []Rule{
	{"MarkPermanent", ClassPermanent, isMarked(ClassPermanent)},
	{"MarkTransient", ClassTransient, isMarked(ClassTransient)},
	{"MCP outcome unknown", ClassPermanent, isAny(ErrOutcomeUnknown)},
	{"MCP server quarantined, protocol version, config", ClassPermanent, isAny(ErrMCPServerQuarantined, ErrMCPProtocolVersion, ErrMCPConfig)},
	{"backoff.Permanent", ClassPermanent, isType[*backoff.PermanentError]},
	{"backoff.RetryAfter", ClassTransient, isType[*backoff.RetryAfterError]},
	{"context.Canceled", ClassPermanent, isAny(context.Canceled)},
	{"context.DeadlineExceeded", ClassTransient, isAny(context.DeadlineExceeded)},
	{"ServiceError 503", ClassTransient, serviceCode(func(c int) bool { return c == CodeUnavailable })},
	{"ServiceError other code", ClassPermanent, serviceCode(func(c int) bool { return c != CodeUnavailable })},
	{"HTTP 408/429/500/502/503/504", ClassTransient, httpStatus(transientHTTPStatus)},
	{"HTTP other 4xx", ClassPermanent, httpStatus(func(s int) bool { return s >= 400 && s < 500 && !transientHTTPStatus(s) })},
	{"HTTP other status", ClassUnknown, httpStatus(func(s int) bool { return (s < 400 || s >= 500) && !transientHTTPStatus(s) })},
	{"net.Error timeout", ClassTransient, isNetTimeout},
	{"connection refused", ClassTransient, isAny(syscall.ECONNREFUSED)},
	{"connection reset/aborted, broken pipe", ClassTransient, isAny(syscall.ECONNRESET, syscall.ECONNABORTED, syscall.EPIPE)},
	{"io.ErrUnexpectedEOF", ClassTransient, isAny(io.ErrUnexpectedEOF)},
	{"DNS lookup failed", ClassTransient, isType[*net.DNSError]},
	{"TLS handshake, certificate", ClassPermanent, isTLS},
	{"JSON-RPC -32603 internal error", ClassTransient, rpcCode(-32603)},
	{"JSON-RPC -32004/-32005 server closing, rejected by transport", ClassTransient, rpcCode(-32004, -32005)},
	{"JSON-RPC -32700/-32600/-32601/-32602 invalid request", ClassPermanent, rpcCode(jsonrpc.CodeParseError, jsonrpc.CodeInvalidRequest, jsonrpc.CodeMethodNotFound, jsonrpc.CodeInvalidParams)},
	{"JSON-RPC MCP -32002/-32020/-32021/-32022/-32042", ClassPermanent, rpcCode(mcpCodeResourceNotFound, mcpCodeHeaderMismatch, mcpCodeMissingClientCapabilities, mcpCodeUnsupportedProtocolVersion, mcpCodeURLElicitationRequired)},
	{"JSON-RPC other code", ClassUnknown, isType[*jsonrpc.Error]},
	{"NATS transient", ClassTransient, isAny(nats.ErrTimeout, nats.ErrNoResponders, nats.ErrConnectionReconnecting, nats.ErrDisconnected, nats.ErrStaleConnection, nats.ErrNoServers, nats.ErrReconnectBufExceeded, nats.ErrConnectionClosed)},
	{"NATS permanent", ClassPermanent, isAny(nats.ErrPermissionViolation, nats.ErrAuthorization, nats.ErrAuthExpired, nats.ErrAuthRevoked, nats.ErrAccountAuthExpired, nats.ErrBadSubject, nats.ErrMaxPayload, nats.ErrConnectionDraining, nats.ErrHeadersNotSupported)},
	{"MCP connection closed, session missing, process exited", ClassTransient, isAny(ErrMCPSessionLost, ErrMCPProcessExited)},
	{"unmatched", ClassUnknown, func(error) bool { return true }},
}

func isAny(targets ...error) func(error) bool {
	return func(err error) bool {
		for _, t := range targets {
			if errors.Is(err, t) {
				return true
			}
		}
		return false
	}
}

func isType[E error](err error) bool {
	_, ok := errors.AsType[E](err)
	return ok
}

func isMarked(c Class) func(error) bool {
	return func(err error) bool {
		m, ok := errors.AsType[*markedError](err)
		return ok && m.class == c
	}
}

func serviceCode(pred func(int) bool) func(error) bool {
	return func(err error) bool {
		se, ok := errors.AsType[*ServiceError](err)
		return ok && pred(se.Code)
	}
}

func httpStatus(pred func(int) bool) func(error) bool {
	return func(err error) bool {
		he, ok := errors.AsType[*HTTPError](err)
		return ok && pred(he.Status)
	}
}

func rpcCode(codes ...int64) func(error) bool {
	return func(err error) bool {
		we, ok := errors.AsType[*jsonrpc.Error](err)
		if !ok {
			return false
		}
		for _, c := range codes {
			if we.Code == c {
				return true
			}
		}
		return false
	}
}

func isNetTimeout(err error) bool {
	ne, ok := errors.AsType[net.Error](err)
	return ok && ne.Timeout()
}

func transientHTTPStatus(s int) bool {
	switch s {
	case http.StatusRequestTimeout, http.StatusTooManyRequests,
		http.StatusInternalServerError, http.StatusBadGateway,
		http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true
	}
	return false
}

// markedError carries a class chosen by the code that produced the error.
type markedError struct {
	err   error
	class Class
}

func (m *markedError) Error() string { return m.err.Error() }
func (m *markedError) Unwrap() error { return m.err }

// MarkTransient wraps err so that Classify reports it transient (rows 1–2
// of the table: a mark beats every other row, and the outermost mark wins).
// errors.Is and errors.As still see err. MarkTransient(nil) is nil.
func MarkTransient(err error) error {
	if err == nil {
		return nil
	}
	return &markedError{err: err, class: ClassTransient}
}

// MarkPermanent wraps err so that Classify reports it permanent and Retry
// fails at once. errors.Is and errors.As still see err. MarkPermanent(nil)
// is nil.
func MarkPermanent(err error) error {
	if err == nil {
		return nil
	}
	return &markedError{err: err, class: ClassPermanent}
}

// HTTPError is a non-2xx HTTP response. Classify reads Status; Retry honours
// RetryAfter (capped by Policy.MaxDelay).
type HTTPError struct {
	// Status is the HTTP status code, e.g. 503.
	Status int
	// RetryAfter is the server's Retry-After, zero if none or unparseable.
	RetryAfter time.Duration
}

// NewHTTPError returns the error for a response with the given status and
// Retry-After header value ("" if absent); now is the clock an HTTP-date is
// measured against (time.Now() in production).
func NewHTTPError(status int, retryAfter string, now time.Time) *HTTPError {
	d, _ := ParseRetryAfter(retryAfter, now)
	return &HTTPError{Status: status, RetryAfter: d}
}

func (e *HTTPError) Error() string {
	msg := "agentproto: HTTP " + strconv.Itoa(e.Status)
	if t := http.StatusText(e.Status); t != "" {
		msg += " " + t
	}
	if e.RetryAfter > 0 {
		msg += " (retry after " + e.RetryAfter.String() + ")"
	}
	return msg
}

// ParseRetryAfter parses an HTTP Retry-After header value (RFC 9110
// §10.2.3): either delta-seconds ("120") or an HTTP-date ("Fri, 31 Dec 1999
// 23:59:59 GMT", measured from now; a date in the past gives 0). It reports
// false, with zero, for an empty or malformed value.
func ParseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if v[0] >= '0' && v[0] <= '9' {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			if ne, ok := err.(*strconv.NumError); ok && ne.Err == strconv.ErrRange {
				return time.Duration(math.MaxInt64), true
			}
			return 0, false
		}
		if n > uint64(math.MaxInt64/int64(time.Second)) {
			return time.Duration(math.MaxInt64), true
		}
		return time.Duration(n) * time.Second, true
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	return max(t.Sub(now), 0), true
}

// retryAfterHint returns the wait a server asked for, zero if none: from an
// *HTTPError, a *ServiceError or a backoff.RetryAfter error in err's chain.
func retryAfterHint(err error) time.Duration {
	if he, ok := errors.AsType[*HTTPError](err); ok && he.RetryAfter > 0 {
		return he.RetryAfter
	}
	if se, ok := errors.AsType[*ServiceError](err); ok && se.RetryAfter > 0 {
		return se.RetryAfter
	}
	if ra, ok := errors.AsType[*backoff.RetryAfterError](err); ok && ra.Duration > 0 {
		return ra.Duration
	}
	return 0
}
