package agentproto

import (
	"context"
	"strconv"
	"time"

	"github.com/cenkalti/backoff/v5"
)

// Retry calls op until it succeeds, following p: a transient or unknown
// error (see Classify) is retried after a backoff wait; a permanent error,
// the attempt cap, the MaxElapsed cap or the end of ctx stops it. op gets
// ctx, or a child with AttemptTimeout. A server's Retry-After (*HTTPError,
// *ServiceError, backoff.RetryAfter) lengthens the wait, never past
// MaxDelay. Cancelling ctx ends a wait at once.
//
// Every retry is one Warn line on p.Logger (op, attempt, max_attempts,
// error, class, rule, delay_ms, elapsed_ms); a call that gives up is one
// Error line (op, attempts, elapsed_ms, class, reason), one that succeeds
// after retries one Info line. The error returned is a *RetryError that
// wraps the last attempt's error (and the context's cause if ctx ended it).
//
// op is always called at least once. A first-attempt success does not
// allocate (with AttemptTimeout zero). An invalid p makes Retry return
// p.Validate's error without calling op.
func Retry(ctx context.Context, p Policy, op func(context.Context) error) error {
	if err := p.Validate(); err != nil {
		return err
	}
	start := p.now()
	err := attempt(ctx, p.AttemptTimeout, op)
	if err == nil {
		p.Stats.addOK()
		return nil
	}
	return p.retry(ctx, start, err, op)
}

// RetryValue is Retry for an op that returns a value. On failure it returns
// the value of the last attempt with the *RetryError.
func RetryValue[T any](ctx context.Context, p Policy, op func(context.Context) (T, error)) (T, error) {
	if err := p.Validate(); err != nil {
		var zero T
		return zero, err
	}
	start := p.now()
	v, err := attemptValue(ctx, p.AttemptTimeout, op)
	if err == nil {
		p.Stats.addOK()
		return v, nil
	}
	err = p.retry(ctx, start, err, func(ctx context.Context) error {
		var err error
		v, err = op(ctx) // attempt applies AttemptTimeout to this ctx
		return err
	})
	return v, err
}

func attempt(ctx context.Context, timeout time.Duration, op func(context.Context) error) error {
	if timeout <= 0 {
		return op(ctx)
	}
	actx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return op(actx)
}

func attemptValue[T any](ctx context.Context, timeout time.Duration, op func(context.Context) (T, error)) (T, error) {
	if timeout <= 0 {
		return op(ctx)
	}
	actx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return op(actx)
}

// Log field names of the retry layer.
const (
	logKeyOp          = "op"
	logKeyAttempt     = "attempt"
	logKeyAttempts    = "attempts"
	logKeyMaxAttempts = "max_attempts"
	logKeyClass       = "class"
	logKeyRule        = "rule"
	logKeyDelayMS     = "delay_ms"
	logKeyRetryAfter  = "retry_after_ms"
	logKeyElapsedMS   = "elapsed_ms"
	logKeyReason      = "reason"
)

