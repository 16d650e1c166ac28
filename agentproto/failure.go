package agentproto

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"strconv"
	"syscall"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
)

// Failure kinds: what a failed MCP call attempt ran into, the spelling of
// a heartbeat's servers.<name>.last_failure and of log lines' "failure".
// FailureHTTP and FailureJSONRPC are prefixes: "http_503", "jsonrpc_-32603".
const (
	FailureRefused         = "refused"
	FailureTimeout         = "timeout"
	FailureReset           = "reset"
	FailureDNS             = "dns"
	FailureTLS             = "tls"
	FailureHTTP            = "http_"
	FailureJSONRPC         = "jsonrpc_"
	FailureSessionLost     = "session_lost"
	FailureProtocolVersion = "protocol_version"
	FailureProcessExited   = "process_exited"
	FailureQuarantined     = "quarantined"
	FailureOutcomeUnknown  = "outcome_unknown"
	FailureNotAllowed      = "not_allowed"
	FailureConfig          = "config"
	FailureCanceled        = "canceled"
	FailureOther           = "other"
)

// maxFailureLen bounds a failure kind (wire.md: ≤ 64 bytes).
const maxFailureLen = 64

// ValidFailure reports whether s is a failure kind a heartbeat may carry:
// one of the Failure* constants, "http_<status>" with a 3-digit status or
// "jsonrpc_<code>" with a decimal code, at most 64 bytes.
func ValidFailure(s string) bool {
	switch s {
	case FailureRefused, FailureTimeout, FailureReset, FailureDNS, FailureTLS,
		FailureSessionLost, FailureProtocolVersion, FailureProcessExited,
		FailureQuarantined, FailureOutcomeUnknown, FailureNotAllowed,
		FailureConfig, FailureCanceled, FailureOther:
		return true
	}
	if len(s) > maxFailureLen {
		return false
	}
	if rest, ok := cutPrefix(s, FailureHTTP); ok {
		n, err := strconv.Atoi(rest)
		return err == nil && len(rest) == 3 && n >= 100 && n <= 599
	}
	if rest, ok := cutPrefix(s, FailureJSONRPC); ok {
		_, err := strconv.ParseInt(rest, 10, 64)
		return err == nil && rest != "" && rest[0] != '+'
	}
	return false
}

func cutPrefix(s, p string) (string, bool) {
	if len(s) >= len(p) && s[:len(p)] == p {
		return s[len(p):], true
	}
	return "", false
}

// FailureKind says what happened in a failed attempt, for heartbeats and
// logs: the transport's own cause first (a refused TCP connect is
// "refused" even when the MCP SDK wraps it in JSON-RPC -32005), then the
// HTTP status, then the JSON-RPC code. "" for nil.
//
//	ErrOutcomeUnknown              outcome_unknown
//	ErrMCPServerQuarantined        quarantined
//	ErrCommandNotAllowed           not_allowed
//	ErrMCPConfig                   config
//	ErrMCPProtocolVersion, -32022  protocol_version
//	context.Canceled               canceled
//	ECONNREFUSED                   refused
//	*net.DNSError                  dns
//	TLS / x509 errors              tls
//	DeadlineExceeded, net timeout  timeout
//	ErrMCPProcessExited            process_exited
//	ECONNRESET, ECONNABORTED,      reset
//	EPIPE, io.EOF, ErrUnexpectedEOF
//	*HTTPError                     http_<status>
//	ErrMCPSessionLost              session_lost
//	*jsonrpc.Error                 jsonrpc_<code>
//	anything else                  other
func FailureKind(err error) string {
	if err == nil {
		return ""
	}
	for _, r := range failureTable {
		if r.match(err) {
			return r.kind
		}
	}
	if he, ok := errors.AsType[*HTTPError](err); ok && he.Status >= 100 && he.Status <= 599 {
		return FailureHTTP + strconv.Itoa(he.Status)
	}
	if errors.Is(err, ErrMCPSessionLost) {
		return FailureSessionLost
	}
	if je, ok := errors.AsType[*jsonrpc.Error](err); ok {
		return FailureJSONRPC + strconv.FormatInt(je.Code, 10)
	}
	return FailureOther
}

type failureRow struct {
	kind  string
	match func(error) bool
}

var failureTable = []failureRow{
	{FailureOutcomeUnknown, isAny(ErrOutcomeUnknown)},
	{FailureQuarantined, isAny(ErrMCPServerQuarantined)},
	{FailureNotAllowed, isAny(ErrCommandNotAllowed)},
	{FailureConfig, isAny(ErrMCPConfig)},
	{FailureProtocolVersion, func(err error) bool {
		return errors.Is(err, ErrMCPProtocolVersion) || rpcCode(mcpCodeUnsupportedProtocolVersion)(err)
	}},
	{FailureCanceled, isAny(context.Canceled)},
	{FailureRefused, isAny(syscall.ECONNREFUSED)},
	{FailureDNS, isType[*net.DNSError]},
	{FailureTLS, isTLS},
	{FailureTimeout, func(err error) bool { return errors.Is(err, context.DeadlineExceeded) || isNetTimeout(err) }},
	{FailureProcessExited, isAny(ErrMCPProcessExited)},
	{FailureReset, isAny(syscall.ECONNRESET, syscall.ECONNABORTED, syscall.EPIPE, io.EOF, io.ErrUnexpectedEOF, net.ErrClosed)},
}

func isTLS(err error) bool {
	return isType[*tls.RecordHeaderError](err) || isType[*tls.CertificateVerificationError](err) ||
		isType[tls.AlertError](err) || isType[x509.UnknownAuthorityError](err) ||
		isType[x509.HostnameError](err) || isType[x509.CertificateInvalidError](err)
}
