package kvconfig

import (
	"errors"
	"fmt"
	"strings"
)

// MaxProblems is how many problems of one value a *ConfigErrors lists; any
// beyond are only counted (ConfigErrors.More), so one pathological value
// cannot make an error message, a log line or a 422 reply unbounded.
const MaxProblems = 20

// ErrInvalidConfig is wrapped by every *ConfigError, so callers can test
// errors.Is(err, ErrInvalidConfig).
var ErrInvalidConfig = errors.New("kvconfig: invalid config")

// ConfigError reports one problem of an invalid config value. It names the
// KV key and the revision (when known) and the offending field.
type ConfigError struct {
	Bucket   string
	Key      string
	Revision uint64
	Field    string // JSON path of the bad field, "" for the whole value
	Err      error
}

func (e *ConfigError) Error() string {
	return e.subject() + ": " + e.Detail()
}

// subject is "kvconfig: invalid <bucket> "<key>" revision N", or
// "kvconfig: invalid config" when the key is not known.
func (e *ConfigError) subject() string {
	var b strings.Builder
	b.WriteString("kvconfig: invalid ")
	if e.Key != "" {
		fmt.Fprintf(&b, "%s %q", orDefault(e.Bucket, BucketConfigs), e.Key)
		if e.Revision != 0 {
			fmt.Fprintf(&b, " revision %d", e.Revision)
		}
	} else {
		b.WriteString("config")
	}
	return b.String()
}

// Detail is the problem without the key: `field "url": required for
// transport http`, or just the cause when the whole value is wrong.
func (e *ConfigError) Detail() string {
	if e.Field == "" {
		return fmt.Sprint(e.Err)
	}
	return fmt.Sprintf("field %q: %v", e.Field, e.Err)
}

func (e *ConfigError) Unwrap() error { return e.Err }

// Is reports ErrInvalidConfig.
func (e *ConfigError) Is(target error) bool { return target == ErrInvalidConfig }

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

// ConfigErrors is every problem found in one value, in the order found:
// the document's keys and types in document order, then the semantic rules
// of Validate. DecodeConfig, Validate and DecodeAgentRecord return it.
// errors.As(err, &ce) with a *ConfigError finds the first problem and
// errors.Is(err, ErrInvalidConfig) holds, so callers that want only one
// problem need not know this type. Problems is never empty.
type ConfigErrors struct {
	Problems []*ConfigError // at most MaxProblems, all of the same value
	More     int            // problems found beyond MaxProblems, not listed
}

// Error is the one problem's message when there is one; otherwise the
// key once, then "N problems: " and each problem, separated by "; ".
func (e *ConfigErrors) Error() string {
	if len(e.Problems) == 1 && e.More == 0 {
		return e.Problems[0].Error()
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %d problems: ", e.Problems[0].subject(), e.Len())
	for i, p := range e.Problems {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(p.Detail())
	}
	if e.More > 0 {
		fmt.Fprintf(&b, "; and %d more", e.More)
	}
	return b.String()
}

// Len is the number of problems found, listed or not.
func (e *ConfigErrors) Len() int { return len(e.Problems) + e.More }

// Unwrap returns the listed problems (errors.Is and errors.As see each).
func (e *ConfigErrors) Unwrap() []error {
	out := make([]error, len(e.Problems))
	for i, p := range e.Problems {
		out[i] = p
	}
	return out
}

// Is reports ErrInvalidConfig.
func (e *ConfigErrors) Is(target error) bool { return target == ErrInvalidConfig }

// locate records where the value is stored on every problem.
func (e *ConfigErrors) locate(bucket, key string, rev uint64) {
	for _, p := range e.Problems {
		p.Bucket, p.Key, p.Revision = bucket, key, rev
	}
}

// Problems returns every listed problem in err: those of a *ConfigErrors,
// or the one *ConfigError; nil when err holds neither.
func Problems(err error) []*ConfigError {
	var ces *ConfigErrors
	if errors.As(err, &ces) {
		return ces.Problems
	}
	var ce *ConfigError
	if errors.As(err, &ce) {
		return []*ConfigError{ce}
	}
	return nil
}

// problems collects the problems of one value, up to MaxProblems.
type problems struct {
	bucket string
	list   []*ConfigError
	more   int
}

func (p *problems) add(field string, err error) {
	if len(p.list) == MaxProblems {
		p.more++
		return
	}
	p.list = append(p.list, &ConfigError{Bucket: p.bucket, Field: field, Err: err})
}

func (p *problems) addf(field, format string, a ...any) {
	p.add(field, fmt.Errorf(format, a...))
}

func (p *problems) empty() bool { return len(p.list) == 0 }

// err is the collected problems as a *ConfigErrors, or nil when there are
// none.
func (p *problems) err() error {
	if p.empty() {
		return nil
	}
	return &ConfigErrors{Problems: p.list, More: p.more}
}
