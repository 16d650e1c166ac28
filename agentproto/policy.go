package agentproto

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/kvconfig"
)

// Defaults of Policy. DefaultPolicy uses all of them; a zero field of a
// Policy falls back to the one its doc names.
const (
	// DefaultMaxAttempts is the attempt cap: one call and 4 retries, as in
	// the article's schedule.
	DefaultMaxAttempts = 5
	// DefaultBaseDelay is the wait before the first retry; each later retry
	// doubles it (0.5 s, 1 s, 2 s, 4 s).
	DefaultBaseDelay = 500 * time.Millisecond
	// DefaultMaxDelay caps a single wait, jitter and Retry-After included.
	DefaultMaxDelay = 30 * time.Second
	// DefaultMaxElapsed is DefaultPolicy's cap on a call's total time.
	DefaultMaxElapsed = 30 * time.Second
	// DefaultJitter is the jitter fraction of the article's schedule: a
	// wait of d becomes d + U[0, 0.3·d].
	DefaultJitter = 0.3
	// DefaultJitterMode is DefaultPolicy's jitter mode: the article's
	// additive jitter. internal/fleetsim compares it with the other modes.
	DefaultJitterMode = JitterAdditive
	// DefaultOp names a call in logs and errors when Policy.Op is empty.
	DefaultOp = "call"
)

// JitterMode says how a Policy spreads its waits so that a fleet that failed
// together does not retry together (AWS, "Exponential Backoff and Jitter").
// With d = min(BaseDelay·2^n, MaxDelay) the wait before retry n+1 (n from
// 0) is:
//
//	JitterAdditive      d' + U[0, Jitter·d'], d' = min(d, MaxDelay/(1+Jitter))  (the article)
//	JitterNone          d
//	JitterFull          U[0, d]                                  (AWS "full jitter")
//	JitterDecorrelated  min(MaxDelay, U[BaseDelay, 3·previous])  (AWS "decorrelated jitter"; previous starts at BaseDelay)
//
// Only JitterAdditive reads Policy.Jitter; the others ignore it (it still
// spreads Retry-After waits).
type JitterMode uint8

// The jitter modes. The zero value is the article's additive jitter.
const (
	JitterAdditive JitterMode = iota
	JitterNone
	JitterFull
	JitterDecorrelated
)

var jitterModeNames = [...]string{"additive", "none", "full", "decorrelated"}

// String returns "additive", "none", "full" or "decorrelated".
func (m JitterMode) String() string {
	if int(m) < len(jitterModeNames) {
		return jitterModeNames[m]
	}
	return "jittermode(" + strconv.Itoa(int(m)) + ")"
}

// MarshalText implements encoding.TextMarshaler (flags, JSON, YAML).
func (m JitterMode) MarshalText() ([]byte, error) {
	if int(m) >= len(jitterModeNames) {
		return nil, fmt.Errorf("agentproto: unknown jitter mode %d", m)
	}
	return []byte(m.String()), nil
}

// UnmarshalText parses the spelling of String.
func (m *JitterMode) UnmarshalText(b []byte) error {
	for i, n := range jitterModeNames {
		if string(b) == n {
			*m = JitterMode(i)
			return nil
		}
	}
	return fmt.Errorf("agentproto: unknown jitter mode %q (want additive, none, full or decorrelated)", b)
}

// Policy says how Retry retries one kind of call. Start from DefaultPolicy,
// ArticlePolicy or NewPolicy. The zero Policy is valid: 5 attempts, waits of
// 0.5 s doubling up to 30 s, no jitter, no cap on total time, no logging.
// A Policy is a value; Retry never changes it, so one can be shared.
type Policy struct {
	// Op names the call in log lines and errors, e.g. the tool name.
	// Empty means DefaultOp.
	Op string
	// MaxAttempts caps the attempts, the first included: 5 is one call and
	// up to 4 retries. Zero means DefaultMaxAttempts; negative means no cap
	// (MaxElapsed and the context still end the call).
	MaxAttempts int
	// BaseDelay is the wait before the first retry, doubled for each later
	// one. Zero means DefaultBaseDelay.
	BaseDelay time.Duration
	// MaxDelay caps every single wait, jitter and Retry-After included.
	// Zero means DefaultMaxDelay. Must not be below BaseDelay.
	MaxDelay time.Duration
	// MaxElapsed caps a call's total time, measured from the first
	// attempt: Retry gives up rather than start a wait that would end past
	// it. Zero means no cap (unlike backoff v5, whose default is 15 min).
	MaxElapsed time.Duration
	// AttemptTimeout, if positive, gives every attempt its own deadline;
	// its expiry is a transient error. Zero means attempts run under the
	// caller's ctx alone. A positive value costs a context per attempt.
	AttemptTimeout time.Duration
	// Jitter is the fraction of a wait added at random by JitterAdditive,
	// in [0, 1]: 0.3 turns d into d + U[0, 0.3·d]. It also spreads a
	// server's Retry-After the same way in every mode. Zero means none.
	Jitter float64
	// JitterMode picks the jitter formula. The zero value is JitterAdditive.
	JitterMode JitterMode
	// Logger receives one line per retry and one per call that fails or
	// succeeds after retries. The zero Logger logs nothing.
	Logger zerolog.Logger
	// Stats, if not nil, counts calls for heartbeats.
	Stats *CallStats
	// Rand returns numbers in [0, 1) for jitter. Nil means math/rand/v2's
	// Float64. Tests pass a fixed sequence.
	Rand func() float64
	// Now reads the clock for MaxElapsed. Nil means time.Now.
	Now func() time.Time
	// Sleep waits d or until ctx is done, returning context.Cause(ctx) in
	// that case. Nil means a timer raced against ctx.Done().
	Sleep func(ctx context.Context, d time.Duration) error
}