// retry is the slow path of Retry: first is the error of attempt 1.
func (p *Policy) retry(ctx context.Context, start time.Time, first error, op func(context.Context) error) error {
	s := newSchedule(p)
	maxAttempts := p.maxAttempts()
	err := first
	for n := 1; ; n++ {
		class, row := classify(err)
		p.Stats.addError(class)
		fail := func(reason StopReason, cause error) error {
			return p.giveUp(start, n, err, class, row, reason, cause)
		}
		if ctx.Err() != nil {
			return fail(StopContext, context.Cause(ctx))
		}
		if class == ClassPermanent {
			return fail(StopPermanent, nil)
		}
		d := s.NextBackOff()
		if d == backoff.Stop {
			return fail(StopAttempts, nil)
		}
		ra := retryAfterHint(err)
		if ra > 0 {
			d = retryAfterDelay(d, ra, s.max, p.Jitter, s.rand())
		}
		elapsed := p.now().Sub(start)
		if p.MaxElapsed > 0 && elapsed+d > p.MaxElapsed {
			return fail(StopElapsed, nil)
		}
		ev := p.Logger.Warn().Str(logKeyOp, p.op()).Int(logKeyAttempt, n).
			Int(logKeyMaxAttempts, maxAttempts).Err(err).Stringer(logKeyClass, class).
			Str(logKeyRule, classTable[row].Name).Int64(logKeyDelayMS, d.Milliseconds())
		if ra > 0 {
			ev = ev.Int64(logKeyRetryAfter, ra.Milliseconds())
		}
		ev.Int64(logKeyElapsedMS, elapsed.Milliseconds()).Msg("agentproto: retrying")
		p.Stats.addRetried()
		if cause := p.sleep(ctx, d); cause != nil {
			return fail(StopContext, cause)
		}
		if err = attempt(ctx, p.AttemptTimeout, op); err == nil {
			p.Stats.addOK()
			p.Logger.Info().Str(logKeyOp, p.op()).Int(logKeyAttempts, n+1).
				Int64(logKeyElapsedMS, p.now().Sub(start).Milliseconds()).
				Msg("agentproto: call succeeded after retries")
			return nil
		}
	}
}

func (p *Policy) giveUp(start time.Time, n int, err error, class Class, row int, reason StopReason, cause error) error {
	re := &RetryError{
		Op:       p.op(),
		Attempts: n,
		Elapsed:  p.now().Sub(start),
		Reason:   reason,
		Class:    class,
		Err:      err,
		Cause:    cause,
	}
	p.Stats.addFailed()
	p.Logger.Error().Str(logKeyOp, re.Op).Int(logKeyAttempts, n).
		Int64(logKeyElapsedMS, re.Elapsed.Milliseconds()).Err(err).
		Stringer(logKeyClass, class).Str(logKeyRule, classTable[row].Name).
		Str(logKeyReason, string(reason)).Msg("agentproto: call failed")
	return re
}

// StopReason says why Retry gave up.
type StopReason string

// The reasons of RetryError.Reason.
const (
	// StopPermanent: the last error was permanent.
	StopPermanent StopReason = "permanent error"
	// StopAttempts: MaxAttempts attempts failed.
	StopAttempts StopReason = "attempts exhausted"
	// StopElapsed: the next wait would have ended past MaxElapsed.
	StopElapsed StopReason = "max elapsed time reached"
	// StopContext: the caller's context ended.
	StopContext StopReason = "context done"
)

// RetryError is the error of a call Retry gave up on. errors.Is and
// errors.As see through it to the last attempt's error (and to the
// context's cause when Reason is StopContext).
type RetryError struct {
	// Op is Policy.Op (or DefaultOp).
	Op string
	// Attempts is how many times op was called.
	Attempts int
	// Elapsed is the time from the first attempt to giving up.
	Elapsed time.Duration
	// Reason says why Retry stopped.
	Reason StopReason
	// Class is the class of Err.
	Class Class
	// Err is the last attempt's error.
	Err error
	// Cause is context.Cause of the caller's ctx when Reason is
	// StopContext, nil otherwise.
	Cause error
}

func (e *RetryError) Error() string {
	s := "agentproto: " + e.Op + ": " + string(e.Reason) + " after " +
		strconv.Itoa(e.Attempts) + " attempt"
	if e.Attempts != 1 {
		s += "s"
	}
	s += " in " + e.Elapsed.Round(time.Millisecond).String()
	if e.Cause != nil && e.Cause != e.Err {
		s += " (" + e.Cause.Error() + ")"
	}
	return s + ": " + e.Err.Error()
}

// Unwrap returns the last attempt's error and, if set, the context's cause.
func (e *RetryError) Unwrap() []error {
	if e.Cause != nil {
		return []error{e.Err, e.Cause}
	}
	return []error{e.Err}
}
