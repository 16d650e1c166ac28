package agentproto

import (
	"errors"
	"fmt"
	"time"
)

// Error codes and names of the wire contract (DESIGN.md, "Replies and
// errors"). Every error reply carries exactly one of these pairs.
const (
	CodeBadRequest    = 400
	CodeForbidden     = 403
	CodeNotFound      = 404
	CodeInvalidConfig = 422
	CodeUnavailable   = 503

	NameBadRequest    = "bad_request"
	NameForbidden     = "forbidden"
	NameNotFound      = "not_found"
	NameInvalidConfig = "invalid_config"
	NameUnavailable   = "unavailable"
)

// Header names set on every error reply, as the NATS micro framework does.
const (
	HeaderServiceError     = "Nats-Service-Error"
	HeaderServiceErrorCode = "Nats-Service-Error-Code"
)

// ErrorName returns the wire name for a code ("" for codes outside the contract).
func ErrorName(code int) string {
	switch code {
	case CodeBadRequest:
		return NameBadRequest
	case CodeForbidden:
		return NameForbidden
	case CodeNotFound:
		return NameNotFound
	case CodeInvalidConfig:
		return NameInvalidConfig
	case CodeUnavailable:
		return NameUnavailable
	}
	return ""
}

// ErrorBody is the JSON body of every error reply: {"error":{...}}.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail is the inside of an error reply.
type ErrorDetail struct {
	// Code is the code's wire name: "bad_request", "forbidden", "not_found",
	// "invalid_config" or "unavailable".
	Code string `json:"code"`
	// Status is the numeric code (400, 403, 404, 422, 503), the same value
	// as the Nats-Service-Error-Code header.
	Status int `json:"status"`
	// Message says what was wrong, where, and what to do.
	Message string `json:"message"`
	// Retryable is true only for 503.
	Retryable bool `json:"retryable"`
	// RetryAfterMS is an optional hint: wait at least this long before retrying.
	RetryAfterMS int64 `json:"retry_after_ms,omitempty"`
}

// ServiceError is an error reply received from the supervisor. Callers use
// errors.As to read its code; the retry classification treats 503 as
// transient and every other code as permanent.
type ServiceError struct {
	// Subject is the request subject that was answered with the error.
	Subject string
	// Code is the Nats-Service-Error-Code (400, 403, 404, 422, 503).
	Code int
	// Message is the supervisor's description.
	Message string
	// RetryAfter is the supervisor's retry_after hint, zero if none.
	RetryAfter time.Duration
}

func (e *ServiceError) Error() string {
	return fmt.Sprintf("agentproto: %s: %d %s: %s", e.Subject, e.Code, ErrorName(e.Code), e.Message)
}

// Retryable reports whether the contract marks the error as retryable (503).
func (e *ServiceError) Retryable() bool { return e.Code == CodeUnavailable }

// Sentinel errors of the agentproto package.
var (
	// ErrClosed is returned by calls on a closed Client.
	ErrClosed = errors.New("agentproto: client closed")
	// ErrInvalidConfig reports a Config that fails Validate.
	ErrInvalidConfig = errors.New("agentproto: invalid config")
	// ErrCommandNotAllowed reports a stdio config whose command is not in
	// the agent's Config.AllowCommands: it is never started, whatever the
	// config says (a write to mcp_configs must not become code execution).
	ErrCommandNotAllowed = errors.New("agentproto: stdio command not allowed")
	// ErrMCPSessionLost marks an MCP session that closed or that the
	// server no longer knows (agentproto/mcp wraps the SDK's
	// ErrConnectionClosed and ErrSessionMissing in it): transient, the
	// next attempt opens a new session.
	ErrMCPSessionLost = errors.New("agentproto: MCP session lost")
	// ErrOutcomeUnknown marks a tool call that failed after its request
	// may have reached the MCP server, for a tool not known to be
	// idempotent: it may or may not have run, so it is never retried
	// (permanent). agentproto/mcp's OutcomeUnknownError wraps it.
	ErrOutcomeUnknown = errors.New("agentproto: MCP tool call outcome unknown")
	// ErrMCPServerQuarantined marks a call refused because its supervised
	// stdio server restarted too often and was given up on (permanent for
	// the call; the server is released after its quarantine).
	ErrMCPServerQuarantined = errors.New("agentproto: MCP server quarantined")
	// ErrMCPProcessExited marks a stdio MCP server process that exited
	// (transient: the supervisor restarts it, within its restart budget).
	ErrMCPProcessExited = errors.New("agentproto: MCP server process exited")
	// ErrMCPProtocolVersion marks an MCP server that supports no protocol
	// version this client speaks (permanent after one renegotiation).
	ErrMCPProtocolVersion = errors.New("agentproto: MCP protocol version not supported")
	// ErrMCPConfig marks an MCP server config the client cannot use
	// (unknown transport, bad URL): permanent until the config changes.
	ErrMCPConfig = errors.New("agentproto: MCP server config unusable")
)
