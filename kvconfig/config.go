package kvconfig

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/url"
	"reflect"
	"regexp"
	"slices"
	"strconv"
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
// "mcpServers", decoded strictly (see DecodeConfig): an unknown, misspelt
// or repeated key is an error.
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
	// IdempotentTools names the server's tools that are safe to run twice:
	// an agent retries a call to one of them even after its request may
	// have reached the server (as it does for tools the server annotates
	// idempotentHint or readOnlyHint). At most MaxIdempotentTools names,
	// each a tool name (ValidToolName).
	IdempotentTools []string `json:"idempotent_tools,omitempty"`
}

// MaxIdempotentTools bounds ServerConfig.IdempotentTools; MaxToolNameLen
// bounds each name.
const (
	MaxIdempotentTools = 256
	MaxToolNameLen     = 128
)

// ValidToolName reports whether s is a tool name idempotent_tools accepts:
// 1–128 bytes of A–Z, a–z, 0–9, '_', '-', '.' and '/' (MCP's tool-name
// characters, plus '/' that some servers use).
func ValidToolName(s string) bool {
	if s == "" || len(s) > MaxToolNameLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.' || c == '/') {
			return false
		}
	}
	return true
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

var (
	envName    = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	headerName = regexp.MustCompile("^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
)

// Validate checks the semantic rules and reports every broken one (a
// *ConfigErrors): a known transport, stdio has a command and no url,
// http/sse have an absolute http(s) url and no command, positive bounded
// durations, jitter in [0,1], and size limits. It infers an omitted
// transport.
func (c *ServerConfig) Validate() error {
	var p problems
	c.validate(&p, false)
	return p.err()
}

// validate adds every broken rule to p; skipTransport leaves out the
// transport rules (their fields did not decode).
func (c *ServerConfig) validate(p *problems, skipTransport bool) {
	if !skipTransport {
		c.validateTransport(p)
	}
	if len(c.Command) > MaxStringLen {
		p.addf("command", "longer than %d bytes", MaxStringLen)
	}
	if len(c.URL) > MaxStringLen {
		p.addf("url", "longer than %d bytes", MaxStringLen)
	}
	if len(c.Args) > MaxArgs {
		p.addf("args", "%d entries, more than %d", len(c.Args), MaxArgs)
	}
	for i, a := range c.Args {
		if len(a) > MaxStringLen {
			p.addf(fmt.Sprintf("args[%d]", i), "longer than %d bytes", MaxStringLen)
		}
	}
	checkMap(p, "env", c.Env, envName, "an environment variable name (letters, digits and _, not starting with a digit)")
	checkMap(p, "headers", c.Headers, headerName, "an HTTP header name")
	checkDuration(p, "timeout", c.Timeout)
	if len(c.IdempotentTools) > MaxIdempotentTools {
		p.addf("idempotent_tools", "%d entries, more than %d", len(c.IdempotentTools), MaxIdempotentTools)
	}
	for i, name := range c.IdempotentTools {
		if !ValidToolName(name) {
			p.addf(fmt.Sprintf("idempotent_tools[%d]", i), "%q is not a tool name (1-%d of A-Z a-z 0-9 _ - . /)", Truncate(name, 64), MaxToolNameLen)
		}
	}
	if r := c.Retry; r != nil {
		if r.MaxAttempts < 0 || r.MaxAttempts > MaxRetryAttempt {
			p.addf("retry.max_attempts", "%d is outside 0..%d", r.MaxAttempts, MaxRetryAttempt)
		}
		checkDuration(p, "retry.base_delay", r.BaseDelay)
		checkDuration(p, "retry.max_delay", r.MaxDelay)
		if r.BaseDelay > 0 && r.MaxDelay > 0 && r.MaxDelay < r.BaseDelay {
			p.addf("retry.max_delay", "%v is shorter than base_delay %v", r.MaxDelay.D(), r.BaseDelay.D())
		}
		if r.Jitter != nil && !(*r.Jitter >= 0 && *r.Jitter <= 1) {
			p.addf("retry.jitter", "%v is outside [0,1]", *r.Jitter)
		}
	}
}

// validateTransport infers an omitted transport and checks the fields each
// transport needs and forbids.
func (c *ServerConfig) validateTransport(p *problems) {
	if c.Transport == "" {
		switch {
		case c.Command != "" && c.URL == "":
			c.Transport = TransportStdio
		case c.URL != "" && c.Command == "":
			c.Transport = TransportHTTP
		default:
			p.addf("transport", "missing: set \"transport\" to stdio (with \"command\") or http/sse (with \"url\")")
			return
		}
	}
	switch c.Transport {
	case TransportStdio:
		if c.Command == "" {
			p.addf("command", "required for transport stdio: add \"command\", the program the agent starts")
		}
		if c.URL != "" {
			p.addf("url", "not used by transport stdio; remove it or use transport http")
		}
		if len(c.Headers) > 0 {
			p.addf("headers", "not used by transport stdio; remove them or use transport http")
		}
	case TransportHTTP, TransportSSE:
		if c.Command != "" || len(c.Args) > 0 {
			p.addf("command", "not used by transport %s; remove command/args or use transport stdio", c.Transport)
		}
		if c.URL == "" {
			p.addf("url", "required for transport %s: add \"url\":\"https://...\"", c.Transport)
			return
		}
		u, err := url.Parse(c.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			p.addf("url", "%s is not an absolute http:// or https:// URL", quoteURL(c.URL))
		}
	default:
		p.addf("transport", "%q is not one of stdio, http, sse", Truncate(c.Transport, 40))
	}
}

// quoteURL quotes a URL for an error message, masked by MaskURL.
func quoteURL(s string) string {
	if _, err := url.Parse(s); err != nil {
		return fmt.Sprintf("a %d-byte value that does not parse as a URL", len(s))
	}
	return strconv.Quote(Truncate(MaskURL(s), 200))
}

// checkMap checks a map's size and, in key order, each name against name
// and each value's length.
func checkMap(p *problems, field string, m map[string]string, name *regexp.Regexp, what string) {
	if len(m) > MaxMapEntries {
		p.addf(field, "%d entries, more than %d", len(m), MaxMapEntries)
	}
	for _, k := range slices.Sorted(maps.Keys(m)) {
		if !name.MatchString(k) || len(k) > 256 {
			p.addf(field+"."+Truncate(k, 64), "%q is not %s", Truncate(k, 64), what)
		}
		if len(m[k]) > MaxStringLen {
			p.addf(field+"."+Truncate(k, 64), "value longer than %d bytes", MaxStringLen)
		}
	}
}

// checkDuration checks a duration is not negative and at most MaxTimeout.
func checkDuration(p *problems, field string, d Duration) {
	switch {
	case d < 0:
		p.addf(field, "%v is negative", d.D())
	case d.D() > MaxTimeout:
		p.addf(field, "%v is longer than %v", d.D(), MaxTimeout)
	}
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
