package mcp

import (
	"errors"
	"fmt"
	"strconv"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	sdk "github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/tether-dev/tether/agentproto"
)

// Sentinel errors of the mcp package (aliases of agentproto's, so that
// agentproto's classification table knows them without linking the SDK).
var (
	// ErrOutcomeUnknown: the call failed after its request may have
	// reached the server, and the tool is not known to be idempotent; it
	// was not retried. Every *OutcomeUnknownError is errors.Is this.
	ErrOutcomeUnknown = agentproto.ErrOutcomeUnknown
	// ErrQuarantined: the stdio server restarted too often and is given
	// up on until Options.Restart.QuarantineFor passes, the config changes
	// or Release is called.
	ErrQuarantined = agentproto.ErrMCPServerQuarantined
	// ErrClosed is returned by calls on a closed ToolCaller.
	ErrClosed = errors.New("mcp: tool caller closed")
)

// OutcomeUnknownError is the error of a tool call whose attempt failed
// after the request may have reached the MCP server (the request was
// written and then the stream broke, the connection was reset, or the
// attempt timed out), for a tool that is neither annotated idempotentHint
// or readOnlyHint by the server nor listed in the config's
// idempotent_tools. The tool may or may not have run; it was not retried.
// errors.Is(err, ErrOutcomeUnknown) holds, and errors.Is / errors.As see
// the attempt's own error too. Classify calls it permanent.
type OutcomeUnknownError struct {
	// Server is the MCP server's name.
	Server string
	// Tool is the tool called.
	Tool string
	// Attempt is the attempt (1-based) whose request may have been run.
	Attempt int
	// Err is that attempt's error.
	Err error
}

func (e *OutcomeUnknownError) Error() string {
	return "mcp: tool " + strconv.Quote(e.Tool) + " on MCP server " + e.Server + ", attempt " +
		strconv.Itoa(e.Attempt) + ": outcome unknown (the request may have reached the server; " +
		"not retried because the tool is not marked idempotent): " + e.Err.Error()
}

// Unwrap returns ErrOutcomeUnknown and the attempt's error.
func (e *OutcomeUnknownError) Unwrap() []error { return []error{ErrOutcomeUnknown, e.Err} }

// FailureKind is agentproto.FailureKind with the SDK's own errors told
// apart: a session the server no longer knows is "session_lost", a
// connection closed under a call (with no deeper cause) is "reset".
func FailureKind(err error) string {
	k := agentproto.FailureKind(err)
	if k == agentproto.FailureSessionLost && !errors.Is(err, sdk.ErrSessionMissing) && errors.Is(err, sdk.ErrConnectionClosed) {
		return agentproto.FailureReset
	}
	return k
}

// SessionError marks the SDK's "connection closed" and "session missing"
// errors with agentproto.ErrMCPSessionLost, the classification table's
// transient row for them (agentproto does not link the SDK's session code).
func SessionError(err error) error {
	if errors.Is(err, sdk.ErrConnectionClosed) || errors.Is(err, sdk.ErrSessionMissing) {
		return fmt.Errorf("%w: %w", agentproto.ErrMCPSessionLost, err)
	}
	return err
}

// notRunCodes are JSON-RPC error codes a server answers with instead of
// running the request: the call's outcome is known (it did not run).
var notRunCodes = map[int64]bool{
	jsonrpc.CodeParseError: true, jsonrpc.CodeInvalidRequest: true, jsonrpc.CodeMethodNotFound: true,
	jsonrpc.CodeInvalidParams: true, -32002: true, -32020: true, -32021: true,
	codeUnsupportedProtocolVersion: true, -32042: true,
}

// codeUnsupportedProtocolVersion is MCP 2026-07-28's reserved
// UnsupportedProtocolVersion.
const codeUnsupportedProtocolVersion = -32022

// rejectedUnrun reports whether err is a JSON-RPC error answer the server
// gives instead of running the request.
func rejectedUnrun(err error) bool {
	var je *jsonrpc.Error
	return errors.As(err, &je) && notRunCodes[je.Code]
}

func isUnsupportedVersion(err error) bool {
	var je *jsonrpc.Error
	return errors.As(err, &je) && je.Code == codeUnsupportedProtocolVersion
}
