package kvconfig

import (
	"fmt"
	"unicode/utf8"
)

// MaxIDLen is the longest agent id, role or server name accepted.
const MaxIDLen = 64

// ID kinds named in validation errors.
const (
	KindAgent  = "agent id"
	KindRole   = "role"
	KindServer = "server name"
)

// IDError reports an identifier that is not 1–64 characters of
// [A-Za-z0-9_-]. It never becomes part of a subject or a key.
type IDError struct {
	Kind   string // KindAgent, KindRole or KindServer
	Value  string // the rejected value (quoted when printed)
	Reason string
}

func (e *IDError) Error() string {
	return fmt.Sprintf("kvconfig: invalid %s %q: %s; use 1-%d characters of A-Z a-z 0-9 _ -", e.Kind, e.Value, e.Reason, MaxIDLen)
}

// ValidateID checks that s is a valid identifier of the given kind.
func ValidateID(kind, s string) error {
	if s == "" {
		return &IDError{Kind: kind, Value: s, Reason: "empty"}
	}
	if len(s) > MaxIDLen {
		return &IDError{Kind: kind, Value: Truncate(s, 80), Reason: fmt.Sprintf("%d characters, longer than %d", len(s), MaxIDLen)}
	}
	for i := 0; i < len(s); i++ {
		if !idChar(s[i]) {
			return &IDError{Kind: kind, Value: s, Reason: fmt.Sprintf("character %q at position %d is not allowed", s[i], i)}
		}
	}
	return nil
}

// ValidID reports whether s is a valid identifier, without allocating.
func ValidID(s string) bool {
	if s == "" || len(s) > MaxIDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !idChar(s[i]) {
			return false
		}
	}
	return true
}

func idChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

// Truncate shortens s to at most n bytes (cut at a UTF-8 boundary) plus
// "...", for quoting input in logs and errors without letting its size
// through.
func Truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "..."
}
