package kvconfig

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Transports an MCP server config may name.
const (
	TransportStdio = "stdio"
	TransportHTTP  = "http"
	TransportSSE   = "sse"
)

// Limits on a config value. They keep one operator typo from becoming a
// multi-megabyte reply to every agent.
const (
	MaxConfigBytes  = 64 << 10         // whole JSON value
	MaxArgs         = 256              // entries in args
	MaxStringLen    = 8 << 10          // any single string
	MaxMapEntries   = 256              // entries in env or headers
	MaxTimeout      = 10 * time.Minute // timeout and retry delays
	MaxRetryAttempt = 100              // retry.max_attempts
)

// ServerConfig is one MCP server entry in the shape MCP clients use for
// "mcpServers", decoded strictly: an unknown field is an error.
type ServerConfig struct {
	// Transport is "stdio", "http" or "sse". When omitted it is inferred:
	// a command means stdio, a url means http.
	Transport string            `json:"transport,omitempty"`
	Command   string            `json:"command,omitempty"`
	Args      []string          `json:"args,omitempty"`
	Env       map[string]string `json:"env,omitempty"`
	URL       string            `json:"url,omitempty"`
	Headers   map[string]string `json:"headers,omitempty"`
	// Timeout bounds one call to the server, e.g. "30s". Zero: caller's default.
	Timeout Duration     `json:"timeout,omitempty"`
	Retry   *RetryConfig `json:"retry,omitempty"`
}

// RetryConfig is the per-server retry policy an agent applies to its calls.
type RetryConfig struct {
	// MaxAttempts counts the first call too; 0 means the agent's default.
	MaxAttempts int `json:"max_attempts,omitempty"`
	// BaseDelay is the first backoff delay, e.g. "500ms".
	BaseDelay Duration `json:"base_delay,omitempty"`
	// MaxDelay caps any single delay, e.g. "5s".
	MaxDelay Duration `json:"max_delay,omitempty"`
	// Jitter is the random fraction added to each delay, in [0,1].
	Jitter *float64 `json:"jitter,omitempty"`
}

var durationType = reflect.TypeFor[Duration]()

// Duration is a time.Duration written in JSON as a Go duration string ("30s").
type Duration time.Duration

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// MarshalJSON writes the duration as a string such as "1m30s".
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON accepts only a duration string such as "500ms" or "30s".
func (d *Duration) UnmarshalJSON(b []byte) error {
	// A *json.UnmarshalTypeError lets the decoder add the field's path.
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return &json.UnmarshalTypeError{Value: Truncate(string(b), 40), Type: durationType}
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return &json.UnmarshalTypeError{Value: strconv.Quote(Truncate(s, 40)), Type: durationType}
	}
	*d = Duration(v)
	return nil
}

// ConfigError reports an invalid config value. It names the KV key and the
// revision (when known) and the offending field.
type ConfigError struct {
	Bucket   string
	Key      string
	Revision uint64
	Field    string // JSON path of the bad field, "" for the whole value
	Err      error
}

func (e *ConfigError) Error() string {
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
	if e.Field != "" {
		fmt.Fprintf(&b, ": field %q", e.Field)
	}
	fmt.Fprintf(&b, ": %v", e.Err)
	return b.String()
}

func (e *ConfigError) Unwrap() error { return e.Err }

// ErrInvalidConfig is wrapped by every *ConfigError, so callers can test
// errors.Is(err, ErrInvalidConfig).
var ErrInvalidConfig = errors.New("kvconfig: invalid config")

// Is reports ErrInvalidConfig.
func (e *ConfigError) Is(target error) bool { return target == ErrInvalidConfig }

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