// DefaultPolicy returns the policy tool calls use when their server's
// config has no retry block: the article's schedule (5 attempts, 0.5 s
// doubling, +30 % additive jitter), each wait at most DefaultMaxDelay, the
// whole call at most DefaultMaxElapsed.
func DefaultPolicy() Policy {
	return Policy{
		MaxAttempts: DefaultMaxAttempts,
		BaseDelay:   DefaultBaseDelay,
		MaxDelay:    DefaultMaxDelay,
		MaxElapsed:  DefaultMaxElapsed,
		Jitter:      DefaultJitter,
		JitterMode:  DefaultJitterMode,
	}
}

// ArticlePolicy returns the schedule of the article's Pattern 1, kept
// reproducible whatever DefaultPolicy becomes: 5 attempts, waits of
// 0.5/1/2/4 s each plus U[0, 30 %], about 7.5–9.75 s in all, no other cap.
func ArticlePolicy() Policy {
	return Policy{
		MaxAttempts: 5,
		BaseDelay:   500 * time.Millisecond,
		MaxDelay:    DefaultMaxDelay,
		Jitter:      0.3,
		JitterMode:  JitterAdditive,
	}
}

// NewPolicy maps a server config's retry block {"max_attempts",
// "base_delay", "max_delay", "jitter"} to a Policy: DefaultPolicy with
// those four fields set (zero keeps a field's default, except jitter, where
// zero means none: map an absent "jitter" to DefaultJitter). It returns an
// error wrapping ErrInvalidConfig that names the bad field.
func NewPolicy(maxAttempts int, baseDelay, maxDelay time.Duration, jitter float64) (Policy, error) {
	p := DefaultPolicy()
	if maxAttempts != 0 {
		p.MaxAttempts = maxAttempts
	}
	if baseDelay != 0 {
		p.BaseDelay = baseDelay
	}
	if maxDelay != 0 {
		p.MaxDelay = maxDelay
	}
	p.Jitter = jitter
	if err := p.Validate(); err != nil {
		return Policy{}, err
	}
	return p, nil
}

// Validate reports a policy Retry cannot follow, naming the field, with an
// error wrapping ErrInvalidConfig.
func (p Policy) Validate() error {
	switch {
	case p.BaseDelay < 0:
		return policyError("base_delay", p.BaseDelay.String(), "must not be negative")
	case p.MaxDelay < 0:
		return policyError("max_delay", p.MaxDelay.String(), "must not be negative")
	case p.maxDelay() < p.baseDelay():
		return policyError("max_delay", p.maxDelay().String(), "must not be below base_delay "+p.baseDelay().String())
	case p.MaxElapsed < 0:
		return policyError("max_elapsed", p.MaxElapsed.String(), "must not be negative")
	case p.AttemptTimeout < 0:
		return policyError("attempt_timeout", p.AttemptTimeout.String(), "must not be negative")
	case !(p.Jitter >= 0 && p.Jitter <= 1): // also rejects NaN
		return policyError("jitter", strconv.FormatFloat(p.Jitter, 'g', -1, 64), "must be in [0, 1]")
	case int(p.JitterMode) >= len(jitterModeNames):
		return policyError("jitter_mode", p.JitterMode.String(), "is not a jitter mode")
	}
	return nil
}

func policyError(field, value, why string) error {
	return fmt.Errorf("%w: retry policy: %s %s %s", ErrInvalidConfig, field, value, why)
}

func (p *Policy) baseDelay() time.Duration { return orDefault(p.BaseDelay, DefaultBaseDelay) }
func (p *Policy) maxDelay() time.Duration  { return orDefault(p.MaxDelay, DefaultMaxDelay) }

// maxAttempts returns the attempt cap, or -1 for none.
func (p *Policy) maxAttempts() int {
	switch {
	case p.MaxAttempts == 0:
		return DefaultMaxAttempts
	case p.MaxAttempts < 0:
		return -1
	}
	return p.MaxAttempts
}

func (p *Policy) op() string {
	if p.Op == "" {
		return DefaultOp
	}
	return p.Op
}

func (p *Policy) now() time.Time {
	if p.Now != nil {
		return p.Now()
	}
	return time.Now()
}

func (p *Policy) rand() float64 {
	if p.Rand != nil {
		return p.Rand()
	}
	return rand.Float64()
}

func (p *Policy) sleep(ctx context.Context, d time.Duration) error {
	if p.Sleep != nil {
		return p.Sleep(ctx, d)
	}
	return sleepCtx(ctx, d)
}

