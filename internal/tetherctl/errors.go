package tetherctl

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Exit codes. Scripts may rely on them; they are listed by "tetherctl help".
const (
	// ExitOK: the command did what was asked.
	ExitOK = 0
	// ExitFailure: any failure without a more specific code.
	ExitFailure = 1
	// ExitUsage: bad command line — unknown command or flag, wrong number
	// of arguments, an invalid identifier, scope or revision.
	ExitUsage = 2
	// ExitInvalidConfig: a config value (file, stored revision or resolve
	// winner) fails strict validation.
	ExitInvalidConfig = 3
	// ExitNotFound: no such key, revision, agent or server.
	ExitNotFound = 4
	// ExitConflict: a compare-and-swap write lost — the key changed since it
	// was read. Nothing was written for that key; re-read and retry.
	ExitConflict = 5
	// ExitUnavailable: NATS, JetStream, the buckets or the supervisor cannot
	// be reached in time. Retrying later may help.
	ExitUnavailable = 6
)

// Sentinel errors, one per exit code class; every error Run reports wraps
// at most one of them (errors.Is).
var (
	// ErrUsage is a bad command line (ExitUsage).
	ErrUsage = errors.New("tetherctl: usage")
	// ErrInvalidConfig is a config value that fails validation (ExitInvalidConfig).
	ErrInvalidConfig = errors.New("tetherctl: invalid config")
	// ErrNotFound is a missing key, revision, agent or server (ExitNotFound).
	ErrNotFound = errors.New("tetherctl: not found")
	// ErrConflict is a lost compare-and-swap, or an operation the current
	// state refuses (ExitConflict).
	ErrConflict = errors.New("tetherctl: conflict")
	// ErrUnavailable is NATS or the supervisor not answering (ExitUnavailable).
	ErrUnavailable = errors.New("tetherctl: unavailable")
)

// Error is a failure with its class (one of the sentinels, or nil for a
// generic failure), a message saying what was wrong and what to do, and the
// cause.
type Error struct {
	Kind error
	Msg  string
	Err  error
}

func (e *Error) Error() string { return "tetherctl: " + e.Msg }

// Unwrap returns the class and the cause, so errors.Is works for both.
func (e *Error) Unwrap() []error {
	var errs []error
	for _, err := range []error{e.Kind, e.Err} {
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// fail builds an *Error of the given class.
func fail(kind, cause error, format string, a ...any) error {
	return &Error{Kind: kind, Msg: fmt.Sprintf(format, a...), Err: cause}
}

// ExitCode maps an error to the exit code of its class.
func ExitCode(err error) int {
	switch {
	case err == nil:
		return ExitOK
	case errors.Is(err, ErrUsage):
		return ExitUsage
	case errors.Is(err, ErrInvalidConfig):
		return ExitInvalidConfig
	case errors.Is(err, ErrNotFound):
		return ExitNotFound
	case errors.Is(err, ErrConflict):
		return ExitConflict
	case errors.Is(err, ErrUnavailable):
		return ExitUnavailable
	}
	return ExitFailure
}

// kindOf returns the sentinel class of err (nil for a generic failure).
func kindOf(err error) error {
	for _, s := range []error{ErrUsage, ErrInvalidConfig, ErrNotFound, ErrConflict, ErrUnavailable} {
		if errors.Is(err, s) {
			return s
		}
	}
	return nil
}

// isConflict reports a lost compare-and-swap from Create or Update.
func isConflict(err error) bool {
	return errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists)
}

// natsFailure classifies an error from a NATS or JetStream call made while
// doing what (e.g. "read global.github").
func (a *app) natsFailure(what string, err error) error {
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		return fail(ErrUnavailable, err, "%s: no answer within %v; check that NATS and the supervisor are up, or raise --timeout", what, a.g.timeout)
	case errors.Is(err, nats.ErrNoResponders), errors.Is(err, jetstream.ErrNoStreamResponse):
		return fail(ErrUnavailable, err, "%s: nothing answers (%v); check that JetStream is enabled and --nats-url points at the right server", what, err)
	case errors.Is(err, jetstream.ErrJetStreamNotEnabled), errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount):
		return fail(ErrUnavailable, err, "%s: JetStream is not enabled on this NATS server or account; Tether needs it for its KV buckets", what)
	case errors.Is(err, nats.ErrConnectionClosed), errors.Is(err, nats.ErrDisconnected), errors.Is(err, nats.ErrConnectionDraining):
		return fail(ErrUnavailable, err, "%s: the NATS connection was lost (%v); retry", what, err)
	case errors.Is(err, context.Canceled):
		return fail(nil, err, "%s: interrupted", what)
	}
	return fail(nil, err, "%s: %v", what, err)
}