// DecodeConfig decodes and validates a config value strictly: unknown
// fields, trailing data, wrong types and semantic mistakes are errors that
// name the field. The returned error is a *ConfigError without key or
// revision; callers that know them fill them in (see Index).
func DecodeConfig(data []byte) (*ServerConfig, error) {
	if len(data) > MaxConfigBytes {
		return nil, &ConfigError{Err: fmt.Errorf("value is %d bytes, more than the %d allowed", len(data), MaxConfigBytes)}
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, &ConfigError{Err: errors.New("value is empty; write a JSON object such as {\"url\":\"https://...\"}")}
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var c ServerConfig
	if err := dec.Decode(&c); err != nil {
		return nil, decodeError(err)
	}
	if err := exactKeys(data, "", configFields); err != nil {
		return nil, err
	}
	var top map[string]json.RawMessage
	if json.Unmarshal(data, &top) == nil && c.Retry != nil {
		if err := exactKeys(top["retry"], "retry.", retryFields); err != nil {
			return nil, err
		}
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, &ConfigError{Err: errors.New("trailing data after the JSON object")}
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

func decodeError(err error) error {
	var ute *json.UnmarshalTypeError
	if errors.As(err, &ute) {
		if ute.Type == durationType {
			return &ConfigError{Field: ute.Field, Err: fmt.Errorf("%s is not a duration: want a duration string such as \"30s\" or \"500ms\"", ute.Value)}
		}
		return &ConfigError{Field: ute.Field, Err: fmt.Errorf("wrong type: JSON %s where %s is expected", ute.Value, ute.Type)}
	}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return &ConfigError{Err: fmt.Errorf("malformed JSON at byte %d: %w", se.Offset, err)}
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return &ConfigError{Err: errors.New("malformed JSON: the value ends before the object is closed")}
	}
	msg := err.Error()
	if f, ok := strings.CutPrefix(msg, "json: unknown field "); ok {
		return &ConfigError{Field: strings.Trim(f, `"`), Err: errors.New("unknown field (check the spelling; fields are transport, command, args, env, url, headers, timeout, retry)")}
	}
	return &ConfigError{Err: err}
}

// The exact field names of a config value. encoding/json matches names
// case-insensitively; a value must not, or {"ENV":{...}} would be stored
// and then escape masking that looks for "env".
var (
	configFields = []string{"transport", "command", "args", "env", "url", "headers", "timeout", "retry"}
	retryFields  = []string{"max_attempts", "base_delay", "max_delay", "jitter"}
)

// exactKeys fails on an object key that is not spelled exactly as one of
// fields.
func exactKeys(obj []byte, prefix string, fields []string) error {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(obj, &m); err != nil {
		return nil // not an object: the typed decode reports it
	}
	for k := range m {
		if !slices.Contains(fields, k) {
			return &ConfigError{Field: prefix + Truncate(k, 64), Err: fmt.Errorf("unknown field (names are case-sensitive; fields are %s)", strings.Join(fields, ", "))}
		}
	}
	return nil
}

var (
	envName    = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	headerName = regexp.MustCompile("^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
)

// Validate checks the semantic rules: a known transport, stdio has a
// command and no url, http/sse have an absolute http(s) url and no command,
// positive bounded durations, jitter in [0,1], and size limits. It infers an
// omitted transport.
func (c *ServerConfig) Validate() error {
	fail := func(field, format string, a ...any) error {
		return &ConfigError{Field: field, Err: fmt.Errorf(format, a...)}
	}
	if c.Transport == "" {
		switch {
		case c.Command != "" && c.URL == "":
			c.Transport = TransportStdio
		case c.URL != "" && c.Command == "":
			c.Transport = TransportHTTP
		default:
			return fail("transport", "missing: set \"transport\" to stdio (with \"command\") or http/sse (with \"url\")")
		}
	}
	switch c.Transport {
	case TransportStdio:
		if c.Command == "" {
			return fail("command", "required for transport stdio")
		}
		if c.URL != "" {
			return fail("url", "not used by transport stdio; remove it or use transport http")
		}
		if len(c.Headers) > 0 {
			return fail("headers", "not used by transport stdio")
		}
	case TransportHTTP, TransportSSE:
		if c.Command != "" || len(c.Args) > 0 {
			return fail("command", "not used by transport %s; remove command/args or use transport stdio", c.Transport)
		}
		if c.URL == "" {
			return fail("url", "required for transport %s", c.Transport)
		}
		u, err := url.Parse(c.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fail("url", "%s is not an absolute http:// or https:// URL", quoteURL(c.URL))
		}
	default:
		return fail("transport", "%q is not one of stdio, http, sse", Truncate(c.Transport, 40))
	}
	if len(c.Command) > MaxStringLen || len(c.URL) > MaxStringLen {
		return fail("command", "longer than %d bytes", MaxStringLen)
	}
	if len(c.Args) > MaxArgs {
		return fail("args", "%d entries, more than %d", len(c.Args), MaxArgs)
	}
	for i, a := range c.Args {
		if len(a) > MaxStringLen {
			return fail(fmt.Sprintf("args[%d]", i), "longer than %d bytes", MaxStringLen)
		}
	}
	if err := checkMap("env", c.Env, envName, "an environment variable name"); err != nil {
		return err
	}
	if err := checkMap("headers", c.Headers, headerName, "an HTTP header name"); err != nil {
		return err
	}
	if err := checkDuration("timeout", c.Timeout, true); err != nil {
		return err
	}
	if r := c.Retry; r != nil {
		if r.MaxAttempts < 0 || r.MaxAttempts > MaxRetryAttempt {
			return fail("retry.max_attempts", "%d is outside 0..%d", r.MaxAttempts, MaxRetryAttempt)
		}
		if err := checkDuration("retry.base_delay", r.BaseDelay, true); err != nil {
			return err
		}
		if err := checkDuration("retry.max_delay", r.MaxDelay, true); err != nil {
			return err
		}
		if r.BaseDelay != 0 && r.MaxDelay != 0 && r.MaxDelay < r.BaseDelay {
			return fail("retry.max_delay", "%v is shorter than base_delay %v", r.MaxDelay.D(), r.BaseDelay.D())
		}
		if r.Jitter != nil && !(*r.Jitter >= 0 && *r.Jitter <= 1) {
			return fail("retry.jitter", "%v is outside [0,1]", *r.Jitter)
		}
	}
	return nil
}

// quoteURL quotes a URL for an error message, masked by MaskURL.
func quoteURL(s string) string {
	if _, err := url.Parse(s); err != nil {
		return fmt.Sprintf("a %d-byte value that does not parse as a URL", len(s))
	}
	return strconv.Quote(Truncate(MaskURL(s), 200))
}

func checkMap(field string, m map[string]string, name *regexp.Regexp, what string) error {
	if len(m) > MaxMapEntries {
		return &ConfigError{Field: field, Err: fmt.Errorf("%d entries, more than %d", len(m), MaxMapEntries)}
	}
	for k, v := range m {
		if !name.MatchString(k) || len(k) > 256 {
			return &ConfigError{Field: field + "." + Truncate(k, 64), Err: fmt.Errorf("%q is not %s", Truncate(k, 64), what)}
		}
		if len(v) > MaxStringLen {
			return &ConfigError{Field: field + "." + k, Err: fmt.Errorf("value longer than %d bytes", MaxStringLen)}
		}
	}
	return nil
}

func checkDuration(field string, d Duration, zeroOK bool) error {
	switch {
	case d < 0:
		return &ConfigError{Field: field, Err: fmt.Errorf("%v is negative", d.D())}
	case d == 0 && !zeroOK:
		return &ConfigError{Field: field, Err: errors.New("must be positive")}
	case d.D() > MaxTimeout:
		return &ConfigError{Field: field, Err: fmt.Errorf("%v is longer than %v", d.D(), MaxTimeout)}
	}
	return nil
}

func maskMap(in map[string]string) map[string]string {
	if in == nil {
		return nil
	}
	out := make(map[string]string, len(in))
	for k := range in {
		out[k] = Masked
	}
	return out
}