func orDefault(v, def time.Duration) time.Duration {
	if v == 0 {
		return def
	}
	return v
}

// sleepCtx waits d or until ctx is done, whichever comes first.
func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return context.Cause(ctx)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// BackOff returns p's schedule as a backoff.BackOff, for code that drives
// cenkalti/backoff itself (backoff.Retry, backoff.NewTicker). NextBackOff
// returns backoff.Stop once MaxAttempts-1 waits were handed out. It is not
// safe for concurrent use.
func (p Policy) BackOff() backoff.BackOff {
	b := newSchedule(&p)
	return &b
}

// schedule is a Policy's sequence of waits; it implements backoff.BackOff
// with the pure functions below.
type schedule struct {
	base, max  time.Duration
	jitter     float64
	mode       JitterMode
	maxRetries int // -1: no cap
	rand       func() float64

	n    int           // waits handed out since Reset
	prev time.Duration // the last wait, for decorrelated jitter
}

func newSchedule(p *Policy) schedule {
	s := schedule{
		base:       p.baseDelay(),
		max:        p.maxDelay(),
		jitter:     p.Jitter,
		mode:       p.JitterMode,
		maxRetries: -1,
		rand:       p.Rand,
	}
	if s.rand == nil {
		s.rand = rand.Float64
	}
	if a := p.maxAttempts(); a >= 0 {
		s.maxRetries = max(a-1, 0)
	}
	s.Reset()
	return s
}

// Reset starts the schedule again from BaseDelay.
func (s *schedule) Reset() { s.n, s.prev = 0, s.base }

// NextBackOff returns the next wait, or backoff.Stop when the attempts are
// used up.
func (s *schedule) NextBackOff() time.Duration {
	if s.maxRetries >= 0 && s.n >= s.maxRetries {
		return backoff.Stop
	}
	var d time.Duration
	switch s.mode {
	case JitterNone:
		d = expDelay(s.base, s.max, s.n)
	case JitterFull:
		d = fullJitter(expDelay(s.base, s.max, s.n), s.rand())
	case JitterDecorrelated:
		d = decorrelatedJitter(s.prev, s.base, s.max, s.rand())
	default:
		d = additiveJitter(expDelay(s.base, s.max, s.n), s.max, s.jitter, s.rand())
	}
	s.n++
	s.prev = d
	return d
}

// expDelay returns min(base·2^n, max) without overflowing.
func expDelay(base, maxD time.Duration, n int) time.Duration {
	if base <= 0 {
		return 0
	}
	if n >= 62 || base > maxD>>n {
		return maxD
	}
	return min(base<<n, maxD)
}

// additiveJitter is the article's jitter: d + u·j·d for u in [0, 1). To keep
// the spread when d reaches the cap, d is first lowered to maxD/(1+j), so
// the result never exceeds maxD.
func additiveJitter(d, maxD time.Duration, j, u float64) time.Duration {
	if lim := time.Duration(float64(maxD) / (1 + j)); d > lim {
		d = lim
	}
	return min(d+scale(d, j*u), maxD)
}

// fullJitter is AWS "full jitter": U[0, d).
func fullJitter(d time.Duration, u float64) time.Duration { return scale(d, u) }

// decorrelatedJitter is AWS "decorrelated jitter":
// min(maxD, U[base, 3·prev)).
func decorrelatedJitter(prev, base, maxD time.Duration, u float64) time.Duration {
	hi := maxD
	if prev < maxD/3 {
		hi = 3 * prev
	}
	if hi < base {
		hi = base
	}
	return min(base+scale(hi-base, u), maxD)
}

// retryAfterDelay returns the wait when a server asked for ra: the later of
// the scheduled wait d and ra spread by the jitter fraction (ra + u·j·ra),
// never above maxD.
func retryAfterDelay(d, ra, maxD time.Duration, j, u float64) time.Duration {
	if ra <= 0 {
		return d
	}
	if ra >= maxD {
		return maxD
	}
	return min(max(d, ra+scale(ra, j*u)), maxD)
}

// scale returns d·f rounded to the nanosecond, for f in [0, 1].
func scale(d time.Duration, f float64) time.Duration {
	return time.Duration(math.Round(float64(d) * f))
}

// PolicyFor maps a server config's retry block and timeout to a Policy,
// starting from base: a field the config leaves out keeps base's value,
// the config's timeout is the per-attempt timeout.
func PolicyFor(cfg *kvconfig.ServerConfig, base Policy) (Policy, error) {
	p := base
	if r := cfg.Retry; r != nil {
		if r.MaxAttempts != 0 {
			p.MaxAttempts = r.MaxAttempts
		}
		if r.BaseDelay != 0 {
			p.BaseDelay = r.BaseDelay.D()
		}
		if r.MaxDelay != 0 {
			p.MaxDelay = r.MaxDelay.D()
		}
		if r.Jitter != nil {
			p.Jitter = *r.Jitter
		}
	}
	if cfg.Timeout != 0 {
		p.AttemptTimeout = cfg.Timeout.D()
	}
	if err := p.Validate(); err != nil {
		return Policy{}, err
	}
	return p, nil
}
